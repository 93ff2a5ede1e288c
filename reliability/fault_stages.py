"""Stages and the run/resume harness the fault campaign drives, on any TaskIO backend.

The stage code itself counts its starts (``STARTS``), never the engine, so "no COMPLETE stage ran
again" is checked against what really executed. A stage can call a named hook when it starts (the
PostgreSQL rows use it to drop the database connections while the stage is mid-way), and can carry a
large ``blob`` so a real, small filesystem fills up at a chosen checkpoint.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field

from airflow_checkmate.checkmate import (
    BaseStage,
    BaseStageState,
    CheckMateEngine,
    RetryPolicy,
    StageStatus,
    TaskIO,
)

#: Stage starts by ``task_id/stage_name``, written by the stage code.
STARTS: Counter[str] = Counter()
#: Named hooks a stage calls with its ``task_id/stage_name`` as it starts.
HOOKS: dict[str, Callable[[str], None]] = {}


class FaultState(BaseStageState[list[int]]):
    """The values computed so far, and an optional filler that makes the stored object large."""

    values: list[int] = Field(default_factory=list)
    blob: str = ""


class FaultStage(BaseStage[FaultState]):
    """Adds a deterministic value to the previous stage's values; counts its starts in ``STARTS``."""

    #: Which fault to inject and how large to make the state are test switches: the resume runs without them.
    checkmate_identity_exclude: ClassVar[frozenset[str]] = frozenset({"hook", "blob_bytes"})

    task_key: str = ""
    hook: str = ""
    blob_bytes: int = 0

    def execute_stage(self, previous_state_copy: FaultState) -> None:
        key = f"{self.task_key}/{self.stage_name}"
        STARTS[key] += 1
        if self.hook in HOOKS:
            HOOKS[self.hook](key)
        previous = list(previous_state_copy.values)
        self.state.values = [*previous, value_for(self.stage_name, previous)]
        self.state.blob = "x" * self.blob_bytes
        self.state.result = list(self.state.values)


def value_for(stage_name: str, previous: list[int]) -> int:
    return (sum(previous) * 31 + sum(map(ord, stage_name))) % 1_000_003


def expected_result(count: int) -> list[int]:
    """The task result of ``make_stages(count)`` run to the end, however often it was interrupted."""
    values: list[int] = []
    for i in range(1, count + 1):
        values.append(value_for(f"s{i}", values))
    return values


def make_stages(task_id: str, count: int, hook: str = "", blobs: dict[str, int] | None = None) -> list[FaultStage]:
    return [
        FaultStage(
            stage_name=f"s{i}",
            state=FaultState(),
            task_key=task_id,
            hook=hook,
            blob_bytes=(blobs or {}).get(f"s{i}", 0),
        )
        for i in range(1, count + 1)
    ]


def make_engine(
    io: TaskIO, task_id: str, stages: list[FaultStage], lock_timeout: float | None
) -> CheckMateEngine[Any, Any]:
    return CheckMateEngine(io, task_id, stages, RetryPolicy.RETRY, 3, bind_lock_timeout=lock_timeout)


def complete_stages(objects: dict[str, bytes], task_id: str) -> dict[str, bytes]:
    """The stored stage objects of ``task_id`` whose status is COMPLETE (name -> bytes)."""
    done: dict[str, bytes] = {}
    for name, raw in objects.items():
        if name.startswith(f"{task_id}/") and name.endswith(".stage.json"):
            try:
                status = json.loads(raw).get("status")
            except ValueError:
                continue
            if status == StageStatus.COMPLETE.value:
                done[name] = raw
    return done


@dataclass
class RunOutcome:
    """What one faulty run raised, and from where."""

    error: BaseException | None = None
    where: str = ""
    extra: list[str] = field(default_factory=list)  # errors raised after the first (e.g. unbind after execute)

    @property
    def completed(self) -> bool:
        return self.error is None


def run_task(
    io: TaskIO,
    task_id: str,
    stages: list[FaultStage],
    lock_timeout: float | None = None,
    before_bind: Callable[[], None] | None = None,
    before_unbind: Callable[[], None] | None = None,
) -> RunOutcome:
    """bind, execute, unbind as an Airflow try does, recording the first error and where it came from.

    ``before_bind`` and ``before_unbind`` run at those points (to inject a fault there).
    """
    outcome = RunOutcome()
    engine = make_engine(io, task_id, stages, lock_timeout)

    def note(where: str, exc: BaseException) -> None:
        if outcome.error is None:
            outcome.error, outcome.where = exc, where
        else:
            outcome.extra.append(f"{where}: {type(exc).__name__}")

    if before_bind is not None:
        before_bind()
    try:
        engine.bind()
    except Exception as exc:
        note("bind", exc)
        return outcome
    try:
        engine.execute(strict_recovery=True)
    except Exception as exc:
        note("execute", exc)
    if before_unbind is not None:
        before_unbind()
    try:
        engine.unbind()
    except Exception as exc:
        note("unbind", exc)
    return outcome


def resume(io: TaskIO, task_id: str, count: int, lock_timeout: float) -> str:
    """Bind again with the fault gone and run to the end; '' when it completed with the right result."""
    engine = make_engine(io, task_id, make_stages(task_id, count), lock_timeout)
    try:
        with engine:
            engine.execute(strict_recovery=True)
            if engine.status is not StageStatus.COMPLETE:
                return f"status {engine.status} after resume"
            if engine.task_result != expected_result(count):
                return f"wrong result {engine.task_result!r}"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""
