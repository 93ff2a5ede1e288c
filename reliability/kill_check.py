"""What a kill campaign checks in storage and in the journal after each SIGKILL.

:func:`inspect` parses every stored object of a task and says what is wrong with it, instead of raising,
so that a campaign counts corrupt objects rather than stopping at the first. A valid checkpoint is:

- nothing, or a lease only (a new task killed while binding; or a cleanup killed after its last removal);
- ``task.json`` (the right task, schema-valid), then stage objects s1..sk: COMPLETE ones holding the
  values a crash-free run computes, the last one possibly RUNNING (the interrupted stage);
- during a cleanup: ``task.json`` marked ``cleaning`` and a suffix of the COMPLETE stage objects (they are
  removed in name order, ``task.json`` last), which the next bind must finish removing.

:func:`phase` says where a kill landed from the run's journal lines (stage and phase lines, see
``support.run_task``) and the stored state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from airflow_checkmate.checkmate import StageStatus, TaskEngineState
from support.stages import CounterState, expected_result

TASK, LOCK = "task.json", "task.lock"
PHASES = ("bind", "mid-stage", "mid-write", "between stages", "unbind", "cleanup", "exit")


@dataclass
class Snapshot:
    """A task's stored state right after a kill, as parsed from storage."""

    task: TaskEngineState[Any] | None = None
    stages: dict[str, CounterState] = field(default_factory=dict)
    lease: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> frozenset[str]:
        return frozenset(n for n, s in self.stages.items() if s.status is StageStatus.COMPLETE)

    @property
    def cleanup_committed(self) -> bool:
        """True once a cleanup persisted ``cleaning`` (or finished): the next bind must finish it."""
        return (self.task is not None and self.task.cleaning) or (self.task is None and not self.stages)


def stage_names(n_stages: int) -> list[str]:
    return [f"s{i}" for i in range(1, n_stages + 1)]


def _parse(model: type[BaseModel], name: str, raw: bytes, problems: list[str]) -> Any:
    try:
        return model.model_validate_json(raw)
    except (ValidationError, ValueError):
        problems.append(f"{name} does not parse as {model.__name__}: {raw[:120]!r}")
        return None


def inspect(stored: dict[str, bytes], task_id: str, n_stages: int) -> tuple[Snapshot, list[str]]:
    """Parse a task's stored objects; returns the snapshot and what is wrong with them (empty: valid)."""
    problems: list[str] = []
    names = stage_names(n_stages)
    snap = Snapshot()
    unexpected = sorted(set(stored) - {TASK, LOCK} - {f"{s}.stage.json" for s in names})
    if unexpected:
        problems.append(f"unexpected stored objects {unexpected}")
    if TASK in stored:
        snap.task = _parse(TaskEngineState, TASK, stored[TASK], problems)
        if snap.task is not None and (snap.task.task_id, snap.task.stage_names) != (task_id, names):
            problems.append(f"{TASK} holds task {snap.task.task_id!r} with stages {snap.task.stage_names}")
    for name in names:
        raw = stored.get(f"{name}.stage.json")
        state = None if raw is None else _parse(CounterState, f"{name}.stage.json", raw, problems)
        if state is not None:
            if state.stage_name != name:
                problems.append(f"{name}.stage.json holds stage {state.stage_name!r}")
            snap.stages[name] = state
    if LOCK in stored:
        try:
            snap.lease = json.loads(stored[LOCK])
        except ValueError:
            problems.append(f"the lease does not parse as JSON: {stored[LOCK][:120]!r}")
        if not (isinstance(snap.lease, dict) and snap.lease.get("token") and isinstance(snap.lease.get("pid"), int)):
            problems.append(f"the lease lacks a token or pid: {snap.lease}")
            snap.lease = {}
    present = [n for n in names if f"{n}.stage.json" in stored]
    if present and TASK not in stored:
        problems.append(f"stage objects {present} are stored without {TASK}: the task cannot be bound again")
    expected = expected_result(n_stages)
    cleaning = snap.task is not None and snap.task.cleaning
    # A checkpoint stores a prefix s1..sk; a cleanup removes them in order, so it leaves a suffix.
    shape = names[len(names) - len(present) :] if cleaning else names[: len(present)]
    if present != shape:
        problems.append(f"stored stages {present} are not a {'suffix' if cleaning else 'prefix'} of {names}")
    for name in present:
        state = snap.stages.get(name)
        if state is None:
            continue
        index = names.index(name)
        running_ok = not cleaning and name == present[-1]
        if state.status is StageStatus.COMPLETE:
            if state.values != expected[: index + 1] or state.result != state.values:
                problems.append(f"{name} stored COMPLETE with wrong values {state.values}")
        elif not (running_ok and state.status is StageStatus.RUNNING):
            problems.append(f"{name} stored as {state.status} (stored: {[snap.stages[n].status for n in snap.stages]})")
        if state.attempts < 1:
            problems.append(f"{name} stored with {state.attempts} attempts")
    return snap, problems


def phase(new_lines: list[list[str]], snap: Snapshot, clean: bool) -> str:
    """Where a kill landed, from the killed run's journal lines and what it left stored."""
    words = [w[0] for w in new_lines]
    if "unbound" in words:
        return "exit"
    if "executed" in words:
        return "cleanup" if clean else "unbind"
    if "bound" not in words:
        return "bind"
    last = new_lines[-1]
    if last[0] == "start":
        return "mid-stage"
    if last[0] == "end":
        stored = snap.stages.get(last[1])
        if stored is None or stored.status is not StageStatus.COMPLETE:
            return "mid-write"  # the stage code returned; COMPLETE was not persisted yet
    return "between stages"  # persisting COMPLETE is done; the next stage's RUNNING is being written
