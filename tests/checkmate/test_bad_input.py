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

The bad inputs and the one way each is thrown at the engine are defined once, in
``reliability/hostile_cases.py`` (the sandbox store and its helpers in ``reliability/hostile_store.py``):
the hostile-input campaign (``python -m reliability.hostile``) tables the same cases, and the last tests
here run that campaign and prove it can fail.

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
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from airflow_checkmate.checkmate import (
    STAGE_NAME_MAX_LENGTH,
    TASK_ID_MAX_LENGTH,
    CheckMateEngine,
    MissingStateException,
    PersistenceDataNotFoundException,
    StageStatus,
    TaskEngineException,
    TaskIO,
    TaskIOException,
    TaskIOFile,
)
from airflow_checkmate.checkmate.io.journal import JOURNAL_NAME
from reliability import hostile
from reliability import hostile_cases as hc
from reliability.hostile_catalogue import HostileCase, catalogue
from reliability.hostile_store import (
    JOURNAL_CLASS,
    TASK,
    NeedsStage,
    NeedsState,
    Store,
    engine_for,
    make_stored_task,
    new_store,
    no_temp_files,
    resume_and_finish,
    snapshot,
    stored_doc,
)
from support.stages import CounterState, JournalStage, expected_result, make_stages, read_journal, start_counts
from support.stored_objects import files_under, get_object, put_object

S = StageStatus


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return new_store(tmp_path)


# ------------------------------------------------------------------------------- ids and stage names


@pytest.mark.parametrize(("task_id", "word"), hc.BAD_TASK_IDS, ids=hc.value_ids(hc.BAD_TASK_IDS))
def test_bad_task_id_is_refused_before_any_storage_call(store: Store, task_id: str, word: str) -> None:
    make_stored_task(store)
    before = snapshot(store.root)
    calls = hc.task_id_calls(store, task_id)
    with pytest.raises(TaskEngineException) as exc:
        calls["CheckMateEngine()"]()
    message = str(exc.value)
    assert "task id" in message
    assert repr(task_id[:80]) in message
    assert word in message
    with pytest.raises(TaskEngineException, match="task id"):
        calls["request_cancel()"]()
    assert store.io.calls == []
    assert snapshot(store.root) == before
    assert start_counts(store.journal) == {"s1": 1, "s2": 1}


@pytest.mark.parametrize(("name", "word"), hc.BAD_STAGE_NAMES, ids=hc.value_ids(hc.BAD_STAGE_NAMES))
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


@pytest.mark.parametrize(("name", "word"), hc.BAD_STAGE_NAMES, ids=hc.value_ids(hc.BAD_STAGE_NAMES))
def test_bad_stage_name_reaching_the_engine_is_refused_at_bind(store: Store, name: str, word: str) -> None:
    """A name that slipped past pydantic (model_construct, or assigned later) is stopped by bind."""
    make_stored_task(store)
    before = snapshot(store.root)
    for engine in hc.bind_engines(store, hc.stage_name_lists(store, name)):
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
    assert files_under(store.base) == sorted(
        f"{task_id}/{name}" for name in (f"{'1' * 150}.stage.json", f"{'2' * 150}.stage.json", "task.json")
    )


def test_duplicate_stage_names_are_refused_at_bind(store: Store) -> None:
    make_stored_task(store)
    before = snapshot(store.root)
    engine = CheckMateEngine(store.io, TASK, hc.duplicate_names(store))
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


@pytest.mark.parametrize("url", hc.UNKNOWN_URLS)
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


@pytest.mark.parametrize("obj", hc.ESCAPING_OBJECT_NAMES, ids=[ascii(n) for n in hc.ESCAPING_OBJECT_NAMES])
def test_taskiofile_refuses_object_names_that_could_escape(store: Store, obj: str) -> None:
    make_stored_task(store)
    before = snapshot(store.root)
    operations = hc.object_operations(store.io, obj)
    for operation, call in operations.items():
        with pytest.raises(TaskEngineException, match="invalid object name") as exc:
            call()
        assert repr(obj[:120]) in str(exc.value), operation
    assert snapshot(store.root) == before
    assert (store.root / "secret.txt").read_text() == "outside the base\n"


@pytest.mark.parametrize("prefix", hc.ESCAPING_PREFIXES)
def test_list_refuses_prefixes_that_could_escape(store: Store, prefix: str) -> None:
    make_stored_task(store)
    with pytest.raises(TaskEngineException, match="invalid object name"):
        store.io.list(prefix)


@pytest.mark.parametrize("prefix", hc.ODD_PREFIXES)
def test_list_of_an_odd_prefix_never_looks_outside_the_base(store: Store, prefix: str) -> None:
    """Prefixes without a folder part are matched against names inside the base only."""
    make_stored_task(store)
    assert store.io.list(prefix) == []
    assert store.io.list("") == [f"{TASK}/s1.stage.json", f"{TASK}/s2.stage.json", f"{TASK}/task.json"]


# ------------------------------------------------------------------------- corrupt stored objects


@pytest.mark.parametrize("corruption", list(hc.CORRUPTIONS))
@pytest.mark.parametrize("obj", hc.CORRUPTIBLE_OBJECTS)
def test_corrupt_object_is_refused_by_name_and_left_in_place(store: Store, obj: str, corruption: str) -> None:
    make_stored_task(store)
    path = store.base / TASK / obj
    corrupt = hc.CORRUPTIONS[corruption]
    restore = hc.plant(store, obj, lambda _, raw: corrupt(raw))
    before = snapshot(store.root)
    engine = engine_for(store.io, store.journal)
    with pytest.raises(PersistenceDataNotFoundException) as exc:
        engine.bind()
    message = str(exc.value)
    assert str(path) in message
    assert "left in place" in message
    assert not engine.bound
    assert snapshot(store.root) == before  # the object byte-identical, the lock released, nothing added
    assert start_counts(store.journal) == {"s1": 1, "s2": 1}
    restore()
    resume_and_finish(store)


def _bind_fails_and_changes_nothing(st: Store, exc_type: type[Exception] | tuple[type[Exception], ...]) -> str:
    before = snapshot(st.root)
    engine = engine_for(st.io, st.journal)
    with pytest.raises(exc_type) as exc:
        engine.bind()
    assert not engine.bound
    assert snapshot(st.root) == before
    return str(exc.value)


def _foreign(st: Store, case: str) -> tuple[Path, Callable[[], None]]:
    """Store task ``t``, then put ``hc.FOREIGN_OBJECTS[case]`` in place: its path and how to undo it."""
    make_stored_task(st)
    obj, make = hc.FOREIGN_OBJECTS[case]
    return st.base / TASK / obj, hc.plant(st, obj, make)


def test_corrupt_lock_is_refused_by_name_and_left_in_place(store: Store) -> None:
    _, restore = _foreign(store, "truncated-lock")
    message = _bind_fails_and_changes_nothing(store, PersistenceDataNotFoundException)
    assert "task.lock" in message
    assert "left in place" in message
    restore()
    resume_and_finish(store)


def test_stage_object_written_by_another_state_class_is_refused(store: Store) -> None:
    path, restore = _foreign(store, "other-state-class")
    message = _bind_fails_and_changes_nothing(store, PersistenceDataNotFoundException)
    assert str(path) in message
    assert "priority" in message
    assert "CounterState" in message
    restore()
    resume_and_finish(store)


def test_stage_object_holding_another_stage_is_refused(store: Store) -> None:
    s1, restore = _foreign(store, "other-stage")
    assert get_object(store.base, f"{TASK}/s1.stage.json") == get_object(store.base, f"{TASK}/s2.stage.json")
    message = _bind_fails_and_changes_nothing(store, PersistenceDataNotFoundException)
    assert str(s1) in message
    assert "'s2'" in message
    assert "'s1'" in message
    restore()
    resume_and_finish(store)


def test_stage_object_of_an_unbound_stage_is_refused(store: Store) -> None:
    """``{}`` parses as CounterState defaults (no name, UNBOUND): that is not a stored stage."""
    path, restore = _foreign(store, "unbound-stage")
    message = _bind_fails_and_changes_nothing(store, PersistenceDataNotFoundException)
    assert str(path) in message
    restore()
    resume_and_finish(store)


def test_task_object_with_an_unknown_field_is_refused(store: Store) -> None:
    path, restore = _foreign(store, "unknown-field")
    message = _bind_fails_and_changes_nothing(store, PersistenceDataNotFoundException)
    assert str(path) in message
    assert "storage_layout" in message
    restore()
    resume_and_finish(store)


def test_task_object_of_another_schema_version_is_refused(store: Store) -> None:
    """A task.json written by a newer CheckMate (``schema_version`` 2) must not be read as version 1.

    The model's own docstring: "an object of another schema is never silently read". Either exception
    is acceptable as long as it names the object's schema version.
    """
    _, restore = _foreign(store, "schema-version-2")
    assert json.loads(get_object(store.base, f"{TASK}/task.json") or b"")["schema_version"] == 2
    message = _bind_fails_and_changes_nothing(store, (PersistenceDataNotFoundException, TaskEngineException))
    assert "schema" in message
    assert "task.json" in message
    restore()
    assert json.loads(get_object(store.base, f"{TASK}/task.json") or b"")["schema_version"] == 1
    resume_and_finish(store)


def test_task_object_of_another_task_is_refused(store: Store) -> None:
    _, restore = _foreign(store, "other-task")
    message = _bind_fails_and_changes_nothing(store, (PersistenceDataNotFoundException, TaskEngineException))
    assert repr(TASK) in message
    restore()
    resume_and_finish(store)


def test_stored_stage_sequence_that_cannot_happen_is_refused(store: Store) -> None:
    """s3 stored COMPLETE while s2 is RETRY: each object parses, the sequence is impossible."""
    s3, restore = _foreign(store, "impossible-sequence")
    assert stored_doc(store, "s3.stage.json")["status"] == "COMPLETE"
    message = _bind_fails_and_changes_nothing(store, TaskEngineException)
    assert "s3" in message
    restore()
    assert not s3.exists()
    resume_and_finish(store)


# ----------------------------------------------------------------------------- changed definition


def _in_order(message: str, tokens: list[str]) -> bool:
    at = 0
    for token in tokens:
        at = message.find(token, at)
        if at < 0:
            return False
        at += len(token)
    return True


@pytest.mark.parametrize("change", list(hc.CHANGED_DEFINITIONS))
def test_changed_stage_list_is_refused_showing_both_definitions(store: Store, change: str) -> None:
    make_stored_task(store)
    before = snapshot(store.root)
    definition = hc.CHANGED_DEFINITIONS[change]
    engine = hc.changed_engine(store, change)
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
    assert start_counts(store.journal) == {"s1": 1, "s2": 1, "s3": 1}


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
    assert start_counts(store.journal) == {"s1": 1, "s2": 1, "s3": 1}


def test_full_disk_on_the_running_write_of_a_stored_stage(store: Store) -> None:
    make_stored_task(store)
    engine = engine_for(store.io, store.journal, make_stages(3, str(store.journal), fail_first={"s2": 1}))
    with engine:
        before = snapshot(store.root)
        store.io.fail_on = _stage_write("s2", S.RUNNING)
        with pytest.raises(TaskIOException) as exc:
            engine.execute()
        _assert_enospc(exc, store.base / TASK / "s2.stage.json")
        assert start_counts(store.journal) == {"s1": 1, "s2": 1}  # s2 did not run again
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
        assert start_counts(store.journal) == {f"s{i}": 1 for i in range(1, index + 2)}
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
    assert start_counts(store.journal) == {f"s{i}": 2 if i == index + 1 else 1 for i in (1, 2, 3)}


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


@pytest.mark.parametrize("case", list(hc.BAD_CONSTRUCTOR_ARGS))
def test_bad_constructor_arguments_are_refused(store: Store, case: str) -> None:
    kwargs, words = hc.BAD_CONSTRUCTOR_ARGS[case]
    before = snapshot(store.root)
    with pytest.raises(TaskEngineException) as exc:
        hc.engine_with(store.io, **kwargs)
    for word in words:
        assert word in str(exc.value)
    assert store.io.calls == []
    assert snapshot(store.root) == before


@pytest.mark.parametrize("io", list(hc.BAD_IOS.values()), ids=list(hc.BAD_IOS))
def test_io_that_is_not_a_taskio_is_refused(io: Any) -> None:
    with pytest.raises(TaskEngineException, match=r"io must be a TaskIO .*from_base_url"):
        CheckMateEngine(io, TASK, make_stages(2))


def test_non_string_task_id_is_refused(store: Store) -> None:
    with pytest.raises(TaskEngineException, match="task id must be a string, got int"):
        CheckMateEngine(store.io, 42, make_stages(2))  # type: ignore[arg-type]


def test_bad_lease_seconds_is_refused(store: Store) -> None:
    for lease in hc.BAD_LEASE_SECONDS:
        with pytest.raises(TaskEngineException, match="lease_seconds must be positive"):
            TaskIOFile(store.base, lease_seconds=lease)


def test_unknown_timezone_is_refused_at_construction() -> None:
    with pytest.raises(ValidationError) as exc:
        JournalStage(stage_name="s1", state=CounterState(), timezone=hc.BAD_TIMEZONE)
    assert "timezone" in str(exc.value)
    assert f"'{hc.BAD_TIMEZONE}'" in str(exc.value)
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
            assert "s2" not in start_counts(store.journal)
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
    assert modes == {TASK: 0o700, f"{TASK}/{JOURNAL_NAME}": 0o600}  # the task's objects are in its journal


# --------------------------------------------------------------------------- the campaign itself


def test_hostile_campaign_finds_no_violation(tmp_path: Path) -> None:
    """Every case of the catalogue, through the campaign's own checks (exception type, storage unchanged, resume)."""
    cases = catalogue()
    assert len(cases) > 170
    report = hostile.run(cases, tmp_path)
    assert report.violations == [], report.render()
    assert len(report.rows) == len(cases)


def test_hostile_campaign_can_fail(tmp_path: Path) -> None:
    """The campaign's checks can fail: an accepted input, a wrong type, a refusal that changed storage."""

    def litter(st: Store) -> None:
        (st.base / TASK / "litter.json").write_text("{}")
        raise TaskEngineException("refused, but after writing")

    def corrupt(st: Store) -> None:
        put_object(st.base, f"{TASK}/s1.stage.json", b"{")
        raise TaskEngineException("refused, but after corrupting s1")

    cases = [
        HostileCase("self-check", "accepted", lambda st: None, (TaskEngineException,), stored=False),
        HostileCase("self-check", "litters", litter, (TaskEngineException,)),
        HostileCase("self-check", "wrong type", lambda st: {}["x"], (TaskEngineException,), stored=False),
        HostileCase("self-check", "corrupts", corrupt, (TaskEngineException,)),
    ]
    report = hostile.run(cases, tmp_path)
    found = report.violations
    assert len(found) == 5, report.render()
    assert "accepted, no exception" in found[0]
    assert "litter.json" in found[1]
    assert "KeyError" in found[2]
    assert "s1.stage.json" in found[3]
    assert "did not resume" in found[4]
