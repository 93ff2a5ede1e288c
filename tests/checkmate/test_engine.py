"""Execution and resume: what a user relies on from one run to the next.

Resume in a NEW process after a failure (RETRY) and after a crash mid-stage (RUNNING), with stage
executions counted by the test's journal; previous_state_copy; templates never modified; cleanup;
cancel requested from outside; the reference's public names and defaults.
"""

import inspect
import json
import os
import signal
import time
from pathlib import Path

import pytest

import airflow_checkmate.checkmate as cm
from airflow_checkmate.checkmate import (
    BaseStage,
    CheckMateEngine,
    RetryPolicy,
    StageStatus,
    TaskEngineException,
    TaskIO,
    TaskIOFile,
)
from support.processes import run_task_process, start_task_process
from support.stages import CounterState, JournalStage, expected_result, make_stages, read_journal
from support.stored_objects import get_object, objects_under, put_object

S = StageStatus


def starts(journal: Path) -> list[str]:
    """The stage names whose code started, in order, from the journal the stage code writes."""
    return [w[1] for w in read_journal(journal) if w[0] == "start"]


def test_reference_public_names_and_defaults() -> None:
    for name in [
        "BaseStage",
        "BaseStageState",
        "BindException",
        "MissingStateException",
        "PersistenceDataNotFoundException",
        "StageStatus",
        "CheckMateEngine",
        "TaskEngineException",
        "TaskIOFile",
        "RetryPolicy",
        "TaskIO",
        "StageStateHistoryEntry",
        "TaskEngineState",
    ]:
        assert name in cm.__all__ and hasattr(cm, name), name
    params = inspect.signature(CheckMateEngine.__init__).parameters
    assert list(params)[1:] == [
        "io",
        "task_id",
        "stage_templates",
        "retry_policy",
        "max_attempts",
        "bind_lock_timeout",
        "auto_cleanup",
        "no_lock",
        "force_create",
    ]
    defaults = {k: p.default for k, p in params.items() if k != "self"}
    assert defaults["task_id"] is None and defaults["stage_templates"] is None
    assert defaults["retry_policy"] is RetryPolicy.NONE and defaults["max_attempts"] == 1
    assert defaults["bind_lock_timeout"] is None
    assert defaults["auto_cleanup"] is False and defaults["no_lock"] is False and defaults["force_create"] is False
    assert inspect.signature(CheckMateEngine.execute).parameters["strict_recovery"].default is False
    assert inspect.signature(CheckMateEngine.unbind).parameters["clean"].default is False
    dump = inspect.signature(CheckMateEngine.dump_stages).parameters
    assert dump["source"].default == "memory" and dump["basenames_only"].default is False
    assert dump["source_in_heading"].default is False
    assert cm.STAGE_NAME_MAX_LENGTH == 150
    managed = inspect.signature(cm.CheckMate.__init__).parameters
    positional = [k for k, p in managed.items() if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == [
        "checkmate_factory",
        "stage_templates",
        "task_id",
        "description",
        "no_lock",
        "retry_policy",
        "max_attempts",
        "bind_lock_timeout",
        "auto_cleanup",
        "force_create",
        "queue",
        "tags",
    ]
    managed_defaults = {k: managed[k].default for k in positional[1:]}
    assert managed_defaults == {
        "stage_templates": None,
        "task_id": None,
        "description": None,
        "no_lock": False,
        "retry_policy": None,
        "max_attempts": None,
        "bind_lock_timeout": None,
        "auto_cleanup": None,
        "force_create": False,
        "queue": cm.DEFAULT_QUEUE_NAME,
        "tags": None,
    }
    assert issubclass(cm.CheckMate, CheckMateEngine) and "CheckMate" in cm.__all__
    assert {s.value for s in StageStatus} == {"UNBOUND", "CREATED", "RUNNING", "RETRY", "ERROR", "COMPLETE", "CANCELED"}


def test_resume_in_new_process_after_failure(base: Path, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    args = (str(base), "etl", "4", "--journal", str(journal), "--fail-first", '{"s3": 1}', "--max-attempts", "3")

    first = run_task_process(*args)
    assert first.returncode == 3, first.stdout + first.stderr
    assert first.stdout.startswith("RETRY")
    assert starts(journal) == ["s1", "s2", "s3"]

    second = run_task_process(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert starts(journal) == ["s1", "s2", "s3", "s3", "s4"]  # s1 and s2 never ran again
    assert json.loads(second.stdout.split(" ", 1)[1]) == expected_result(4)


def test_resume_in_new_process_after_crash_mid_stage(base: Path, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    args = (str(base), "crash", "3", "--journal", str(journal), "--max-attempts", "3")
    proc = start_task_process(*args, "--sleep", "30")
    deadline = time.monotonic() + 30
    while starts(journal) != ["s1"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert starts(journal) == ["s1"]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = json.loads(get_object(base, "crash/s1.stage.json") or b"")
    assert stored["status"] == "RUNNING" and stored["attempts"] == 1

    # strict_recovery=False (the default) refuses to guess: the stage is not run again.
    io = TaskIOFile(base)
    engine = CheckMateEngine(io, "crash", make_stages(3, str(journal)), RetryPolicy.RETRY, 3)
    with engine, pytest.raises(TaskEngineException, match=r"found RUNNING.*strict_recovery=True"):
        engine.execute()
    assert starts(journal) == ["s1"]

    # The runner uses strict_recovery=True: the interrupted stage runs again as attempt 2, the rest follow.
    done = run_task_process(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert starts(journal) == ["s1", "s1", "s2", "s3"]
    with engine:
        assert engine.status is S.COMPLETE and engine.task_result == expected_result(3)
        assert engine.stages[0].state.attempts == 2
        assert [h.status for h in engine.stages[0].state.history] == [S.RUNNING, S.RUNNING, S.COMPLETE]


def test_execute_passes_copy_of_previous_state_and_first_stage_its_own(fast_io: TaskIO) -> None:
    seen: list[tuple[str, bool, list[int]]] = []

    class Probe(BaseStage[CounterState]):
        def execute_stage(self, previous_state_copy: CounterState) -> None:
            before = list(previous_state_copy.values)
            seen.append((self.stage_name, previous_state_copy is self.state, before))
            self.state.values = [*before, len(seen)]
            if previous_state_copy is not self.state:
                previous_state_copy.values.append(-1)  # a copy: must not leak into the previous stage

    engine = CheckMateEngine(fast_io, "copies", [Probe(stage_name=n, state=CounterState()) for n in ("a", "b", "c")])
    with engine:
        engine.execute()
        assert seen == [("a", True, []), ("b", False, [1]), ("c", False, [1, 2])]
        assert [s.state.values for s in engine.stages] == [[1], [1, 2], [1, 2, 3]]
        assert engine.check_sync()


def test_templates_are_never_modified(fast_io: TaskIO) -> None:
    templates = make_stages(3)
    before = [t.model_dump() for t in templates]
    engine = CheckMateEngine(fast_io, "pristine", templates)
    with engine:
        engine.execute()
        assert all(s.state.status is S.COMPLETE for s in engine.stages)
        assert all(s is not t for s, t in zip(engine.stages, templates, strict=True))
    assert [t.model_dump() for t in templates] == before
    assert all(t.volatile_engine_ref is None for t in templates)
    assert [s.state.status for s in engine.stages] == [S.UNBOUND] * 3  # unbind restores pristine copies


def test_completed_task_is_a_noop_and_result_survives_rebind(fast_io: TaskIO, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    engine = CheckMateEngine(fast_io, "done", make_stages(3, str(journal)))
    with engine:
        engine.execute()
    again = CheckMateEngine(fast_io, "done", make_stages(3, str(journal)))
    with again:
        assert again.status is S.COMPLETE
        again.execute()
        assert again.task_result == expected_result(3)
        assert again.cumulative_attempts == 3
    assert starts(journal) == ["s1", "s2", "s3"]


def test_state_update_hook_runs_after_every_persisted_update(fast_io: TaskIO) -> None:
    statuses: list[list[str]] = []

    class Hooked(CheckMateEngine):  # type: ignore[type-arg]
        def state_update_hook(self) -> None:
            stored = [json.loads(fast_io.read(s.obj_name))["status"] for s in self.stages if fast_io.exists(s.obj_name)]
            statuses.append(stored)

    with Hooked(fast_io, "hooked", make_stages(2)) as engine:
        engine.execute()
    # once per stage update, after the checkpoint that holds it: s1's COMPLETE goes out with s2's RUNNING
    assert statuses == [["RUNNING"], ["COMPLETE", "RUNNING"], ["COMPLETE", "RUNNING"], ["COMPLETE", "COMPLETE"]]


def test_unbind_clean_and_auto_cleanup_remove_everything(base: Path) -> None:
    io = TaskIOFile(base, durable=False)
    with CheckMateEngine(io, "kept", make_stages(2)) as engine:
        engine.execute()
    assert io.list("kept/") == ["kept/s1.stage.json", "kept/s2.stage.json", "kept/task.json"]

    engine = CheckMateEngine(io, "kept", make_stages(2))
    engine.bind()
    engine.unbind(clean=True)
    assert io.list("kept/") == [] and not (base / "kept").exists()

    with CheckMateEngine(io, "auto", make_stages(2), auto_cleanup=True) as engine:
        engine.execute()
    assert io.list("auto/") == [] and not (base / "auto").exists()


def test_clean_interrupted_midway_is_finished_by_next_bind(base: Path, tmp_path: Path) -> None:
    io = TaskIOFile(base, durable=False)
    with CheckMateEngine(io, "half", make_stages(3)) as engine:
        engine.execute()
    # What a process killed during unbind(clean=True) leaves: task.json marked cleaning, one stage gone.
    record = json.loads(get_object(base, "half/task.json") or b"")
    record["cleaning"] = True
    put_object(base, "half/task.json", json.dumps(record).encode())
    put_object(base, "half/s1.stage.json", None)

    journal = tmp_path / "journal"
    with CheckMateEngine(io, "half", make_stages(3, str(journal))) as engine:
        assert engine.status is S.CREATED
        engine.execute()
    assert starts(journal) == ["s1", "s2", "s3"]  # a fresh task, not a mix of old and new


def test_cancel_requested_from_outside_cancels_the_running_stage(base: Path, tmp_path: Path) -> None:
    """A request made while s1 runs: s1 returns, yet it ends CANCELED (its result discarded), and so do the rest."""
    journal = tmp_path / "journal"
    proc = start_task_process(str(base), "stopme", "4", "--journal", str(journal), "--sleep", "0.6")
    deadline = time.monotonic() + 30
    while starts(journal) != ["s1"] and time.monotonic() < deadline:
        time.sleep(0.02)
    CheckMateEngine.request_cancel(TaskIOFile(base), "stopme", "operator asked")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 4, out + err
    assert "CANCELED" in out and "operator asked" in out
    words = read_journal(journal)
    assert [w[:2] for w in words] == [["start", "s1"], ["end", "s1"], ["cancel", "s1"]]  # cleanup ran once
    stored = {n: json.loads(get_object(base, f"stopme/{n}.stage.json") or b"") for n in ("s1", "s2", "s4")}
    assert {n: state["status"] for n, state in stored.items()} == {"s1": "CANCELED", "s2": "CANCELED", "s4": "CANCELED"}
    assert stored["s1"]["result"] is None and "result was discarded" in stored["s1"]["history"][-1]["message"]
    assert not {"stopme/cancel.json", "stopme/task.lock"} & set(objects_under(base, "stopme/"))


def test_running_stage_can_poll_cancel_requested_and_stop_early(fast_io: TaskIO) -> None:
    calls: list[str] = []

    class Long(BaseStage[CounterState]):
        def execute_stage(self, previous_state_copy: CounterState) -> None:
            CheckMateEngine.request_cancel(fast_io, "poll", "stop now")
            for _ in range(200):
                if self.cancel_requested:
                    raise InterruptedError("stopping: cancel requested")
                time.sleep(0.01)
            calls.append("finished")

        def cancel(self) -> None:
            calls.append(f"cancel {self.stage_name}")

    engine = CheckMateEngine(fast_io, "poll", [Long(stage_name=n, state=CounterState()) for n in ("a", "b")])
    with engine:
        with pytest.raises(TaskEngineException, match="canceled while"):
            engine.execute()
        assert [s.state.status for s in engine.stages] == [S.CANCELED, S.CANCELED]
        assert engine.check_sync()
    assert calls == ["cancel a"]


def test_stage_returning_early_on_cancel_ends_canceled_and_its_result_is_discarded(fast_io: TaskIO) -> None:
    """Stage code that sees cancel_requested and returns (partial work in its result) is CANCELED, never COMPLETE."""
    calls: list[str] = []

    class Partial(BaseStage[CounterState]):
        def execute_stage(self, previous_state_copy: CounterState) -> None:
            calls.append(f"run {self.stage_name}")
            if calls == ["run a"]:
                CheckMateEngine.request_cancel(fast_io, "early", "stop now")
            self.state.result = [1]  # partial work
            if self.cancel_requested:
                return
            self.state.result = [1, 2, 3]

        def cancel(self) -> None:
            calls.append(f"cancel {self.stage_name}")

    def stages() -> list[Partial]:
        return [Partial(stage_name=n, state=CounterState()) for n in ("a", "b")]

    with CheckMateEngine(fast_io, "early", stages()) as engine:
        with pytest.raises(TaskEngineException, match=r"canceled while .* ran .*stop now.*result was discarded"):
            engine.execute()
        assert engine.status is S.CANCELED and engine.task_result is None
    assert calls == ["run a", "cancel a"]
    with CheckMateEngine(fast_io, "early", stages(), no_lock=True) as viewer:
        assert [s.state.status for s in viewer.stages] == [S.CANCELED, S.CANCELED]
        assert viewer.stages[0].state.result is None
        viewer.reset()
        viewer.execute()  # a reset runs the canceled stage again, in full
        assert viewer.task_result == [1, 2, 3]
    assert calls == ["run a", "cancel a", "run a", "run b"]


def test_request_cancel_of_unknown_task_is_refused(fast_io: TaskIO) -> None:
    with pytest.raises(TaskEngineException, match="no stored task"):
        CheckMateEngine.request_cancel(fast_io, "nope", "why")
    assert fast_io.list("") == []


def test_dump_stages_memory_equals_persistence_and_lists_objects(fast_io: TaskIO, tmp_path: Path) -> None:
    stages = make_stages(3, str(tmp_path / "journal"), fail_first={"s2": 1})
    engine = CheckMateEngine(fast_io, "dump", stages, RetryPolicy.RETRY, 2)
    with engine:
        with pytest.raises(TaskEngineException):
            engine.execute()
        memory = engine.dump_stages(color=None, basenames_only=True)
        assert memory == engine.dump_stages("persistence", color=None, basenames_only=True)
        assert "## Stage 2/3: s2 — RETRY" in memory and "planned failure" in memory
        assert "- s1.stage.json" in memory and "- task.json" in memory and "- task.lock" in memory
        assert "(persistence)" in engine.dump_stages("persistence", source_in_heading=True)
        with pytest.raises(TaskEngineException, match="source must be"):
            engine.dump_stages("disk")  # type: ignore[arg-type]


def test_timezone_renders_history_timestamps(fast_io: TaskIO) -> None:
    stage = JournalStage(stage_name="tz", state=CounterState(), timezone="Asia/Kolkata")
    with CheckMateEngine(fast_io, "tz", [stage]) as engine:
        engine.execute()
        entry = engine.stages[0].state.history[-1]
        assert entry.begin_ts.utcoffset() is not None and entry.begin_ts.utcoffset().total_seconds() == 19800
    assert "+05:30" in fast_io.read("tz/tz.stage.json")


def test_lock_is_released_and_files_private(base: Path) -> None:
    io = TaskIOFile(base)
    with CheckMateEngine(io, "priv", make_stages(2)) as engine:
        assert engine.has_lockfile and engine.lease is not None and engine.lease.pid == os.getpid()
        engine.execute()
    assert not (base / "priv" / "task.lock").exists()
    for path in (base / "priv").iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_interrupt_from_a_signal_handler_stops_stage_code_and_leaves_task_resumable(
    fast_io: TaskIO, tmp_path: Path
) -> None:
    """What Airflow's on_kill does: a SIGTERM handler interrupts the sleeping stage at once."""
    journal = tmp_path / "journal"
    engine = CheckMateEngine(fast_io, "intr", make_stages(3, str(journal), sleep_seconds=30), RetryPolicy.RETRY, 3)
    previous = signal.signal(signal.SIGALRM, lambda *_: engine.interrupt("marked failed in the UI"))
    try:
        with engine:
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            started = time.monotonic()
            with pytest.raises(cm.StageInterrupted, match="marked failed"):
                engine.execute()
            assert time.monotonic() - started < 5
            assert engine.stages[0].state.status is S.RETRY
            assert "StageInterrupted: marked failed in the UI" in engine.stages[0].state.history[-1].message
            assert engine.check_sync()
        assert not engine.has_lockfile
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert [w[:2] for w in read_journal(journal)] == [["start", "s1"], ["rollback", "s1"]]

    resumed = CheckMateEngine(fast_io, "intr", make_stages(3, str(journal)), RetryPolicy.RETRY, 3)
    with resumed:
        resumed.execute()
        assert resumed.task_result == expected_result(3)
    assert starts(journal) == ["s1", "s1", "s2", "s3"]
