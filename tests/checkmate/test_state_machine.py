"""The stage state machine of DESIGN.md ("Engine contract"), as data and as the engine really walks it.

Proves:

- ``check_transition`` accepts exactly the transitions of DESIGN.md's table (written out below,
  independently of ``status.py``) and raises ``TaskEngineException`` for every other one of the 49 pairs
  of ``StageStatus`` values; the reset transitions pass only with ``reset=True``.
- ``check_sequence`` accepts exactly the valid task shapes (checked against an independent regular
  expression over every sequence of up to four stages) and ``overall_status`` follows DESIGN.md's order.
- Real engines on file storage make exactly these transitions, recorded in each stage's history:
  CREATED->RUNNING->COMPLETE; RUNNING->RETRY (execute raises TaskEngineException chained from the
  stage's exception); RUNNING->ERROR (the stage's own exception re-raised: policy NONE, attempts
  exhausted, rollback failed); RETRY->RUNNING; a stage found RUNNING at execute (strict_recovery False
  raises without running it, True runs it again as a new attempt or sends it to ERROR when none is
  left); cancel from CREATED/RETRY/RUNNING, and a refused cancel of an ended task; reset() and
  reset(stage_name) (refused behind a stage that is not COMPLETE); execute on a COMPLETE task is a
  no-op and on an ERROR/CANCELED task raises naming the stage and reset. Refusals change nothing stored.
- A task whose stored objects form an invalid sequence fails at bind and nothing stored changes.

Stage runs, rollbacks and cancel() calls are counted by the stage code into a probe this test owns.
"""

import itertools
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import Field

from airflow_checkmate.checkmate import (
    BaseStage,
    BaseStageState,
    CheckMateEngine,
    PersistenceDataNotFoundException,
    RetryPolicy,
    StageStateHistoryEntry,
    StageStatus,
    TaskEngineException,
    TaskIO,
)
from airflow_checkmate.checkmate.status import check_sequence, check_transition, overall_status
from support.stored_objects import get_object, objects_under, put_object

S = StageStatus
ALL = list(StageStatus)

# ----------------------------------------------------------------------------------------------------
# The expected state machine, copied from DESIGN.md, not derived from status.py.
#
#   UNBOUND -> CREATED                      bind, nothing stored yet
#   UNBOUND -> (stored status)              bind, state loaded from storage
#   CREATED | RETRY -> RUNNING              execute starts the stage
#   RUNNING -> COMPLETE                     execute_stage returned
#   RUNNING -> RETRY                        it raised, policy RETRY and attempts < max_attempts
#   RUNNING -> ERROR                        it raised and no attempt is left (or policy NONE, or rollback failed)
#   CREATED | RUNNING | RETRY -> CANCELED   cancel()
#   RUNNING -> RUNNING                      recovery of a stage found RUNNING at execute
#   ERROR | CANCELED | COMPLETE -> RETRY/CREATED   only by an explicit reset
#
# "UNBOUND -> (stored status)" is the load at bind, not a status change: it is checked through the
# engine (test_bind_loads_every_stored_status), while check_transition only admits UNBOUND -> CREATED.
# ----------------------------------------------------------------------------------------------------
DESIGN_TRANSITIONS: frozenset[tuple[S, S]] = frozenset(
    {
        (S.UNBOUND, S.CREATED),
        (S.CREATED, S.RUNNING),
        (S.RETRY, S.RUNNING),
        (S.RUNNING, S.COMPLETE),
        (S.RUNNING, S.RETRY),
        (S.RUNNING, S.ERROR),
        (S.CREATED, S.CANCELED),
        (S.RUNNING, S.CANCELED),
        (S.RETRY, S.CANCELED),
        (S.RUNNING, S.RUNNING),
    }
)
# The table's reset row, plus what DESIGN.md's reset paragraph requires on top of it: "with a name,
# that stage and every stage after it go back to CREATED" and "history is kept and records the reset"
# also move a RUNNING (found after a crash), RETRY or already-reset CREATED stage back to CREATED.
# Nothing in DESIGN.md lets a reset make a RUNNING, RETRY or CREATED stage RETRY.
DESIGN_RESET_TRANSITIONS: frozenset[tuple[S, S]] = frozenset(
    {(old, new) for old in (S.ERROR, S.CANCELED, S.COMPLETE) for new in (S.RETRY, S.CREATED)}
    | {(old, S.CREATED) for old in (S.RUNNING, S.RETRY, S.CREATED)}
)

ALL_PAIRS = list(itertools.product(ALL, ALL))
assert len(ALL_PAIRS) == 49


@pytest.mark.parametrize(("old", "new"), ALL_PAIRS, ids=[f"{o.value}->{n.value}" for o, n in ALL_PAIRS])
def test_check_transition_accepts_exactly_the_design_table(old: S, new: S) -> None:
    if (old, new) in DESIGN_TRANSITIONS:
        check_transition(old, new)
        check_transition(old, new, reset=True)  # a reset may also make ordinary transitions
        return
    with pytest.raises(TaskEngineException, match=rf"{old.value} -> {new.value}"):
        check_transition(old, new, stage="s1")
    if (old, new) in DESIGN_RESET_TRANSITIONS:
        check_transition(old, new, reset=True)
    else:
        with pytest.raises(TaskEngineException, match=rf"{old.value} -> {new.value}"):
            check_transition(old, new, reset=True)


def test_reset_only_transitions_say_so() -> None:
    with pytest.raises(TaskEngineException, match="only an explicit reset"):
        check_transition(S.COMPLETE, S.CREATED, stage="s1")


# ----------------------------------------------------------------------------------------------------
# check_sequence and overall_status, against an independent oracle
# ----------------------------------------------------------------------------------------------------
LETTER = {S.UNBOUND: "U", S.CREATED: "N", S.RUNNING: "R", S.RETRY: "Y", S.ERROR: "E", S.COMPLETE: "C", S.CANCELED: "X"}
# DESIGN.md's shapes, plus ``C* X+ N*``: a canceled task whose reset (written back to front) was cut
# short by a crash; it must still bind so that reset() can be made again (a deliberate deviation).
VALID_SEQUENCE = re.compile(r"U+|C*[NRYE]?N*|C*X+N*")


def oracle_valid(statuses: tuple[S, ...]) -> bool:
    return VALID_SEQUENCE.fullmatch("".join(LETTER[s] for s in statuses)) is not None


def oracle_overall(statuses: tuple[S, ...]) -> S:
    present = set(statuses)
    if present == {S.COMPLETE}:
        return S.COMPLETE
    for status in (S.RUNNING, S.RETRY, S.ERROR, S.CANCELED, S.UNBOUND):
        if status in present:
            return status
    return S.CREATED


def all_sequences(max_len: int = 4) -> Iterator[tuple[S, ...]]:
    for n in range(1, max_len + 1):
        yield from itertools.product(ALL, repeat=n)


def sequence_ok(statuses: tuple[S, ...]) -> bool:
    try:
        check_sequence(list(statuses))
    except TaskEngineException:
        return False
    return True


def test_check_sequence_matches_the_design_shapes_for_every_short_sequence() -> None:
    wrong = [
        (" ".join(s.value for s in seq), "accepted" if sequence_ok(seq) else "refused")
        for seq in all_sequences()
        if sequence_ok(seq) != oracle_valid(seq)
    ]
    assert wrong == []
    # the oracle itself is not trivially permissive or strict
    valid = sum(oracle_valid(seq) for seq in all_sequences())
    assert 0 < valid < sum(1 for _ in all_sequences()) // 10


@pytest.mark.parametrize(
    "seq",
    [
        "UNBOUND",
        "UNBOUND UNBOUND UNBOUND",
        "CREATED CREATED CREATED",
        "COMPLETE COMPLETE COMPLETE",
        "COMPLETE RUNNING CREATED",
        "COMPLETE RETRY CREATED CREATED",
        "ERROR CREATED",
        "COMPLETE COMPLETE ERROR",
        "RUNNING",
        "CANCELED CANCELED",
        "COMPLETE CANCELED CANCELED",
    ],
)
def test_check_sequence_accepts(seq: str) -> None:
    check_sequence([S(s) for s in seq.split()])


@pytest.mark.parametrize(
    "seq",
    [
        "CREATED COMPLETE",
        "ERROR ERROR",
        "RUNNING RETRY",
        "RUNNING RUNNING",
        "RETRY COMPLETE",
        "CANCELED COMPLETE",
        "CANCELED CREATED CANCELED",
        "ERROR CANCELED",
        "COMPLETE ERROR COMPLETE",
        "UNBOUND CREATED",
        "CREATED UNBOUND",
        "COMPLETE UNBOUND",
        "UNBOUND COMPLETE UNBOUND",
    ],
)
def test_check_sequence_refuses(seq: str) -> None:
    with pytest.raises(TaskEngineException, match="invalid stage sequence"):
        check_sequence([S(s) for s in seq.split()])


def test_overall_status_follows_the_design_order() -> None:
    wrong = [
        (seq, overall_status(seq), oracle_overall(seq))
        for seq in all_sequences()
        if overall_status(seq) is not oracle_overall(seq)
    ]
    assert wrong == []


# ----------------------------------------------------------------------------------------------------
# Through the engine: a stage whose behaviour per run is planned by the test and whose runs it counts
# ----------------------------------------------------------------------------------------------------
class PlannedFailure(Exception):
    """What a planned stage failure raises."""


class RollbackFailure(Exception):
    """What a planned rollback failure raises."""


class SimulatedCrash(BaseException):
    """Ends a stage like a dead process would: not an Exception, so nothing catches it on the way."""


@dataclass
class Probe:
    """What the test owns: the plan per stage run and everything the stage code did."""

    base: Path
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    plan: dict[str, list[str]] = field(default_factory=dict)
    events: list[tuple[str, ...]] = field(default_factory=list)
    raised: list[BaseException] = field(default_factory=list)
    snapshots: dict[str, bytes] = field(default_factory=dict)
    current: dict[str, str] = field(default_factory=dict)

    def count(self, kind: str, stage: str | None = None) -> int:
        return sum(1 for e in self.events if e[0] == kind and (stage is None or e[1] == stage))


PROBES: dict[str, Probe] = {}


class ProbeState(BaseStageState[int]):
    value: int = 0


class ProbeStage(BaseStage[ProbeState]):
    """Runs the next planned action for its stage: ok, fail, fail_rollback, crash, cancel_then_fail, cancel_then_ok."""

    probe: str = Field(default="")

    def _probe(self) -> Probe:
        return PROBES[self.probe]

    def execute_stage(self, previous_state_copy: ProbeState) -> None:
        probe = self._probe()
        raw = get_object(probe.base, f"{self.engine.task_id}/{self.stage_name}.stage.json") or b""
        stored = json.loads(raw)
        # what storage says while the stage code runs: RUNNING, with this attempt already counted
        probe.events.append(
            ("run", self.stage_name, str(self.state.attempts), stored["status"], str(stored["attempts"]))
        )
        plan = probe.plan.get(self.stage_name, [])
        action = plan.pop(0) if plan else "ok"
        probe.current[self.stage_name] = action
        if action == "crash":
            probe.snapshots[self.stage_name] = raw
            raise SimulatedCrash(self.stage_name)
        if action in ("cancel_then_fail", "cancel_then_ok"):
            CheckMateEngine.request_cancel(self.engine.io, self.engine.task_id, "asked by the test")
            deadline = time.monotonic() + 5.0
            while not self.cancel_requested and time.monotonic() < deadline:
                time.sleep(0.02)
            probe.events.append(("saw_cancel", self.stage_name, str(self.cancel_requested)))
            if action == "cancel_then_ok":
                self.state.value = previous_state_copy.value + 1
                self.state.result = self.state.value
                return
        if action in ("fail", "fail_rollback", "cancel_then_fail"):
            exc = PlannedFailure(f"planned failure of {self.stage_name} on attempt {self.state.attempts}")
            probe.raised.append(exc)
            raise exc
        self.state.value = previous_state_copy.value + 1
        self.state.result = self.state.value

    def rollback_stage(self) -> None:
        probe = self._probe()
        probe.events.append(("rollback", self.stage_name, str(self.state.attempts)))
        if probe.current.get(self.stage_name) == "fail_rollback":
            raise RollbackFailure(f"rollback of {self.stage_name} could not undo its work")

    def cancel(self) -> None:
        self._probe().events.append(("cancel", self.stage_name, str(self.state.attempts)))


@pytest.fixture
def probe(base: Path) -> Iterator[Probe]:
    probe = Probe(base=base)
    PROBES[probe.key] = probe
    yield probe
    del PROBES[probe.key]


def stages_for(probe: Probe, count: int = 3) -> list[ProbeStage]:
    return [ProbeStage(stage_name=f"s{i}", state=ProbeState(), probe=probe.key) for i in range(1, count + 1)]


def new_engine(
    io: TaskIO, probe: Probe, *, policy: RetryPolicy = RetryPolicy.NONE, attempts: int = 1, no_lock: bool = False
) -> CheckMateEngine[ProbeStage, int]:
    return CheckMateEngine(io, "task-1", stages_for(probe), retry_policy=policy, max_attempts=attempts, no_lock=no_lock)


def statuses(engine: CheckMateEngine[ProbeStage, int]) -> list[str]:
    return [s.state.status.value for s in engine.stages]


def stored_statuses(base: Path, task_id: str = "task-1", count: int = 3) -> list[str]:
    out = []
    for i in range(1, count + 1):
        raw = get_object(base, f"{task_id}/s{i}.stage.json")
        out.append(json.loads(raw)["status"] if raw is not None else "(none)")
    return out


def snapshot(base: Path) -> dict[str, bytes]:
    """Every stored object's bytes (the lock file excluded: it holds a heartbeat)."""
    return {n: b for n, b in objects_under(base).items() if not n.endswith("/task.lock")}


def assert_path(stage: ProbeStage, expected: list[str], resets: tuple[int, ...] = ()) -> None:
    """The stage's history statuses are ``expected`` and each step is an allowed transition.

    ``resets``: indices of history entries made by an explicit reset.
    """
    history: list[StageStateHistoryEntry] = stage.state.history
    assert [h.status.value for h in history] == expected
    previous = S.CREATED  # a stage starts CREATED at bind (UNBOUND -> CREATED)
    for index, entry in enumerate(history):
        allowed = DESIGN_RESET_TRANSITIONS | DESIGN_TRANSITIONS if index in resets else DESIGN_TRANSITIONS
        assert (previous, entry.status) in allowed, f"{stage.stage_name}: {previous} -> {entry.status} at #{index}"
        previous = entry.status
    assert previous is stage.state.status


def runs(probe: Probe) -> list[tuple[str, ...]]:
    return [e[1:] for e in probe.events if e[0] == "run"]


# ----------------------------------------------------------------------------------------------------
# Execution paths
# ----------------------------------------------------------------------------------------------------
def test_created_running_complete(fast_io: TaskIO, probe: Probe, base: Path) -> None:
    with new_engine(fast_io, probe) as engine:
        assert statuses(engine) == ["CREATED"] * 3
        assert stored_statuses(base) == ["(none)"] * 3  # a stage that never ran has no object
        engine.execute()
        assert statuses(engine) == ["COMPLETE"] * 3
        for stage in engine.stages:
            assert_path(stage, ["RUNNING", "COMPLETE"])
            assert stage.state.attempts == 1
        assert engine.task_result == 3
        assert engine.check_sync()
    # each stage ran once, and storage already said RUNNING with attempts 1 when its code ran
    assert runs(probe) == [(f"s{i}", "1", "RUNNING", "1") for i in (1, 2, 3)]
    assert stored_statuses(base) == ["COMPLETE"] * 3


def test_failure_with_attempts_left_goes_to_retry_chained_then_retry_runs(
    fast_io: TaskIO, probe: Probe, base: Path
) -> None:
    probe.plan["s2"] = ["fail"]
    with new_engine(fast_io, probe, policy=RetryPolicy.RETRY, attempts=3) as engine:
        with pytest.raises(TaskEngineException, match="auto-recovered") as info:
            engine.execute()
        assert info.value.__cause__ is probe.raised[0]
        assert statuses(engine) == ["COMPLETE", "RETRY", "CREATED"]
        assert engine.status is S.RETRY
        assert stored_statuses(base) == ["COMPLETE", "RETRY", "(none)"]
        assert probe.count("rollback", "s2") == 1
        assert probe.count("run", "s3") == 0
        engine.execute()  # RETRY -> RUNNING -> COMPLETE, s1 not again
        s1, s2, s3 = engine.stages
        assert_path(s1, ["RUNNING", "COMPLETE"])
        assert_path(s2, ["RUNNING", "RETRY", "RUNNING", "COMPLETE"])
        assert_path(s3, ["RUNNING", "COMPLETE"])
        assert s2.state.attempts == 2
        assert engine.check_sync()
    assert runs(probe) == [
        ("s1", "1", "RUNNING", "1"),
        ("s2", "1", "RUNNING", "1"),
        ("s2", "2", "RUNNING", "2"),
        ("s3", "1", "RUNNING", "1"),
    ]


def test_failure_with_policy_none_goes_to_error_reraising_the_stage_exception(fast_io: TaskIO, probe: Probe) -> None:
    probe.plan["s1"] = ["fail"]
    with new_engine(fast_io, probe) as engine:
        with pytest.raises(PlannedFailure) as info:
            engine.execute()
        assert info.value is probe.raised[0]
        assert engine.status is S.ERROR
        s1, s2, s3 = engine.stages
        assert_path(s1, ["RUNNING", "ERROR"])
        assert s2.state.history == [] and s3.state.history == []
        assert probe.count("rollback", "s1") == 1
        assert engine.check_sync()


def test_failure_with_attempts_exhausted_goes_to_error(fast_io: TaskIO, probe: Probe) -> None:
    probe.plan["s1"] = ["fail", "fail"]
    with new_engine(fast_io, probe, policy=RetryPolicy.RETRY, attempts=2) as engine:
        with pytest.raises(TaskEngineException) as first:
            engine.execute()
        assert first.value.__cause__ is probe.raised[0]
        assert engine.status is S.RETRY
        with pytest.raises(PlannedFailure) as second:
            engine.execute()
        assert second.value is probe.raised[1]
        assert engine.status is S.ERROR
        assert_path(engine.stages[0], ["RUNNING", "RETRY", "RUNNING", "ERROR"])
        assert engine.stages[0].state.attempts == 2
    assert probe.count("run", "s1") == 2
    assert probe.count("rollback", "s1") == 2


def test_attempts_are_counted_across_engines(fast_io: TaskIO, probe: Probe) -> None:
    """RETRY in one engine, then the last attempt in a new engine (a new process) goes to ERROR."""
    probe.plan["s1"] = ["fail", "fail"]
    first = new_engine(fast_io, probe, policy=RetryPolicy.RETRY, attempts=2)
    with first, pytest.raises(TaskEngineException, match="auto-recovered"):
        first.execute()
    with new_engine(fast_io, probe, policy=RetryPolicy.RETRY, attempts=2) as engine:
        assert statuses(engine) == ["RETRY", "CREATED", "CREATED"]
        with pytest.raises(PlannedFailure):
            engine.execute()
        assert_path(engine.stages[0], ["RUNNING", "RETRY", "RUNNING", "ERROR"])
    assert runs(probe) == [("s1", "1", "RUNNING", "1"), ("s1", "2", "RUNNING", "2")]


def test_rollback_failure_goes_to_error_with_the_stage_exception_and_history(fast_io: TaskIO, probe: Probe) -> None:
    probe.plan["s2"] = ["fail_rollback"]
    with new_engine(fast_io, probe, policy=RetryPolicy.RETRY, attempts=3) as engine:
        with pytest.raises(PlannedFailure) as info:  # attempts are left, but the rollback failed
            engine.execute()
        assert info.value is probe.raised[0]
        s2 = engine.stages[1]
        assert_path(s2, ["RUNNING", "ERROR"])
        assert "could not undo its work" in s2.state.history[-1].message
        assert "RollbackFailure" in s2.state.history[-1].message
        assert engine.check_sync()


# ----------------------------------------------------------------------------------------------------
# A stage found RUNNING at execute: what a process that died mid-stage leaves behind
# ----------------------------------------------------------------------------------------------------
def leave_running(io: TaskIO, probe: Probe, base: Path, policy: RetryPolicy, attempts: int) -> None:
    """Run until s2 starts, then end like a dead process: s2's stored object says RUNNING."""
    probe.plan["s2"] = ["crash"]
    engine = new_engine(io, probe, policy=policy, attempts=attempts)
    engine.bind()
    with pytest.raises(SimulatedCrash):
        engine.execute()
    engine.unbind()
    put_object(base, "task-1/s2.stage.json", probe.snapshots["s2"])
    assert stored_statuses(base) == ["COMPLETE", "RUNNING", "(none)"]


def test_running_found_at_execute_without_strict_recovery_raises_and_runs_nothing(
    fast_io: TaskIO, probe: Probe, base: Path
) -> None:
    leave_running(fast_io, probe, base, RetryPolicy.RETRY, 2)
    before_runs = len(runs(probe))
    with new_engine(fast_io, probe, policy=RetryPolicy.RETRY, attempts=2) as engine:
        assert statuses(engine) == ["COMPLETE", "RUNNING", "CREATED"]
        assert engine.status is S.RUNNING
        before = snapshot(base)
        with pytest.raises(TaskEngineException, match="strict_recovery=True"):
            engine.execute()
        assert snapshot(base) == before
        assert statuses(engine) == ["COMPLETE", "RUNNING", "CREATED"]
    assert len(runs(probe)) == before_runs


def test_running_found_at_execute_with_strict_recovery_runs_it_as_a_new_attempt(
    fast_io: TaskIO, probe: Probe, base: Path
) -> None:
    leave_running(fast_io, probe, base, RetryPolicy.RETRY, 2)
    with new_engine(fast_io, probe, policy=RetryPolicy.RETRY, attempts=2) as engine:
        engine.execute(strict_recovery=True)
        s1, s2, s3 = engine.stages
        assert_path(s1, ["RUNNING", "COMPLETE"])
        assert_path(s2, ["RUNNING", "RUNNING", "COMPLETE"])
        assert_path(s3, ["RUNNING", "COMPLETE"])
        assert s2.state.attempts == 2
        assert engine.check_sync()
    assert runs(probe) == [
        ("s1", "1", "RUNNING", "1"),
        ("s2", "1", "RUNNING", "1"),
        ("s2", "2", "RUNNING", "2"),
        ("s3", "1", "RUNNING", "1"),
    ]


@pytest.mark.parametrize(("policy", "attempts"), [(RetryPolicy.NONE, 1), (RetryPolicy.RETRY, 1)])
def test_running_found_with_no_attempt_left_goes_to_error(
    fast_io: TaskIO, probe: Probe, base: Path, policy: RetryPolicy, attempts: int
) -> None:
    leave_running(fast_io, probe, base, policy, attempts)
    before_runs = len(runs(probe))
    with new_engine(fast_io, probe, policy=policy, attempts=attempts) as engine:
        with pytest.raises(TaskEngineException, match="interrupted"):
            engine.execute(strict_recovery=True)
        assert statuses(engine) == ["COMPLETE", "ERROR", "CREATED"]
        assert_path(engine.stages[1], ["RUNNING", "ERROR"])
        assert engine.check_sync()
    assert len(runs(probe)) == before_runs
    assert stored_statuses(base) == ["COMPLETE", "ERROR", "(none)"]


# ----------------------------------------------------------------------------------------------------
# Cancel
# ----------------------------------------------------------------------------------------------------
def test_cancel_from_created(fast_io: TaskIO, probe: Probe, base: Path) -> None:
    with new_engine(fast_io, probe) as engine:
        engine.cancel()
        assert statuses(engine) == ["CANCELED"] * 3
        for stage in engine.stages:
            assert_path(stage, ["CANCELED"])
        assert engine.check_sync()
    assert [e for e in probe.events if e[0] == "cancel"] == [("cancel", "s1", "0")]
    assert probe.count("run") == 0
    assert stored_statuses(base) == ["CANCELED"] * 3


def test_cancel_from_created_after_completed_stages(fast_io: TaskIO, probe: Probe) -> None:
    probe.plan["s2"] = ["fail"]
    with new_engine(fast_io, probe, policy=RetryPolicy.RETRY, attempts=2) as engine:
        with pytest.raises(TaskEngineException):
            engine.execute()
        engine.cancel()  # s2 is RETRY
        s1, s2, s3 = engine.stages
        assert_path(s1, ["RUNNING", "COMPLETE"])
        assert_path(s2, ["RUNNING", "RETRY", "CANCELED"])
        assert_path(s3, ["CANCELED"])
        assert engine.check_sync()
    assert [e for e in probe.events if e[0] == "cancel"] == [("cancel", "s2", "1")]


def test_cancel_of_a_running_stage_through_request_cancel(fast_io: TaskIO, probe: Probe, base: Path) -> None:
    """The stage asks for a cancel, sees ``cancel_requested`` (a locked engine: through its lease thread), raises."""
    probe.plan["s2"] = ["cancel_then_fail"]
    with new_engine(fast_io, probe) as engine:
        with pytest.raises(TaskEngineException, match="canceled") as info:
            engine.execute()
        assert info.value.__cause__ is probe.raised[0]
        s1, s2, s3 = engine.stages
        assert_path(s1, ["RUNNING", "COMPLETE"])
        assert_path(s2, ["RUNNING", "CANCELED"])
        assert_path(s3, ["CANCELED"])
        assert engine.check_sync()
    assert ("saw_cancel", "s2", "True") in probe.events
    assert [e for e in probe.events if e[0] == "cancel"] == [("cancel", "s2", "1")]
    assert probe.count("rollback", "s2") == 1
    assert get_object(base, "task-1/cancel.json") is None


def test_request_cancel_while_a_stage_runs_cancels_it_even_when_it_returns(fast_io: TaskIO, probe: Probe) -> None:
    """s1 sees the request and returns normally: it ends CANCELED (RUNNING -> CANCELED), its result discarded."""
    probe.plan["s1"] = ["cancel_then_ok"]
    with new_engine(fast_io, probe, no_lock=True) as engine:
        with pytest.raises(TaskEngineException, match=r"canceled while .*result was discarded"):
            engine.execute()
        s1, s2, s3 = engine.stages
        assert_path(s1, ["RUNNING", "CANCELED"])
        assert_path(s2, ["CANCELED"])
        assert_path(s3, ["CANCELED"])
        assert s1.state.result is None and engine.task_result is None
        assert engine.check_sync()
    assert probe.count("run", "s2") == 0
    assert [e for e in probe.events if e[0] == "cancel"] == [("cancel", "s1", "1")]


def test_request_cancel_before_execute_runs_no_stage(fast_io: TaskIO, probe: Probe) -> None:
    with new_engine(fast_io, probe) as engine:
        CheckMateEngine.request_cancel(fast_io, "task-1", "from outside")
        with pytest.raises(TaskEngineException, match="from outside"):
            engine.execute()
        assert statuses(engine) == ["CANCELED"] * 3
    assert probe.count("run") == 0
    assert [e for e in probe.events if e[0] == "cancel"] == [("cancel", "s1", "0")]


def end_task(engine: CheckMateEngine[ProbeStage, int], probe: Probe, end: str) -> None:
    """Drive a bound engine (policy NONE) to COMPLETE, ERROR (s2 failed) or CANCELED (at s2)."""
    if end == "COMPLETE":
        engine.execute()
    elif end == "ERROR":
        probe.plan["s2"] = ["fail"]
        with pytest.raises(PlannedFailure):
            engine.execute()
    else:
        probe.plan["s2"] = ["cancel_then_fail"]
        with pytest.raises(TaskEngineException, match="canceled"):
            engine.execute()
    assert engine.status.value == end


@pytest.mark.parametrize("end", ["COMPLETE", "ERROR", "CANCELED"])
def test_cancel_of_an_ended_task_raises_and_changes_nothing(
    fast_io: TaskIO, probe: Probe, base: Path, end: str
) -> None:
    with new_engine(fast_io, probe, no_lock=True) as engine:
        end_task(engine, probe, end)
        cancels = probe.count("cancel")
        before = snapshot(base)
        with pytest.raises(TaskEngineException, match=f"already {end}"):
            engine.cancel()
        assert snapshot(base) == before
        assert probe.count("cancel") == cancels
        assert engine.status.value == end


# ----------------------------------------------------------------------------------------------------
# Execute on an ended task
# ----------------------------------------------------------------------------------------------------
def test_execute_on_a_complete_task_is_a_no_op(fast_io: TaskIO, probe: Probe, base: Path) -> None:
    with new_engine(fast_io, probe) as engine:
        engine.execute()
    done = len(probe.events)
    before = snapshot(base)
    with new_engine(fast_io, probe) as engine:
        assert engine.status is S.COMPLETE
        engine.execute()
        engine.execute(strict_recovery=True)
        assert engine.task_result == 3
    assert len(probe.events) == done  # no stage code, rollback or cancel ran
    assert snapshot(base) == before


@pytest.mark.parametrize("end", ["ERROR", "CANCELED"])
def test_execute_on_an_error_or_canceled_task_raises_naming_the_stage_and_reset(
    fast_io: TaskIO, probe: Probe, base: Path, end: str
) -> None:
    with new_engine(fast_io, probe, no_lock=True) as engine:
        end_task(engine, probe, end)
    done = len(probe.events)
    before = snapshot(base)
    with new_engine(fast_io, probe) as engine:
        for strict in (False, True):
            with pytest.raises(TaskEngineException) as info:
                engine.execute(strict_recovery=strict)
            assert type(info.value) is TaskEngineException
            assert "'s2'" in str(info.value)
            assert end in str(info.value)
            assert "reset" in str(info.value)
        assert engine.status.value == end
    assert len(probe.events) == done
    assert snapshot(base) == before


# ----------------------------------------------------------------------------------------------------
# Reset
# ----------------------------------------------------------------------------------------------------
def test_reset_of_an_error_stage_makes_it_retry_with_attempts_zero(fast_io: TaskIO, probe: Probe, base: Path) -> None:
    probe.plan["s2"] = ["fail"]
    with new_engine(fast_io, probe) as engine:
        with pytest.raises(PlannedFailure):
            engine.execute()
        engine.reset()
        assert statuses(engine) == ["COMPLETE", "RETRY", "CREATED"]
        assert engine.stages[1].state.attempts == 0
        assert engine.check_sync()
        assert stored_statuses(base) == ["COMPLETE", "RETRY", "(none)"]
    with new_engine(fast_io, probe) as engine:  # a new process resumes it
        engine.execute()
        s1, s2, s3 = engine.stages
        assert_path(s1, ["RUNNING", "COMPLETE"])
        assert_path(s2, ["RUNNING", "ERROR", "RETRY", "RUNNING", "COMPLETE"], resets=(2,))
        assert "reset" in s2.state.history[2].message
        assert_path(s3, ["RUNNING", "COMPLETE"])
        assert s2.state.attempts == 1
    assert [(r[0], r[1]) for r in runs(probe)] == [("s1", "1"), ("s2", "1"), ("s2", "1"), ("s3", "1")]


def test_reset_of_a_canceled_task_makes_it_runnable_again(fast_io: TaskIO, probe: Probe) -> None:
    with new_engine(fast_io, probe) as engine:
        engine.cancel()
        engine.reset()
        assert statuses(engine) == ["RETRY", "CREATED", "CREATED"]
        assert engine.check_sync()
        engine.execute()
        s1, s2, s3 = engine.stages
        assert_path(s1, ["CANCELED", "RETRY", "RUNNING", "COMPLETE"], resets=(1,))
        assert_path(s2, ["CANCELED", "CREATED", "RUNNING", "COMPLETE"], resets=(1,))
        assert_path(s3, ["CANCELED", "CREATED", "RUNNING", "COMPLETE"], resets=(1,))
    assert [r[0] for r in runs(probe)] == ["s1", "s2", "s3"]


@pytest.mark.parametrize("shape", ["fresh", "RETRY", "COMPLETE"])
def test_reset_without_an_error_or_canceled_stage_raises(fast_io: TaskIO, probe: Probe, base: Path, shape: str) -> None:
    if shape == "RETRY":
        probe.plan["s1"] = ["fail"]
    with new_engine(fast_io, probe, policy=RetryPolicy.RETRY, attempts=2) as engine:
        if shape == "RETRY":
            with pytest.raises(TaskEngineException):
                engine.execute()
        elif shape == "COMPLETE":
            engine.execute()
        before = snapshot(base)
        old = statuses(engine)
        with pytest.raises(TaskEngineException, match="no ERROR or CANCELED stage"):
            engine.reset()
        assert statuses(engine) == old
        assert snapshot(base) == before


def test_reset_stage_name_restarts_from_that_stage(fast_io: TaskIO, probe: Probe, base: Path) -> None:
    with new_engine(fast_io, probe) as engine:
        engine.execute()
        engine.reset("s2")
        _, s2, s3 = engine.stages
        assert statuses(engine) == ["COMPLETE", "CREATED", "CREATED"]
        for stage in (s2, s3):
            assert stage.state.attempts == 0
            assert stage.state.value == 0 and stage.state.result is None  # template state again
            assert_path(stage, ["RUNNING", "COMPLETE", "CREATED"], resets=(2,))
        assert engine.task_result == 1
        assert engine.check_sync()
    with new_engine(fast_io, probe) as engine:
        engine.execute()
        assert engine.task_result == 3
        assert_path(engine.stages[1], ["RUNNING", "COMPLETE", "CREATED", "RUNNING", "COMPLETE"], resets=(2,))
    assert [r[0] for r in runs(probe)] == ["s1", "s2", "s3", "s2", "s3"]


def test_reset_stage_name_of_a_running_stage(fast_io: TaskIO, probe: Probe, base: Path) -> None:
    leave_running(fast_io, probe, base, RetryPolicy.NONE, 1)
    with new_engine(fast_io, probe) as engine:
        engine.reset("s1")
        assert statuses(engine) == ["CREATED", "CREATED", "CREATED"]
        assert_path(engine.stages[1], ["RUNNING", "CREATED"], resets=(1,))
        engine.execute()
        assert engine.status is S.COMPLETE
    assert [r[0] for r in runs(probe)] == ["s1", "s2", "s1", "s2", "s3"]


def test_reset_stage_name_unknown_raises(fast_io: TaskIO, probe: Probe, base: Path) -> None:
    with new_engine(fast_io, probe) as engine:
        engine.execute()
        before = snapshot(base)
        with pytest.raises(TaskEngineException, match="no stage 'nope'"):
            engine.reset("nope")
        assert snapshot(base) == before


@pytest.mark.parametrize("frontier", ["CANCELED", "RETRY", "ERROR"])
def test_reset_stage_name_behind_an_incomplete_stage_raises_and_changes_nothing(
    fast_io: TaskIO, probe: Probe, base: Path, frontier: str
) -> None:
    """Restarting from s3 while s1 is not COMPLETE is refused (behind CANCELED stages it would store
    CANCELED CANCELED CREATED, a task no engine could bind again)."""
    policy, attempts = (RetryPolicy.RETRY, 2) if frontier == "RETRY" else (RetryPolicy.NONE, 1)
    with new_engine(fast_io, probe, policy=policy, attempts=attempts) as engine:
        if frontier == "CANCELED":
            engine.cancel()
        else:
            probe.plan["s1"] = ["fail"]
            with pytest.raises((TaskEngineException, PlannedFailure)):
                engine.execute()
        old = statuses(engine)
        assert old[0] == frontier
        before = snapshot(base)
        with pytest.raises(TaskEngineException, match="'s3'"):
            engine.reset("s3")
        assert snapshot(base) == before
        assert statuses(engine) == old
    with new_engine(fast_io, probe) as engine:  # the task can still be bound, reset and run
        engine.reset("s1")
        engine.execute()
        assert engine.status is S.COMPLETE


# ----------------------------------------------------------------------------------------------------
# Bind: UNBOUND -> stored status, and invalid stored sequences
# ----------------------------------------------------------------------------------------------------
def write_stage(base: Path, name: str, status: str, attempts: int = 1) -> None:
    """Write a stage's stored object as the engine's storage format has it."""
    entry = StageStateHistoryEntry(status=S(status), message="written by the test", begin_ts=0, attempt=attempts)
    state = ProbeState(stage_name=name, status=S(status), attempts=attempts, history=[entry])
    put_object(base, f"task-1/{name}.stage.json", state.model_dump_json().encode())


def stored_task(io: TaskIO, probe: Probe) -> None:
    """A stored task with no stage started yet (only task.json)."""
    with new_engine(io, probe):
        pass


@pytest.mark.parametrize("status", ["CREATED", "RUNNING", "RETRY", "ERROR", "COMPLETE", "CANCELED"])
def test_bind_loads_every_stored_status(fast_io: TaskIO, probe: Probe, base: Path, status: str) -> None:
    stored_task(fast_io, probe)
    write_stage(base, "s1", status)
    if status == "CANCELED":
        write_stage(base, "s2", "CANCELED")
        write_stage(base, "s3", "CANCELED")
    engine = new_engine(fast_io, probe)
    assert statuses(engine) == ["UNBOUND"] * 3
    with engine:
        rest = "CANCELED" if status == "CANCELED" else "CREATED"
        assert statuses(engine) == [status, rest, rest]
        assert engine.status is oracle_overall(tuple(S(s) for s in statuses(engine)))
        assert engine.check_sync()
    assert statuses(engine) == ["UNBOUND"] * 3


def test_bind_refuses_a_stored_unbound_stage(fast_io: TaskIO, probe: Probe, base: Path) -> None:
    stored_task(fast_io, probe)
    write_stage(base, "s1", "UNBOUND")
    before = snapshot(base)
    with pytest.raises(PersistenceDataNotFoundException):
        new_engine(fast_io, probe).bind()
    assert snapshot(base) == before


@pytest.mark.parametrize(
    "stored",
    [
        {"s1": "CREATED", "s2": "COMPLETE"},
        {"s1": "ERROR", "s2": "ERROR"},
        {"s1": "RUNNING", "s2": "RETRY"},
        {"s1": "CANCELED", "s2": "CREATED", "s3": "CANCELED"},
        {"s1": "CANCELED", "s2": "COMPLETE"},
        {"s2": "COMPLETE"},
        {"s1": "ERROR", "s3": "RETRY"},
    ],
    ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()),
)
def test_bind_of_an_invalid_stored_sequence_fails_and_changes_nothing(
    io: TaskIO, probe: Probe, base: Path, stored: dict[str, str]
) -> None:
    stored_task(io, probe)
    for name, status in stored.items():
        write_stage(base, name, status)
    before = snapshot(base)
    engine = new_engine(io, probe)
    with pytest.raises(TaskEngineException, match="invalid stage sequence"):
        engine.bind()
    assert snapshot(base) == before
    assert not (base / "task-1" / "task.lock").exists()  # the lock taken for the bind was given back
    assert not engine.bound
    assert statuses(engine) == ["UNBOUND"] * 3
    assert probe.count("run") == 0
