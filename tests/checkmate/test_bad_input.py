"""Bad input gets a clear, named exception and loses nothing already stored.

Every case here feeds the engine or its file storage something wrong (ids and names that try to leave
the storage folder or break its limits, corrupt or foreign stored objects, a changed task definition,
``force_create`` on a used id, a full disk, bad constructor arguments) and proves three things:

- the exception is a named one (TaskEngineException, PersistenceDataNotFoundException, TaskIOException,
  pydantic's ValidationError at construction, MissingStateException) and its message names the
  offending id or object and says what is wrong or what to do;
- every byte already stored is unchanged: the whole folder around the store (the store sits three
  levels deep, so escaping ids would land inside the snapshot) is compared path -> (bytes, mode) before
  and after, which also proves no file appeared outside the base and no temp file or lock was left;
- where the contract says a check happens "before any storage call", a storage backend that records
  its calls shows none was made.

The full disk is simulated only at the syscall: a TaskIOFile subclass overrides ``_write_all`` to
write part of the payload and raise ENOSPC; the atomic-write handling and the engine are the code
under test. Stage executions are counted from the journal the stage code writes, never by the engine.
"""

import errno
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from airflow_checkmate.checkmate import (
    STAGE_NAME_MAX_LENGTH,
    TASK_ID_MAX_LENGTH,
    BaseStage,
    BaseStageState,
    CheckMateEngine,
    MissingStateException,
    PersistenceDataNotFoundException,
    RetryPolicy,
    StageStatus,
    TaskEngineException,
    TaskIO,
    TaskIOException,
    TaskIOFile,
)
from tests.helpers.stages import CounterState, JournalStage, expected_result, make_stages, read_journal

S = StageStatus
#: Long enough that no heartbeat rewrites a held lock during a test, so snapshots taken while bound are stable.
LEASE_SECONDS = 300.0
TASK = "t"
JOURNAL_CLASS = f"{JournalStage.__module__}.{JournalStage.__qualname__}"


# --------------------------------------------------------------------------------------------- helpers


class ProbeIO(TaskIOFile):
    """Real file storage that records every storage call and can fake a full disk on one write.

    ``fail_on(doc)`` picks the write to fail from the JSON document being written; that write puts half
    its bytes into the temp file and raises ENOSPC, as ``write(2)`` does on a full disk.
    """

    def __init__(self, base: Path, **kwargs: Any) -> None:
        super().__init__(base, lease_seconds=LEASE_SECONDS, **kwargs)
        self.calls: list[tuple[str, str]] = []
        self.fail_on: Callable[[dict[str, Any]], bool] | None = None
        self.faults = 0

    def _write_all(self, fd: int, payload: bytes) -> None:
        if self.fail_on is not None:
            try:
                doc = json.loads(payload)
            except ValueError:
                doc = None
            if isinstance(doc, dict) and self.fail_on(doc):
                self.fail_on = None
                self.faults += 1
                os.write(fd, payload[: len(payload) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super()._write_all(fd, payload)

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


@pytest.fixture
def store(tmp_path: Path) -> Store:
    root = tmp_path / "outer"
    base = root / "l1" / "l2" / "store"
    base.mkdir(parents=True)
    (root / "secret.txt").write_text("outside the base\n")
    return Store(root, base, ProbeIO(base), tmp_path / "journal.txt")


def snapshot(root: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every folder and file under ``root``: relative path -> (bytes, or None for a folder; mode)."""
    out: dict[str, tuple[bytes | None, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = Path(dirpath, name)
            out[path.relative_to(root).as_posix() + "/"] = (None, stat.S_IMODE(path.lstat().st_mode))
        for name in filenames:
            path = Path(dirpath, name)
            out[path.relative_to(root).as_posix()] = (path.read_bytes(), stat.S_IMODE(path.lstat().st_mode))
    return out


def files_under(base: Path) -> list[str]:
    return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())


def starts(journal: Path) -> dict[str, int]:
    """How many times each stage's code started, from the journal the stage code wrote."""
    counts: dict[str, int] = {}
    for words in read_journal(journal):
        if words[0] == "start":
            counts[words[1]] = counts.get(words[1], 0) + 1
    return counts


def engine_for(io: TaskIO, journal: Path, stages: list[Any] | None = None, **kwargs: Any) -> CheckMateEngine[Any, Any]:
    kwargs.setdefault("retry_policy", RetryPolicy.RETRY)
    kwargs.setdefault("max_attempts", 3)
    return CheckMateEngine(io, TASK, stages if stages is not None else make_stages(3, str(journal)), **kwargs)


def make_stored_task(st: Store) -> None:
    """Store task ``t``: s1 COMPLETE, s2 RETRY after one planned failure, s3 never started."""
    fast = TaskIOFile(st.base, lease_seconds=LEASE_SECONDS, durable=False)
    engine = engine_for(fast, st.journal, make_stages(3, str(st.journal), fail_first={"s2": 1}))
    with engine, pytest.raises(TaskEngineException, match="auto-recovered"):
        engine.execute()
    assert files_under(st.base) == [f"{TASK}/s1.stage.json", f"{TASK}/s2.stage.json", f"{TASK}/task.json"]
    assert starts(st.journal) == {"s1": 1, "s2": 1}


def resume_and_finish(st: Store) -> None:
    """The stored task resumes where it stopped and ends with the right result: nothing was lost."""
    engine = engine_for(st.io, st.journal, make_stages(3, str(st.journal), fail_first={"s2": 1}))
    with engine:
        assert [s.state.status for s in engine.stages] == [S.COMPLETE, S.RETRY, S.CREATED]
        engine.execute()
        assert engine.status is S.COMPLETE
        assert engine.task_result == expected_result(3)
    assert starts(st.journal) == {"s1": 1, "s2": 2, "s3": 1}


def stored_doc(st: Store, obj: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((st.base / TASK / obj).read_bytes())
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


# ------------------------------------------------------------------------------- ids and stage names

# (bad value, a word of the message that says what is wrong)
BAD_NAMES: list[tuple[str, str]] = [
    ("../x", "letters"),
    ("../../x", "letters"),
    ("../../../secret.txt", "letters"),
    ("a/b", "letters"),
    ("/abs", "letters"),
    ("..", "'..'"),
    (".", "start"),
    (".hidden", "start"),
    ("-x", "start"),
    ("a..b", "'..'"),
    ("", "empty"),
    ("tâche", "letters"),
    ("ταξ", "letters"),
    ("a\x00b", "letters"),
    ("a b", "letters"),
    (" x", "letters"),
    ("x\n", "letters"),
    ("%2e%2e", "letters"),
    ("%2e%2e%2fx", "letters"),
    ("..\\x", "letters"),
    ("a\\b", "letters"),
]
BAD_TASK_IDS = [*BAD_NAMES, ("x" * (TASK_ID_MAX_LENGTH + 1), str(TASK_ID_MAX_LENGTH))]
BAD_STAGE_NAMES = [*BAD_NAMES, ("x" * (STAGE_NAME_MAX_LENGTH + 1), str(STAGE_NAME_MAX_LENGTH))]


def _ids(cases: list[tuple[str, str]]) -> list[str]:
    return [ascii(value[:12]) + (f"..len{len(value)}" if len(value) > 12 else "") for value, _ in cases]


@pytest.mark.parametrize(("task_id", "word"), BAD_TASK_IDS, ids=_ids(BAD_TASK_IDS))
def test_bad_task_id_is_refused_before_any_storage_call(store: Store, task_id: str, word: str) -> None:
    make_stored_task(store)
    before = snapshot(store.root)
    with pytest.raises(TaskEngineException) as exc:
        CheckMateEngine(store.io, task_id, make_stages(2, str(store.journal)))
    message = str(exc.value)
    assert "task id" in message
    assert repr(task_id[:80]) in message
    assert word in message
    with pytest.raises(TaskEngineException, match="task id"):
        CheckMateEngine.request_cancel(store.io, task_id, "bad id")
    assert store.io.calls == []
    assert snapshot(store.root) == before
    assert starts(store.journal) == {"s1": 1, "s2": 1}


@pytest.mark.parametrize(("name", "word"), BAD_STAGE_NAMES, ids=_ids(BAD_STAGE_NAMES))
def test_bad_stage_name_is_refused_at_construction(name: str, word: str) -> None:
    with pytest.raises(ValidationError) as exc:
        JournalStage(stage_name=name, state=CounterState())
    message = str(exc.value)
    assert "stage_name" in message
    if name and len(name) <= STAGE_NAME_MAX_LENGTH:
        assert f"invalid stage name {name!r}" in message
        assert word in message
    else:  # pydantic's own length constraint speaks first
        assert ("at least 1" if not name else f"at most {STAGE_NAME_MAX_LENGTH}") in message


@pytest.mark.parametrize(("name", "word"), BAD_STAGE_NAMES, ids=_ids(BAD_STAGE_NAMES))
def test_bad_stage_name_reaching_the_engine_is_refused_at_bind(store: Store, name: str, word: str) -> None:
    """A name that slipped past pydantic (model_construct, or assigned later) is stopped by bind."""
    make_stored_task(store)
    before = snapshot(store.root)
    stages = make_stages(3, str(store.journal))
    constructed = JournalStage.model_construct(stage_name=name, state=CounterState(), journal_path=str(store.journal))
    assigned = stages[2]
    assigned.stage_name = name
    for bad in ([stages[0], constructed], [stages[0], stages[1], assigned]):
        engine = CheckMateEngine(store.io, TASK, bad, RetryPolicy.RETRY, 3)
        with pytest.raises(TaskEngineException) as exc:
            engine.bind()
        message = str(exc.value)
        assert "stage name" in message
        assert repr(name[:80]) in message
        assert word in message
        assert not engine.bound
    assert store.io.calls == []
    assert snapshot(store.root) == before
    resume_and_finish(store)


def test_longest_valid_task_id_and_stage_name_work(store: Store) -> None:
    """The limits are inclusive: a 200-character id and 150-character names run and resume."""
    task_id = "t" * TASK_ID_MAX_LENGTH
    stages = [
        JournalStage(stage_name=f"{i}" * STAGE_NAME_MAX_LENGTH, state=CounterState(), journal_path=str(store.journal))
        for i in (1, 2)
    ]
    with CheckMateEngine(store.io, task_id, stages) as engine:
        engine.execute()
        assert engine.status is S.COMPLETE
    with CheckMateEngine(store.io, task_id, stages) as again:
        assert again.status is S.COMPLETE
        assert again.check_sync()
    assert sorted(p.name for p in (store.base / task_id).iterdir()) == sorted(
        [f"{'1' * 150}.stage.json", f"{'2' * 150}.stage.json", "task.json"]
    )


def test_duplicate_stage_names_are_refused_at_bind(store: Store) -> None:
    make_stored_task(store)
    before = snapshot(store.root)
    stages = make_stages(3, str(store.journal))
    stages[2].stage_name = "s1"
    engine = CheckMateEngine(store.io, TASK, stages, RetryPolicy.RETRY, 3)
    with pytest.raises(TaskEngineException, match="unique") as exc:
        engine.bind()
    assert "s1" in str(exc.value)
    assert not engine.bound
    assert store.io.calls == []
    assert snapshot(store.root) == before


NASTY = st.sampled_from(["a", "Z", "0", ".", "..", "-", "_", "/", "\\", "%2e", "%2f", " ", "\x00", "\n", "é", "~", ":"])
IDS = st.one_of(st.lists(NASTY, max_size=12).map("".join), st.text(max_size=TASK_ID_MAX_LENGTH + 20))
OBJECT_NAMES = st.lists(st.lists(NASTY, max_size=6).map("".join), min_size=1, max_size=5).map("/".join)
ANY_INPUT = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@ANY_INPUT
@given(task_id=IDS)
def test_any_task_id_is_refused_or_names_a_folder_inside_the_base(store: Store, task_id: str) -> None:
    try:
        engine = CheckMateEngine(store.io, task_id, make_stages(1))
    except TaskEngineException as exc:
        assert "task id" in str(exc)  # noqa: PT017 - hypothesis: one outcome of two
    else:
        assert len(task_id) <= TASK_ID_MAX_LENGTH
        folder = Path(store.io.build_url(engine.lock_obj_name)).resolve().parent
        assert folder.parent == store.base
        assert folder.name == task_id
    assert store.io.calls == []
    assert files_under(store.root) == ["secret.txt"]


@ANY_INPUT
@given(obj=OBJECT_NAMES)
def test_any_object_name_is_refused_or_stays_inside_the_base(store: Store, obj: str) -> None:
    try:
        path = Path(store.io.build_url(obj))
    except TaskEngineException as exc:
        assert "invalid object name" in str(exc)  # noqa: PT017 - hypothesis: one outcome of two
    else:
        resolved = path.resolve()
        assert resolved != store.base
        assert resolved.is_relative_to(store.base)
        assert resolved.relative_to(store.base).as_posix() == obj


# --------------------------------------------------------------------------------------- storage URLs


@pytest.mark.parametrize(
    "url", ["hdfs://namenode/prefix", "webdav://bucket", "http://example.com/x", "ftp://host/x", "weird+file://x"]
)
def test_unknown_url_scheme_is_refused(store: Store, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(store.root)
    before = snapshot(store.root)
    with pytest.raises(TaskEngineException) as exc:
        TaskIO.from_base_url(url)
    message = str(exc.value)
    assert repr(url.split("://")[0]) in message
    assert "file://" in message  # says what is known
    assert snapshot(store.root) == before


def test_scheme_case_does_not_turn_a_url_into_a_relative_folder(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """URL schemes are case-insensitive (RFC 3986): ``FILE:///abs`` is the folder /abs, or refused.

    It must never become a folder named ``FILE:`` under the current directory.
    """
    monkeypatch.chdir(store.root)
    before = snapshot(store.root)
    try:
        io = TaskIO.from_base_url(f"FILE://{store.base}")
    except (TaskEngineException, TaskIOException):
        pass
    else:
        assert isinstance(io, TaskIOFile)
        assert io.base == store.base
    assert snapshot(store.root) == before


def test_storage_folder_that_is_a_file_is_refused(store: Store) -> None:
    target = store.root / "secret.txt"
    before = snapshot(store.root)
    with pytest.raises(TaskIOException) as exc:
        TaskIO.from_base_url(str(target))
    assert str(target) in str(exc.value)
    with pytest.raises(TaskIOException, match="needs a folder"):
        TaskIO.from_base_url("file://")
    assert snapshot(store.root) == before


ESCAPING_OBJECT_NAMES = [
    "a/../../etc/passwd",
    f"{TASK}/../../../../secret.txt",
    "../../../secret.txt",
    "../x",
    "..",
    ".",
    "a/./b",
    "/abs",
    "/etc/passwd",
    "a//b",
    "a/",
    "",
    "..\\..\\..\\secret.txt",
    "a/\x00",
    "%2e%2e/%2e%2e/secret.txt",
    "tâche/x",
]


@pytest.mark.parametrize("obj", ESCAPING_OBJECT_NAMES, ids=[ascii(n) for n in ESCAPING_OBJECT_NAMES])
def test_taskiofile_refuses_object_names_that_could_escape(store: Store, obj: str) -> None:
    make_stored_task(store)
    before = snapshot(store.root)
    operations: dict[str, Callable[[], object]] = {
        "read": lambda: store.io.read(obj),
        "write": lambda: store.io.write(obj, "overwritten"),
        "exists": lambda: store.io.exists(obj),
        "remove": lambda: store.io.remove(obj),
        "build_url": lambda: store.io.build_url(obj),
        "lease_read": lambda: store.io.lease_read(obj),
        "lease_create": lambda: store.io.lease_create(obj, "{}"),
        "lease_swap": lambda: store.io.lease_swap(obj, "x", None),
    }
    for operation, call in operations.items():
        with pytest.raises(TaskEngineException, match="invalid object name") as exc:
            call()
        assert repr(obj[:120]) in str(exc.value), operation
    assert snapshot(store.root) == before
    assert (store.root / "secret.txt").read_text() == "outside the base\n"


@pytest.mark.parametrize("prefix", ["../", "../x", "../../../", "a/../../", "/etc/", "t/../../", "./"])
def test_list_refuses_prefixes_that_could_escape(store: Store, prefix: str) -> None:
    make_stored_task(store)
    with pytest.raises(TaskEngineException, match="invalid object name"):
        store.io.list(prefix)


@pytest.mark.parametrize("prefix", ["/", "..", "...", "%2e%2e"])
def test_list_of_an_odd_prefix_never_looks_outside_the_base(store: Store, prefix: str) -> None:
    """Prefixes without a folder part are matched against names inside the base only."""
    make_stored_task(store)
    assert store.io.list(prefix) == []
    assert store.io.list("") == [f"{TASK}/s1.stage.json", f"{TASK}/s2.stage.json", f"{TASK}/task.json"]


# ------------------------------------------------------------------------- corrupt stored objects


def _truncate(at: Callable[[int], int]) -> Callable[[bytes], bytes]:
    return lambda raw: raw[: at(len(raw))]


def _bad_utf8(raw: bytes) -> bytes:
    cut = raw.index(b'":"') + 3  # inside the first string value: still JSON, no longer UTF-8
    return raw[:cut] + b"\xff\xfe" + raw[cut:]


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda raw: b"",
    "truncated-1": _truncate(lambda n: 1),
    "truncated-third": _truncate(lambda n: n // 3),
    "truncated-half": _truncate(lambda n: n // 2),
    "truncated-last-byte": _truncate(lambda n: n - 1),
    "garbage": lambda raw: b"\x00\x01\x02garbage\xff\xfe\x80" * 10,
    "invalid-utf8": _bad_utf8,
    "nul-bytes": lambda raw: b"\x00" * len(raw),
    "json-list": lambda raw: b"[]",
    "json-list-of-object": lambda raw: b"[" + raw + b"]",
    "json-string": lambda raw: b'"COMPLETE"',
    "json-null": lambda raw: b"null",
    "json-number": lambda raw: b"42",
    "two-documents": lambda raw: raw + raw,
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest.mark.parametrize("obj", ["s1.stage.json", "s2.stage.json", "task.json"])
def test_corrupt_object_is_refused_by_name_and_left_in_place(store: Store, obj: str, corruption: str) -> None:
    make_stored_task(store)
    path = store.base / TASK / obj
    original = path.read_bytes()
    path.write_bytes(CORRUPTIONS[corruption](original))
    before = snapshot(store.root)
    engine = engine_for(store.io, store.journal)
    with pytest.raises(PersistenceDataNotFoundException) as exc:
        engine.bind()
    message = str(exc.value)
    assert str(path) in message
    assert "left in place" in message
    assert not engine.bound
    assert snapshot(store.root) == before  # the object byte-identical, the lock released, nothing added
    assert starts(store.journal) == {"s1": 1, "s2": 1}
    path.write_bytes(original)
    resume_and_finish(store)


def test_corrupt_lock_is_refused_by_name_and_left_in_place(store: Store) -> None:
    make_stored_task(store)
    lock = store.base / TASK / "task.lock"
    lock.write_bytes(b'{"token": "trunc')
    before = snapshot(store.root)
    engine = engine_for(store.io, store.journal)
    with pytest.raises(PersistenceDataNotFoundException) as exc:
        engine.bind()
    assert "task.lock" in str(exc.value)
    assert "left in place" in str(exc.value)
    assert snapshot(store.root) == before
    lock.unlink()
    resume_and_finish(store)


def _bind_fails_and_changes_nothing(st: Store, exc_type: type[Exception] | tuple[type[Exception], ...]) -> str:
    before = snapshot(st.root)
    engine = engine_for(st.io, st.journal)
    with pytest.raises(exc_type) as exc:
        engine.bind()
    assert not engine.bound
    assert snapshot(st.root) == before
    return str(exc.value)


def test_stage_object_written_by_another_state_class_is_refused(store: Store) -> None:
    make_stored_task(store)
    path = store.base / TASK / "s1.stage.json"
    original = path.read_bytes()
    foreign = OtherState.model_validate({**json.loads(original), "priority": 3})
    path.write_text(foreign.model_dump_json())
    message = _bind_fails_and_changes_nothing(store, PersistenceDataNotFoundException)
    assert str(path) in message
    assert "priority" in message
    assert "CounterState" in message
    path.write_bytes(original)
    resume_and_finish(store)


def test_stage_object_holding_another_stage_is_refused(store: Store) -> None:
    make_stored_task(store)
    s1, s2 = store.base / TASK / "s1.stage.json", store.base / TASK / "s2.stage.json"
    original = s1.read_bytes()
    s1.write_bytes(s2.read_bytes())
    message = _bind_fails_and_changes_nothing(store, PersistenceDataNotFoundException)
    assert str(s1) in message
    assert "'s2'" in message
    assert "'s1'" in message
    s1.write_bytes(original)
    resume_and_finish(store)


def test_stage_object_of_an_unbound_stage_is_refused(store: Store) -> None:
    """``{}`` parses as CounterState defaults (no name, UNBOUND): that is not a stored stage."""
    make_stored_task(store)
    path = store.base / TASK / "s2.stage.json"
    original = path.read_bytes()
    path.write_bytes(b"{}")
    message = _bind_fails_and_changes_nothing(store, PersistenceDataNotFoundException)
    assert str(path) in message
    path.write_bytes(original)
    resume_and_finish(store)


def test_task_object_with_an_unknown_field_is_refused(store: Store) -> None:
    make_stored_task(store)
    path = store.base / TASK / "task.json"
    original = path.read_bytes()
    path.write_text(json.dumps({**json.loads(original), "storage_layout": "v2"}))
    message = _bind_fails_and_changes_nothing(store, PersistenceDataNotFoundException)
    assert str(path) in message
    assert "storage_layout" in message
    path.write_bytes(original)
    resume_and_finish(store)


def test_task_object_of_another_schema_version_is_refused(store: Store) -> None:
    """A task.json written by a newer CheckMate (``schema_version`` 2) must not be read as version 1.

    The model's own docstring: "an object of another schema is never silently read". Either exception
    is acceptable as long as it names the object's schema version.
    """
    make_stored_task(store)
    path = store.base / TASK / "task.json"
    original = path.read_bytes()
    assert json.loads(original)["schema_version"] == 1
    path.write_text(json.dumps({**json.loads(original), "schema_version": 2}))
    message = _bind_fails_and_changes_nothing(store, (PersistenceDataNotFoundException, TaskEngineException))
    assert "schema" in message
    assert "task.json" in message
    path.write_bytes(original)
    resume_and_finish(store)


def test_task_object_of_another_task_is_refused(store: Store) -> None:
    make_stored_task(store)
    path = store.base / TASK / "task.json"
    original = path.read_bytes()
    path.write_text(json.dumps({**json.loads(original), "task_id": "other-task"}))
    message = _bind_fails_and_changes_nothing(store, (PersistenceDataNotFoundException, TaskEngineException))
    assert repr(TASK) in message
    path.write_bytes(original)
    resume_and_finish(store)


def test_stored_stage_sequence_that_cannot_happen_is_refused(store: Store) -> None:
    """s3 stored COMPLETE while s2 is RETRY: each object parses, the sequence is impossible."""
    make_stored_task(store)
    s3 = store.base / TASK / "s3.stage.json"
    s3.write_text(json.dumps({**stored_doc(store, "s1.stage.json"), "stage_name": "s3"}))
    message = _bind_fails_and_changes_nothing(store, TaskEngineException)
    assert "s3" in message
    s3.unlink()
    resume_and_finish(store)


# ----------------------------------------------------------------------------- changed definition


def _stage(name: str, cls: type[JournalStage], journal: Path) -> JournalStage:
    return cls(stage_name=name, state=CounterState(), journal_path=str(journal))


CHANGED_DEFINITIONS: dict[str, list[tuple[str, type[JournalStage]]]] = {
    "renamed": [("s1", JournalStage), ("s2", JournalStage), ("s3-renamed", JournalStage)],
    "extra": [("s1", JournalStage), ("s2", JournalStage), ("s3", JournalStage), ("s4", JournalStage)],
    "removed": [("s1", JournalStage), ("s2", JournalStage)],
    "removed-first": [("s2", JournalStage), ("s3", JournalStage)],
    "reordered": [("s2", JournalStage), ("s1", JournalStage), ("s3", JournalStage)],
    "other-class": [("s1", JournalStage), ("s2", OtherStage), ("s3", JournalStage)],
}


def _in_order(message: str, tokens: list[str]) -> bool:
    at = 0
    for token in tokens:
        at = message.find(token, at)
        if at < 0:
            return False
        at += len(token)
    return True


@pytest.mark.parametrize("change", list(CHANGED_DEFINITIONS))
def test_changed_stage_list_is_refused_showing_both_definitions(store: Store, change: str) -> None:
    make_stored_task(store)
    before = snapshot(store.root)
    definition = CHANGED_DEFINITIONS[change]
    engine = engine_for(store.io, store.journal, [_stage(n, c, store.journal) for n, c in definition])
    with pytest.raises(TaskEngineException) as exc:
        engine.bind()
    message = str(exc.value)
    stored = [f"{n}({JOURNAL_CLASS})" for n in ("s1", "s2", "s3")]
    given = [f"{n}({c.__module__}.{c.__qualname__})" for n, c in definition]
    assert _in_order(message, stored + given), message
    assert "stored" in message
    assert "new task id" in message  # what to do
    assert not engine.bound
    assert snapshot(store.root) == before
    resume_and_finish(store)


def test_force_create_on_an_existing_task_raises_and_changes_nothing(store: Store) -> None:
    make_stored_task(store)
    before = snapshot(store.root)
    engine = engine_for(store.io, store.journal, force_create=True)
    with pytest.raises(TaskEngineException) as exc:
        engine.bind()
    message = str(exc.value)
    assert repr(TASK) in message
    assert "already" in message
    assert "new task id" in message
    assert not engine.bound
    assert snapshot(store.root) == before
    resume_and_finish(store)


def test_force_create_on_a_new_task_id_works(store: Store) -> None:
    engine = engine_for(store.io, store.journal, force_create=True)
    with engine:
        engine.execute()
        assert engine.task_result == expected_result(3)
    assert files_under(store.base) == [f"{TASK}/s{i}.stage.json" for i in (1, 2, 3)] + [f"{TASK}/task.json"]
    assert starts(store.journal) == {"s1": 1, "s2": 1, "s3": 1}


# ------------------------------------------------------------------------------------------ full disk


def _stage_write(name: str, status: StageStatus) -> Callable[[dict[str, Any]], bool]:
    return lambda doc: doc.get("stage_name") == name and doc.get("status") == status.value


def _assert_enospc(exc: pytest.ExceptionInfo[TaskIOException], path: Path) -> None:
    message = str(exc.value)
    assert str(path) in message
    assert os.strerror(errno.ENOSPC) in message
    assert isinstance(exc.value.__cause__, OSError)
    assert exc.value.__cause__.errno == errno.ENOSPC


def test_full_disk_on_the_running_write_of_a_new_stage(store: Store) -> None:
    engine = engine_for(store.io, store.journal)
    with engine:
        before = snapshot(store.root)
        store.io.fail_on = _stage_write("s1", S.RUNNING)
        with pytest.raises(TaskIOException) as exc:
            engine.execute()
        assert store.io.faults == 1
        _assert_enospc(exc, store.base / TASK / "s1.stage.json")
        assert read_journal(store.journal) == []  # the stage code never ran
        assert snapshot(store.root) == before  # nothing stored changed, no temp file left
        assert engine.check_sync()
        assert [s.state.status for s in engine.stages] == [S.CREATED] * 3
        assert engine.stages[0].state.attempts == 0
        engine.execute()  # the disk has room again: the same engine carries on
        assert engine.task_result == expected_result(3)
    assert starts(store.journal) == {"s1": 1, "s2": 1, "s3": 1}


def test_full_disk_on_the_running_write_of_a_stored_stage(store: Store) -> None:
    make_stored_task(store)
    engine = engine_for(store.io, store.journal, make_stages(3, str(store.journal), fail_first={"s2": 1}))
    with engine:
        before = snapshot(store.root)
        store.io.fail_on = _stage_write("s2", S.RUNNING)
        with pytest.raises(TaskIOException) as exc:
            engine.execute()
        _assert_enospc(exc, store.base / TASK / "s2.stage.json")
        assert starts(store.journal) == {"s1": 1, "s2": 1}  # s2 did not run again
        assert snapshot(store.root) == before
        assert engine.check_sync()
        assert engine.stages[1].state.status is S.RETRY
        assert engine.stages[1].state.attempts == 1
    resume_and_finish(store)


@pytest.mark.parametrize("stage", ["s1", "s2", "s3"])
def test_full_disk_on_the_complete_write(store: Store, stage: str) -> None:
    index = int(stage[1:]) - 1
    path = store.base / TASK / f"{stage}.stage.json"
    engine = engine_for(store.io, store.journal)
    with engine:
        store.io.fail_on = _stage_write(stage, S.COMPLETE)
        with pytest.raises(TaskIOException) as exc:
            engine.execute()
        _assert_enospc(exc, path)
        assert starts(store.journal) == {f"s{i}": 1 for i in range(1, index + 2)}
        stored = stored_doc(store, path.name)
        assert (stored["status"], stored["attempts"]) == ("RUNNING", 1)  # storage still says RUNNING
        assert engine.stages[index].state.status is S.RUNNING  # and so does memory
        assert engine.check_sync()
        assert no_temp_files(store.base)
        assert engine.status is S.RUNNING
    with engine_for(store.io, store.journal) as later:
        with pytest.raises(TaskEngineException, match="strict_recovery=True"):
            later.execute()
        later.execute(strict_recovery=True)
        assert later.status is S.COMPLETE
        assert later.task_result == expected_result(3)
        assert later.stages[index].state.attempts == 2
    assert starts(store.journal) == {f"s{i}": 2 if i == index + 1 else 1 for i in (1, 2, 3)}


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(lambda doc: "stage_names" in doc, id="task.json"),
        pytest.param(lambda doc: "token" in doc, id="task.lock"),
    ],
)
def test_full_disk_at_bind_of_a_new_task(store: Store, target: Callable[[dict[str, Any]], bool]) -> None:
    store.io.fail_on = target
    engine = engine_for(store.io, store.journal)
    with pytest.raises(TaskIOException) as exc:
        engine.bind()
    assert store.io.faults == 1
    assert os.strerror(errno.ENOSPC) in str(exc.value)
    assert not engine.bound
    assert files_under(store.base) == []  # no task.json, no lock, no temp file
    with engine:  # the lock was released: the same engine binds once there is room
        engine.execute()
        assert engine.task_result == expected_result(3)


# --------------------------------------------------------------------------- constructor arguments


def _engine_with(io: TaskIO, **kwargs: Any) -> CheckMateEngine[Any, Any]:
    kwargs.setdefault("stage_templates", make_stages(2))
    return CheckMateEngine(io, TASK, **kwargs)


def _used_template() -> list[JournalStage]:
    stages = make_stages(2)
    stages[1].state.status = S.COMPLETE
    stages[1].state.attempts = 1
    return stages


BAD_CONSTRUCTOR_ARGS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "none-policy-3-attempts": ({"retry_policy": RetryPolicy.NONE, "max_attempts": 3}, ["RetryPolicy.NONE", "RETRY"]),
    "zero-attempts": ({"retry_policy": RetryPolicy.RETRY, "max_attempts": 0}, ["max_attempts", "at least 1"]),
    "negative-attempts": ({"retry_policy": RetryPolicy.RETRY, "max_attempts": -1}, ["max_attempts"]),
    "float-attempts": ({"retry_policy": RetryPolicy.RETRY, "max_attempts": 2.5}, ["max_attempts", "int"]),
    "bool-attempts": ({"max_attempts": True}, ["max_attempts", "int"]),
    "policy-as-string": ({"retry_policy": "RETRY", "max_attempts": 2}, ["retry_policy", "RetryPolicy"]),
    "no-templates-list": ({"stage_templates": []}, ["at least one stage"]),
    "no-templates-none": ({"stage_templates": None}, ["at least one stage"]),
    "not-a-stage": ({"stage_templates": [object()]}, ["BaseStage"]),
    "a-stage-class-not-instance": ({"stage_templates": [JournalStage]}, ["BaseStage"]),
    "template-with-run-state": ({"stage_templates": _used_template()}, ["'s2'", "fresh template"]),
    "negative-lock-timeout": ({"bind_lock_timeout": -1.0}, ["bind_lock_timeout", "-1.0"]),
}


@pytest.mark.parametrize("case", list(BAD_CONSTRUCTOR_ARGS))
def test_bad_constructor_arguments_are_refused(store: Store, case: str) -> None:
    kwargs, words = BAD_CONSTRUCTOR_ARGS[case]
    before = snapshot(store.root)
    with pytest.raises(TaskEngineException) as exc:
        _engine_with(store.io, **kwargs)
    for word in words:
        assert word in str(exc.value)
    assert store.io.calls == []
    assert snapshot(store.root) == before


@pytest.mark.parametrize("io", [None, "/tmp/store", object()], ids=["None", "path-string", "object"])
def test_io_that_is_not_a_taskio_is_refused(io: Any) -> None:
    with pytest.raises(TaskEngineException, match=r"io must be a TaskIO .*from_base_url"):
        CheckMateEngine(io, TASK, make_stages(2))


def test_non_string_task_id_is_refused(store: Store) -> None:
    with pytest.raises(TaskEngineException, match="task id must be a string, got int"):
        CheckMateEngine(store.io, 42, make_stages(2))  # type: ignore[arg-type]


def test_bad_lease_seconds_is_refused(store: Store) -> None:
    for lease in (0, -5.0):
        with pytest.raises(TaskEngineException, match="lease_seconds must be positive"):
            TaskIOFile(store.base, lease_seconds=lease)


def test_unknown_timezone_is_refused_at_construction() -> None:
    with pytest.raises(ValidationError) as exc:
        JournalStage(stage_name="s1", state=CounterState(), timezone="Mars/Olympus")
    assert "timezone" in str(exc.value)
    assert "'Mars/Olympus'" in str(exc.value)
    assert "UTC" in str(exc.value)  # what to use instead


def test_unknown_timezone_set_after_construction_is_refused_without_desync(store: Store) -> None:
    """A stage whose timezone was assigned after construction (pydantic does not validate assignment).

    Best: refused at construction or bind with TaskEngineException. At the latest, execute raises an
    error naming the timezone before that stage's code runs, and memory keeps matching storage: it
    must never claim a RUNNING that was not stored, which a later execute would report as "the
    process died mid-stage".
    """
    stages = make_stages(2, str(store.journal))
    stages[1].timezone = "Mars/Olympus"
    refused = ""
    try:
        engine = CheckMateEngine(store.io, TASK, stages)
        engine.bind()
    except TaskEngineException as exc:
        refused = str(exc)
    if refused:
        assert "Mars/Olympus" in refused
        assert files_under(store.base) == []
        return
    try:
        for _ in range(2):
            with pytest.raises((TaskEngineException, ValueError, KeyError), match="Mars/Olympus"):
                engine.execute()
            assert "s2" not in starts(store.journal)
            assert engine.check_sync(), [(s.stage_name, s.state.status) for s in engine.stages]
            assert engine.stages[1].state.status is S.CREATED
    finally:
        engine.unbind()


# ----------------------------------------------------------------------------- missing state, modes


def test_missing_state_exception_names_the_field_and_the_stage(store: Store) -> None:
    state = NeedsState(stage_name="consume")
    with pytest.raises(MissingStateException) as exc:
        state.require("source", "result")
    message = str(exc.value)
    assert "'consume'" in message
    assert "source" in message
    assert "result" in message
    NeedsState(stage_name="consume", source=3, result=1).require("source", "result")  # set: no error

    stages = [
        NeedsStage(stage_name="produce", state=NeedsState()),
        NeedsStage(stage_name="consume", state=NeedsState()),
    ]
    with CheckMateEngine(store.io, TASK, stages) as engine, pytest.raises(MissingStateException, match="source"):
        engine.execute()
    with CheckMateEngine(store.io, TASK, stages) as engine:
        assert engine.status is S.ERROR
        last = engine.stages[0].state.history[-1]
        assert last.status is S.ERROR
        assert "MissingStateException" in last.message
        assert "source" in last.message


def test_stored_files_are_private_whatever_the_umask(store: Store) -> None:
    old = os.umask(0)
    try:
        engine = engine_for(store.io, store.journal)
        with engine:
            lock = store.base / TASK / "task.lock"
            assert stat.S_IMODE(lock.stat().st_mode) == 0o600
            engine.execute()
        modes = {p.relative_to(store.base).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in store.base.rglob("*")}
    finally:
        os.umask(old)
    assert modes == {
        TASK: 0o700,
        f"{TASK}/task.json": 0o600,
        f"{TASK}/s1.stage.json": 0o600,
        f"{TASK}/s2.stage.json": 0o600,
        f"{TASK}/s3.stage.json": 0o600,
    }
