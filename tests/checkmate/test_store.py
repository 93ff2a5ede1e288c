"""The task store: one checkpoint per stage boundary, one pass to load a task, one set of parse errors.

Counted on real storage: a TaskIOFile subclass records the checkpoints (``commit``) and any write,
removal or read made outside them, and the stored state is read back by a separate store.
"""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from airflow_checkmate.checkmate import (
    BaseStage,
    CheckMate,
    CheckMateEngine,
    PersistenceDataNotFoundException,
    StageStatus,
    TaskIOFile,
    TaskRegistry,
    read_snapshot,
)
from airflow_checkmate.checkmate.io.base import Fence
from support.stages import CounterState, JournalStage, expected_result, make_stages, start_counts

S = StageStatus


class CountingIO(TaskIOFile):
    """File storage that records every checkpoint and every write, removal or read outside one."""

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.commits: list[list[tuple[str, str | None]]] = []
        self.loose: list[tuple[str, str]] = []  # (call, object) made outside a commit or read_prefix
        self.prefix_reads = 0
        self._inside = False

    def commit(self, writes: Sequence[tuple[str, bytes | None]], *, fence: Fence | None = None) -> None:
        summary = [(name, None if data is None else json.loads(data).get("status")) for name, data in writes]
        self.commits.append(summary)
        self._inside = True
        try:
            super().commit(writes, fence=fence)
        finally:
            self._inside = False

    def read_prefix(self, prefix: str) -> dict[str, bytes]:
        self.prefix_reads += 1
        self._inside = True
        try:
            return super().read_prefix(prefix)
        finally:
            self._inside = False

    def _note(self, call: str, obj: str) -> None:
        if not self._inside:
            self.loose.append((call, obj))

    def write(self, obj_name: str, data: str | bytes, *, fence: Fence | None = None) -> None:
        self._note("write", obj_name)
        super().write(obj_name, data, fence=fence)

    def remove(self, obj_name: str, *, fence: Fence | None = None) -> bool:
        self._note("remove", obj_name)
        return super().remove(obj_name, fence=fence)

    def read_bytes(self, obj_name: str) -> bytes:
        self._note("read", obj_name)
        return super().read_bytes(obj_name)

    def reset_counts(self) -> None:
        self.commits, self.loose, self.prefix_reads = [], [], 0


class WatchedStage(JournalStage):
    """Checks, from its own code, that its RUNNING and the previous stage's COMPLETE are already stored."""

    def execute_stage(self, previous_state_copy: CounterState) -> None:
        engine = self.engine
        snapshot = read_snapshot(TaskIOFile(engine.io.base_url), engine.task_id)
        assert snapshot is not None
        statuses = {view.stage_name: view.status for view in snapshot.stages}
        index = engine.task_state.stage_names.index(self.stage_name)
        assert statuses[self.stage_name] is S.RUNNING, statuses
        assert all(statuses[name] is S.COMPLETE for name in engine.task_state.stage_names[:index]), statuses
        super().execute_stage(previous_state_copy)


def watched(count: int, journal_path: str) -> list[BaseStage[Any]]:
    return [
        WatchedStage(stage_name=f"s{i}", state=CounterState(), journal_path=journal_path) for i in range(1, count + 1)
    ]


def test_a_stage_boundary_is_one_checkpoint_and_the_run_writes_nothing_else(base: Path, tmp_path: Path) -> None:
    io = CountingIO(base)
    journal = str(tmp_path / "journal")
    engine: CheckMateEngine[Any, Any] = CheckMateEngine(io, "five", watched(5, journal))
    engine.bind()
    assert [[name for name, _ in c] for c in io.commits] == [["five/task.json"]]  # the new task's record
    io.reset_counts()
    engine.execute()
    stage = "five/s{}.stage.json".format
    assert io.commits == [
        [(stage(1), "RUNNING")],
        *[[(stage(i), "COMPLETE"), (stage(i + 1), "RUNNING")] for i in range(1, 5)],
        [(stage(5), "COMPLETE")],
    ]
    assert [call for call in io.loose if call[0] != "read"] == []
    engine.unbind()
    assert start_counts(journal) == {f"s{i}": 1 for i in range(1, 6)}
    snapshot = read_snapshot(TaskIOFile(base), "five")
    assert snapshot is not None and snapshot.status is S.COMPLETE and snapshot.result == expected_result(5)


def test_bind_loads_a_stored_task_in_one_pass(base: Path) -> None:
    io = CountingIO(base)
    with CheckMateEngine(io, "loaded", make_stages(4), no_lock=True) as engine:
        engine.execute()
    io.reset_counts()
    with CheckMateEngine(io, "loaded", make_stages(4), no_lock=True) as engine:
        assert engine.status is S.COMPLETE and engine.task_result == expected_result(4)
    assert io.prefix_reads == 1 and io.loose == [] and io.commits == []


def test_a_cancel_and_a_reset_are_one_checkpoint_each(base: Path) -> None:
    io = CountingIO(base)
    with CheckMateEngine(io, "stopped", make_stages(4)) as engine:
        io.reset_counts()
        engine.cancel("not today")
        assert len(io.commits) == 1
        assert [status for _, status in io.commits[0]] == ["CANCELED"] * 4 + [None, None]  # + request, record
        io.reset_counts()
        engine.reset()
        assert len(io.commits) == 1 and engine.status is S.RETRY


@pytest.mark.parametrize("future_fields", [{}, {"journal_segments": [1, 2]}], ids=["same-shape", "new-fields"])
def test_an_unknown_format_version_is_refused_naming_the_object_and_the_version(
    base: Path, future_fields: dict[str, Any]
) -> None:
    io = TaskIOFile(base)
    with CheckMateEngine(io, "future", make_stages(2)) as engine:
        engine.execute()
    record = json.loads(io.read_bytes("future/task.json"))
    record.update(schema_version=99, **future_fields)
    io.write("future/task.json", json.dumps(record))
    before = io.read_prefix("future/")
    for attempt in (
        lambda: CheckMateEngine(io, "future", make_stages(2)).bind(),
        lambda: read_snapshot(io, "future"),
    ):
        with pytest.raises(PersistenceDataNotFoundException, match=r"future/task\.json.*version 99.*reads version 1"):
            attempt()
    assert io.read_prefix("future/") == before


def test_a_stage_object_that_does_not_parse_is_named_the_same_way_by_the_engine_and_the_snapshot(
    base: Path,
) -> None:
    io = TaskIOFile(base)
    with CheckMateEngine(io, "torn", make_stages(2)) as engine:
        engine.execute()
    io.write("torn/s1.stage.json", '{"stage_name": "s1", "status": "COMPLETE", "attempts": "many"}')
    messages = []
    for attempt in (
        lambda: CheckMateEngine(io, "torn", make_stages(2)).bind(),
        lambda: read_snapshot(io, "torn"),
    ):
        with pytest.raises(PersistenceDataNotFoundException) as caught:
            attempt()
        messages.append(str(caught.value))
    for message in messages:
        assert "torn/s1.stage.json does not parse as" in message and "attempts" in message
        assert "left in place" in message
    assert json.loads(io.read_bytes("torn/s1.stage.json"))["attempts"] == "many"


class CountingRegistry(TaskRegistry):
    """A real SQLite registry that records the updates it is asked for."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.updates: list[dict[str, Any]] = []

    def update(self, task_id: str, **fields: Any) -> bool:
        self.updates.append(fields)
        return super().update(task_id, **fields)


def test_the_managed_task_writes_its_row_only_when_the_status_changes(base: Path, tmp_path: Path) -> None:
    registry = CountingRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
    io = CountingIO(base)
    task: CheckMate[Any, Any] = CheckMate(None, make_stages(5), task_id="managed", io=io, registry=registry)
    with task:
        io.reset_counts()
        task.execute()
        assert len(io.commits) == 6
        assert [u["status"] for u in registry.updates] == ["RUNNING", "COMPLETE"]
    row = registry.get("managed")
    assert row is not None and (row.status, row.stages_done, row.current_stage) == ("COMPLETE", 5, None)
