"""Random use of the engine against a small independent model of what every stage must be.

A hypothesis RuleBasedStateMachine binds, executes (with stages planned to fail, or to die like a killed
process, on their next run), cancels, requests a cancel from outside, resets (the task, or from a named
stage), unbinds (keeping or cleaning the stored task) and rebinds with the same or a NEW engine object
(as a new process would). A planned crash ends the stage with a BaseException after copying its stored
object (RUNNING, attempt counted); the test unbinds, puts that object back, and a new engine binds: what
a killed process leaves behind. The model knows, per stage, the status, the attempts, whether a stored
object exists, and how many times the stage code, its rollback and its cancel() must have run. Each
example has its own temp folder, ``durable=False`` storage, 3 or 4 stages and policy NONE or RETRY (2-3).

Proves, after every step:

- the engine's statuses and attempts equal the model's, and so do the stored objects (read from disk);
- when bound, ``check_sync()`` is True and ``status`` follows DESIGN.md's order; unbound, the engine
  shows pristine templates and the caller's templates are never modified;
- the stored stage sequence is always a valid task shape (DESIGN.md), a cancel request exists exactly
  when one is pending, and the lock exists exactly while an engine is bound;
- stage code, rollbacks and cancel() ran exactly as many times as the model says, the stored object
  said RUNNING with the attempt already counted whenever stage code ran, and a COMPLETE stage's code
  never runs again unless a reset(stage_name) (or a clean) covered it;

and at each step: execute returns, raises the stage's own exception (ERROR) or TaskEngineException
(RETRY, chained from the stage's exception; refused; canceled) as the model says; a refused or no-op
call (execute, cancel, reset, a reset(stage_name) that would leave an invalid task, a second engine's
bind while one holds the task, any call on an unbound engine) changes nothing stored.
"""

import json
import re
import shutil
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from airflow_checkmate.checkmate import (
    BaseStage,
    BaseStageState,
    BindException,
    CheckMateEngine,
    RetryPolicy,
    StageStatus,
    TaskEngineException,
    TaskIO,
)
from support.stored_objects import get_object, objects_under, put_object

TASK_ID = "task-under-test"
LETTER = {"UNBOUND": "U", "CREATED": "N", "RUNNING": "R", "RETRY": "Y", "ERROR": "E", "COMPLETE": "C", "CANCELED": "X"}
# DESIGN.md: all UNBOUND; COMPLETE* [X] CREATED* with X in CREATED/RUNNING/RETRY/ERROR; COMPLETE* CANCELED+
VALID_SEQUENCE = re.compile(r"U+|C*[NRYE]?N*|C*X+N*")  # see test_state_machine.VALID_SEQUENCE


def valid_sequence(statuses: list[str]) -> bool:
    return VALID_SEQUENCE.fullmatch("".join(LETTER[s] for s in statuses)) is not None


def overall(statuses: list[str]) -> str:
    present = set(statuses)
    if present == {"COMPLETE"}:
        return "COMPLETE"
    for status in ("RUNNING", "RETRY", "ERROR", "CANCELED", "UNBOUND"):
        if status in present:
            return status
    return "CREATED"


class PlannedFailure(Exception):
    """What a stage planned to fail raises."""


class SimulatedCrash(BaseException):
    """Ends a stage like a killed process; the test then puts back the RUNNING object it left."""


@dataclass
class Run:
    """Everything the test owns for one example: the plan, and what the stage code did."""

    base: Path
    plan: dict[str, str] = field(default_factory=dict)
    runs: Counter[str] = field(default_factory=Counter)
    rollbacks: Counter[str] = field(default_factory=Counter)
    cancels: Counter[str] = field(default_factory=Counter)
    seen: list[tuple[str, int, str, int]] = field(default_factory=list)
    raised: list[BaseException] = field(default_factory=list)
    crash_snapshot: dict[str, bytes] = field(default_factory=dict)
    crashing: str = ""


RUNS: dict[str, Run] = {}


class PlanState(BaseStageState[int]):
    value: int = 0


class PlanStage(BaseStage[PlanState]):
    """Does the action planned for its next run ("fail", "crash", else succeed); counts everything."""

    run_key: str = ""

    def execute_stage(self, previous_state_copy: PlanState) -> None:
        run = RUNS[self.run_key]
        name = self.stage_name
        run.runs[name] += 1
        obj = f"{TASK_ID}/{name}.stage.json"
        raw = get_object(run.base, obj) or b""
        stored = json.loads(raw)
        run.seen.append((name, self.state.attempts, stored["status"], stored["attempts"]))
        action = run.plan.pop(name, "ok")
        if action == "crash":
            run.crash_snapshot[name] = raw
            run.crashing = name
            raise SimulatedCrash(name)
        if action == "fail":
            exc = PlannedFailure(f"{name} planned to fail on attempt {self.state.attempts}")
            run.raised.append(exc)
            raise exc
        self.state.value = previous_state_copy.value + 1
        self.state.result = self.state.value

    def rollback_stage(self) -> None:
        run = RUNS[self.run_key]
        if run.crashing == self.stage_name:  # a killed process runs no rollback; not counted
            run.crashing = ""
            return
        run.rollbacks[self.stage_name] += 1

    def cancel(self) -> None:
        RUNS[self.run_key].cancels[self.stage_name] += 1


#: indexes of the stages that fail on their next run, drawn at each execute
FAILING = st.sets(st.integers(0, 3), max_size=3)
POLICIES = [(RetryPolicy.NONE, 1), (RetryPolicy.RETRY, 2), (RetryPolicy.RETRY, 3)]


class EngineMachine(RuleBasedStateMachine):
    """Drives real engines on file storage and a model side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.key = ""
        self.tmp = ""
        self.names: list[str] = []
        self.engine: CheckMateEngine[PlanStage, int] | None = None

    # ------------------------------------------------------------------------------------ setup

    @initialize(count=st.integers(3, 4), policy=st.sampled_from(POLICIES))
    def setup(self, count: int, policy: tuple[RetryPolicy, int]) -> None:
        self.tmp = tempfile.mkdtemp(prefix="checkmate-stateful-")
        self.key = uuid.uuid4().hex
        self.probe = RUNS[self.key] = Run(base=Path(self.tmp))
        self.io = TaskIO.from_base_url(self.tmp, durable=False)
        self.names = [f"s{i}" for i in range(1, count + 1)]
        self.policy, self.max_attempts = policy
        self.templates = [PlanStage(stage_name=n, state=PlanState(), run_key=self.key) for n in self.names]
        # the model
        self.status = dict.fromkeys(self.names, "CREATED")
        self.attempts = dict.fromkeys(self.names, 0)
        self.has_obj = dict.fromkeys(self.names, False)
        self.runs: Counter[str] = Counter()
        self.rollbacks: Counter[str] = Counter()
        self.cancels: Counter[str] = Counter()
        self.plan: dict[str, str] = {}
        self.completed_runs: dict[str, int] = {}  # COMPLETE stage -> its run count when it completed
        self.pending_cancel = False
        self.task_stored = False
        self.bound = False
        self.next_try = "none"
        self.bind_new_engine()

    def teardown(self) -> None:
        if self.engine is not None and self.engine.bound:
            self.engine.unbind()
        RUNS.pop(self.key, None)
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def new_engine(self) -> CheckMateEngine[PlanStage, int]:
        return CheckMateEngine(
            self.io, TASK_ID, self.templates, retry_policy=self.policy, max_attempts=self.max_attempts
        )

    # ------------------------------------------------------------------------------------ model helpers

    def attempts_left(self, attempts: int) -> bool:
        return self.policy is RetryPolicy.RETRY and attempts < self.max_attempts

    def statuses(self) -> list[str]:
        return [self.status[n] for n in self.names]

    def values(self) -> list[tuple[int, int | None]]:
        """(value, result) per stage: stage i adds 1 to the state it is given (stage 1: its own state), so a
        COMPLETE stage i holds i; any other stage holds its template state (reset(stage_name) restores it)."""
        return [(i, i) if self.status[n] == "COMPLETE" else (0, None) for i, n in enumerate(self.names, start=1)]

    def model_view(self) -> tuple[list[str], list[int], bool]:
        return self.statuses(), [self.attempts[n] for n in self.names], self.pending_cancel

    def first_incomplete(self) -> int:
        return next((i for i, n in enumerate(self.names) if self.status[n] != "COMPLETE"), len(self.names))

    def model_cancel_from(self, index: int) -> None:
        self.cancels[self.names[index]] += 1
        for name in self.names[index:]:
            self.status[name] = "CANCELED"
            self.has_obj[name] = True
        self.pending_cancel = False

    def model_execute(self, strict: bool) -> str:
        """What execute must do; returns the outcome the caller must see."""
        overall_status = overall(self.statuses())
        if overall_status == "COMPLETE":
            return "noop"
        if overall_status in ("ERROR", "CANCELED"):
            return "refused"
        for index in range(self.first_incomplete(), len(self.names)):
            if self.pending_cancel:
                self.model_cancel_from(index)
                return "canceled"
            name = self.names[index]
            if self.status[name] == "RUNNING":
                if not strict:
                    return "refused"
                if not self.attempts_left(self.attempts[name]):
                    self.status[name] = "ERROR"
                    return "refused"
                event("a stage found RUNNING runs again")
            self.attempts[name] += 1
            self.runs[name] += 1
            self.status[name] = "RUNNING"
            self.has_obj[name] = True
            action = self.plan.pop(name, "ok")
            if action == "crash":
                return "crash"
            if action == "fail":
                self.rollbacks[name] += 1
                if self.attempts_left(self.attempts[name]):
                    self.status[name] = "RETRY"
                    return "retry"
                self.status[name] = "ERROR"
                return "error"
            self.status[name] = "COMPLETE"
            self.completed_runs[name] = self.runs[name]
        return "ok"

    def stored(self) -> dict[str, bytes]:
        """The task's stored objects (the lock excluded: its heartbeat changes on its own)."""
        found = objects_under(Path(self.tmp), f"{TASK_ID}/")
        return {n.partition("/")[2]: b for n, b in found.items() if not n.endswith("/task.lock")}

    # ------------------------------------------------------------------------------------ rules

    @rule(index=st.integers(0, 3), next_try=st.sampled_from(["recovering", "recovering", "plain", "none"]))
    def plan_crash_on_next_run(self, index: int, next_try: str) -> None:
        """The stage's next run dies; ``next_try``: what the new process that binds it then does."""
        name = self.names[index % len(self.names)]
        self.plan[name] = self.probe.plan[name] = "crash"
        self.next_try = next_try

    @precondition(lambda self: self.engine is not None and not self.bound)
    @rule()
    def rebind_same_engine(self) -> None:
        assert self.engine is not None
        self.engine.bind()
        self.bound = self.task_stored = True

    @precondition(lambda self: not self.bound)
    @rule()
    def bind_new_engine(self) -> None:
        self.engine = self.new_engine()
        self.engine.bind()
        self.bound = self.task_stored = True

    @precondition(lambda self: self.bound)
    @rule()
    def bind_while_held(self) -> None:
        before = self.stored()
        contender = self.new_engine()
        with pytest.raises(BindException):
            contender.bind()
        assert self.stored() == before
        assert [s.state.status for s in contender.stages] == [StageStatus.UNBOUND] * len(self.names)

    @precondition(lambda self: self.bound)
    @rule(strict=st.booleans(), failing=FAILING)
    def execute(self, strict: bool, failing: set[int]) -> None:
        self.do_execute(strict, failing)

    @precondition(lambda self: self.bound)
    @rule(failing=FAILING)
    def execute_again(self, failing: set[int]) -> None:  # execute is what the engine is for: drawn more often
        self.do_execute(False, failing)

    @precondition(lambda self: self.bound)
    @rule(failing=FAILING)
    def execute_recovering(self, failing: set[int]) -> None:
        self.do_execute(True, failing)

    def do_execute(self, strict: bool, failing: set[int]) -> None:
        """Plan which stages fail on their next run (a planned crash stays planned), then execute."""
        assert self.engine is not None
        for index, name in enumerate(self.names):
            if index in failing:
                self.plan[name] = self.probe.plan[name] = "fail"
            elif self.plan.get(name) == "fail":
                del self.plan[name], self.probe.plan[name]
        raised_before = len(self.probe.raised)
        model_before, stored_before = self.model_view(), self.stored()
        expected = self.model_execute(strict)
        event(f"execute -> {expected}")
        error: BaseException | None = None
        try:
            self.engine.execute(strict_recovery=strict)
        except (SimulatedCrash, PlannedFailure, TaskEngineException) as exc:
            error = exc
        got = "returned" if error is None else type(error).__name__
        want = {
            "ok": "returned",
            "noop": "returned",
            "crash": "SimulatedCrash",
            "error": "PlannedFailure",  # ERROR re-raises the stage's own exception
        }.get(expected, "TaskEngineException")  # retry, refused, canceled
        assert got == want, f"model expected {expected}, execute {got}: {error!r}"
        if self.model_view() == model_before:  # a no-op or a refusal writes nothing
            assert self.stored() == stored_before
        new_raised = self.probe.raised[raised_before:]
        if expected == "error":
            assert new_raised == [error]
        elif expected == "retry":  # RETRY: TaskEngineException chained from the stage's exception
            assert error is not None and new_raised == [error.__cause__]
        else:
            assert new_raised == []
        if isinstance(error, SimulatedCrash):
            # the process "dies": no more writes from it, and its stage is left RUNNING in storage ...
            name = str(error)
            self.engine.unbind()
            put_object(Path(self.tmp), f"{TASK_ID}/{name}.stage.json", self.probe.crash_snapshot.pop(name))
            # ... and the next try, a new process, binds it again (and may execute at once)
            self.engine = self.new_engine()
            self.engine.bind()
            if self.next_try != "none":
                self.do_execute(self.next_try == "recovering", set())

    @precondition(lambda self: self.bound)
    @rule()
    def cancel(self) -> None:
        assert self.engine is not None
        if overall(self.statuses()) in ("COMPLETE", "ERROR", "CANCELED"):
            before = self.stored()
            with pytest.raises(TaskEngineException, match="cannot cancel"):
                self.engine.cancel()
            assert self.stored() == before
            return
        self.engine.cancel()
        self.model_cancel_from(self.first_incomplete())

    @rule()
    def request_cancel(self) -> None:
        if not self.task_stored:
            with pytest.raises(TaskEngineException, match="nothing to cancel"):
                CheckMateEngine.request_cancel(self.io, TASK_ID, "asked by the test")
            return
        CheckMateEngine.request_cancel(self.io, TASK_ID, "asked by the test")
        self.pending_cancel = True

    @precondition(lambda self: self.bound)
    @rule()
    def reset(self) -> None:
        assert self.engine is not None
        index = next((i for i, n in enumerate(self.names) if self.status[n] in ("ERROR", "CANCELED")), None)
        if index is None:
            before = self.stored()
            with pytest.raises(TaskEngineException, match="no ERROR or CANCELED stage"):
                self.engine.reset()
            assert self.stored() == before
            return
        self.engine.reset()
        first = self.names[index]
        self.status[first], self.attempts[first] = "RETRY", 0
        for name in self.names[index + 1 :]:
            self.status[name], self.attempts[name] = "CREATED", 0
        self.pending_cancel = False

    @precondition(lambda self: self.bound)
    @rule(index=st.integers(0, 3))
    def reset_from_stage(self, index: int) -> None:
        assert self.engine is not None
        index %= len(self.names)
        if index > self.first_incomplete():
            # "restart from here" behind a stage that is not COMPLETE: the task cannot restart there (and
            # behind a CANCELED stage it would store an invalid task). A clear error; nothing changes.
            before = self.stored()
            with pytest.raises(TaskEngineException, match="not COMPLETE"):
                self.engine.reset(self.names[index])
            assert self.stored() == before
            return
        self.engine.reset(self.names[index])
        for name in self.names[index:]:
            self.status[name], self.attempts[name] = "CREATED", 0
            self.completed_runs.pop(name, None)
        self.pending_cancel = False

    @precondition(lambda self: self.bound)
    @rule(clean=st.booleans())
    def unbind(self, clean: bool) -> None:
        assert self.engine is not None
        self.engine.unbind(clean=clean)
        self.bound = False
        if clean:  # the task is gone: the same id is a new task from now on
            self.task_stored = self.pending_cancel = False
            for name in self.names:
                self.status[name], self.attempts[name], self.has_obj[name] = "CREATED", 0, False
            self.completed_runs.clear()

    @precondition(lambda self: self.engine is not None and not self.bound)
    @rule(call=st.sampled_from(["execute", "cancel", "reset"]))
    def use_unbound(self, call: str) -> None:
        assert self.engine is not None
        before = self.stored()
        with pytest.raises(TaskEngineException, match="not bound"):
            getattr(self.engine, call)()
        assert self.stored() == before

    # ------------------------------------------------------------------------------------ invariants

    @invariant()
    def engine_matches_model(self) -> None:
        if not self.names:
            return
        if self.bound:
            assert self.engine is not None
            assert [s.state.status.value for s in self.engine.stages] == self.statuses()
            assert [s.state.attempts for s in self.engine.stages] == [self.attempts[n] for n in self.names]
            assert self.engine.status.value == overall(self.statuses())
            assert self.engine.check_sync()
            assert [(s.state.value, s.state.result) for s in self.engine.stages] == self.values()
        elif self.engine is not None:
            assert [s.state.status.value for s in self.engine.stages] == ["UNBOUND"] * len(self.names)
        for template in self.templates:
            assert template.state == PlanState() and template.volatile_engine_ref is None

    @invariant()
    def storage_matches_model(self) -> None:
        if not self.names:
            return
        stored = objects_under(Path(self.tmp), f"{TASK_ID}/")
        stored_statuses, stored_attempts, stored_values = [], [], []
        for name in self.names:
            raw = stored.get(f"{TASK_ID}/{name}.stage.json")
            assert (raw is not None) == self.has_obj[name], f"{name}: object exists {raw is not None}"
            data = json.loads(raw) if raw is not None else {"status": "CREATED", "attempts": 0}
            stored_statuses.append(data["status"])
            stored_attempts.append(data["attempts"])
            stored_values.append((data.get("value", 0), data.get("result")))
        assert stored_values == self.values()
        assert valid_sequence(stored_statuses), stored_statuses
        assert stored_statuses == self.statuses()
        assert stored_attempts == [self.attempts[n] for n in self.names]
        assert (f"{TASK_ID}/task.json" in stored) == self.task_stored
        assert (f"{TASK_ID}/cancel.json" in stored) == self.pending_cancel
        assert (f"{TASK_ID}/task.lock" in stored) == self.bound
        if not self.task_stored:
            assert self.stored() == {}

    @invariant()
    def stage_code_ran_as_the_model_says(self) -> None:
        if not self.names:
            return
        assert self.probe.runs == self.runs
        assert self.probe.rollbacks == self.rollbacks
        assert self.probe.cancels == self.cancels
        # the attempt was stored, as RUNNING, before the stage code ran
        for name, attempts, stored_status, stored_attempts in self.probe.seen:
            assert (stored_status, stored_attempts) == ("RUNNING", attempts), name
        for name, count in self.completed_runs.items():
            assert self.probe.runs[name] == count, f"COMPLETE stage {name} ran again"


EngineMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngineStateMachine = EngineMachine.TestCase
