"""The sandbox the hostile-input cases run in, shared by ``tests/checkmate/test_bad_input.py`` and the campaign.

A :class:`Store` is real file storage three folders deep (so an id that escapes the base lands inside
the snapshotted folder), with a file outside the base and a journal the stage code writes. A stored
task ``t`` (s1 COMPLETE, s2 RETRY after one planned failure, s3 never started) is what hostile input is
thrown at; :func:`resume_and_finish` proves afterwards that nothing of it was lost. :class:`ProbeIO`
records every storage call, so "refused before any storage call" can be checked, and can fake a full
disk on one chosen write.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from airflow_checkmate.checkmate import (
    BaseStage,
    BaseStageState,
    CheckMateEngine,
    RetryPolicy,
    StageStatus,
    TaskEngineException,
    TaskIO,
    TaskIOFile,
)
from airflow_checkmate.checkmate.io.journal import JOURNAL_NAME
from airflow_checkmate.checkmate.io.journal_format import decode_record, replay_file
from support.stages import JournalStage, expected_result, make_stages, start_counts
from support.stored_objects import files_under, get_object

S = StageStatus
#: Long enough that no heartbeat rewrites a held lock during a case, so snapshots taken while bound are stable.
LEASE_SECONDS = 300.0
TASK = "t"
JOURNAL_CLASS = f"{JournalStage.__module__}.{JournalStage.__qualname__}"


class ProbeIO(TaskIOFile):
    """Real file storage that records every storage call and can fake a full disk on one write.

    ``fail_on(doc)`` picks the write to fail from the JSON documents of the journal record being appended;
    that write puts half its bytes into the journal and raises ENOSPC, as ``write(2)`` does on a full disk.
    """

    def __init__(self, base: Path, **kwargs: Any) -> None:
        super().__init__(base, lease_seconds=LEASE_SECONDS, **kwargs)
        self.calls: list[tuple[str, str]] = []
        self.fail_on: Callable[[dict[str, Any]], bool] | None = None
        self.faults = 0

    def _write_all(self, fd: int, pieces: Sequence[bytes]) -> None:
        payload = b"".join(pieces)
        if self.fail_on is not None:
            if payload[:1] == b"{":  # a lease
                docs = [json.loads(payload)]
            else:
                docs = [json.loads(raw) for _, raw in decode_record(payload) if raw is not None]
            if any(isinstance(doc, dict) and self.fail_on(doc) for doc in docs):
                self.fail_on = None
                self.faults += 1
                os.write(fd, payload[: len(payload) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super()._write_all(fd, pieces)

    def read(self, obj_name: str) -> str:
        self.calls.append(("read", obj_name))
        return super().read(obj_name)

    def write(self, obj_name: str, data: str | bytes, **kwargs: Any) -> None:
        self.calls.append(("write", obj_name))
        super().write(obj_name, data, **kwargs)

    def exists(self, obj_name: str) -> bool:
        self.calls.append(("exists", obj_name))
        return super().exists(obj_name)

    def remove(self, obj_name: str, **kwargs: Any) -> bool:
        self.calls.append(("remove", obj_name))
        return super().remove(obj_name, **kwargs)

    def list(self, prefix: str) -> list[str]:
        self.calls.append(("list", prefix))
        return super().list(prefix)

    def lease_read(self, lock_name: str) -> str | None:
        self.calls.append(("lease_read", lock_name))
        return super().lease_read(lock_name)

    def lease_create(self, lock_name: str, data: str) -> bool:
        self.calls.append(("lease_create", lock_name))
        return super().lease_create(lock_name, data)

    def lease_swap(self, lock_name: str, expected: str, new: str | None) -> bool:
        self.calls.append(("lease_swap", lock_name))
        return super().lease_swap(lock_name, expected, new)

    def prune(self, prefix: str) -> None:
        self.calls.append(("prune", prefix))
        super().prune(prefix)


class Store(NamedTuple):
    root: Path  # the folder snapshotted: the base and three levels of "outside" around it
    base: Path  # root/l1/l2/store
    io: ProbeIO  # durable storage in ``base``
    journal: Path  # outside root: stage code runs change it, nothing else


def new_store(tmp_path: Path) -> Store:
    """A store three levels deep in ``tmp_path/outer`` with a file outside it, and a journal beside."""
    root = tmp_path / "outer"
    base = root / "l1" / "l2" / "store"
    base.mkdir(parents=True)
    (root / "secret.txt").write_text("outside the base\n")
    return Store(root, base, ProbeIO(base), tmp_path / "journal.txt")


def snapshot(root: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every folder and file under ``root``: relative path -> (bytes, or None for a folder; mode). A task
    folder's journal is listed as the objects it holds (each with the journal's mode)."""
    out: dict[str, tuple[bytes | None, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = Path(dirpath, name)
            out[path.relative_to(root).as_posix() + "/"] = (None, stat.S_IMODE(path.lstat().st_mode))
        for name in filenames:
            path = Path(dirpath, name)
            mode = stat.S_IMODE(path.lstat().st_mode)
            if name == JOURNAL_NAME:
                for obj, raw in replay_file(path).items():
                    out[(path.parent / obj).relative_to(root).as_posix()] = (raw, mode)
            else:
                out[path.relative_to(root).as_posix()] = (path.read_bytes(), mode)
    return out


def engine_for(io: TaskIO, journal: Path, stages: list[Any] | None = None, **kwargs: Any) -> CheckMateEngine[Any, Any]:
    kwargs.setdefault("retry_policy", RetryPolicy.RETRY)
    kwargs.setdefault("max_attempts", 3)
    return CheckMateEngine(io, TASK, stages if stages is not None else make_stages(3, str(journal)), **kwargs)


def make_stored_task(st: Store) -> None:
    """Store task ``t``: s1 COMPLETE, s2 RETRY after one planned failure, s3 never started."""
    fast = TaskIOFile(st.base, lease_seconds=LEASE_SECONDS, durable=False)
    engine = engine_for(fast, st.journal, make_stages(3, str(st.journal), fail_first={"s2": 1}))
    with engine:
        try:
            engine.execute()
        except TaskEngineException as exc:
            if "auto-recovered" not in str(exc):
                raise
        else:
            raise AssertionError("s2's planned failure did not happen")
    assert files_under(st.base) == [f"{TASK}/s1.stage.json", f"{TASK}/s2.stage.json", f"{TASK}/task.json"]
    assert start_counts(st.journal) == {"s1": 1, "s2": 1}


def resume_and_finish(st: Store) -> None:
    """The stored task resumes where it stopped and ends with the right result: nothing was lost."""
    engine = engine_for(st.io, st.journal, make_stages(3, str(st.journal), fail_first={"s2": 1}))
    with engine:
        assert [s.state.status for s in engine.stages] == [S.COMPLETE, S.RETRY, S.CREATED]
        engine.execute()
        assert engine.status is S.COMPLETE
        assert engine.task_result == expected_result(3)
    assert start_counts(st.journal) == {"s1": 1, "s2": 2, "s3": 1}


def stored_doc(st: Store, obj: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(get_object(st.base, f"{TASK}/{obj}") or b"")
    return doc


def no_temp_files(base: Path) -> bool:
    return not [p for p in base.rglob("*") if p.name.endswith(".tmp")]


class OtherStage(JournalStage):
    """Same behaviour as JournalStage, another class: a different task definition."""


class OtherState(BaseStageState[list[int]]):
    """Another task's state class: it has a field CounterState does not know."""

    values: list[int] = []
    priority: int = 7


class NeedsState(BaseStageState[int]):
    source: int | None = None


class NeedsStage(BaseStage[NeedsState]):
    def execute_stage(self, previous_state_copy: NeedsState) -> None:
        previous_state_copy.require("source")
        self.state.result = previous_state_copy.source
