"""Managed CheckMate tasks for the registry, service and CLI tests: importable factories, journaled stages.

Every stage appends what its code did (``start``, ``end``, ``fail``, ``rollback``, ``cancel``) to a journal
file, named by the ``journal`` factory argument or else by the CHECKMATE_TEST_JOURNAL environment variable,
so tests count stage-code runs themselves. ``make`` is a module-level factory, so a task's registry row
records ``support.managed_tasks.make`` and the service or the CLI can rebuild it.

Run as a script, it runs one task in this process and prints its final status::

    python -m support.managed_tasks TASK_ID '{"journal": "...", "base_url": "...", ...}'

Exit codes: 0 COMPLETE, 4 anything else (canceled, failed).
"""

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from airflow_checkmate.checkmate import (
    BaseStage,
    BaseStageState,
    CheckMate,
    RetryPolicy,
    TaskEngineException,
    TaskIO,
    TaskRecord,
)
from support.stages import journal as append_line
from support.stages import read_journal

ENV_JOURNAL = "CHECKMATE_TEST_JOURNAL"
FACTORY = "support.managed_tasks.make"
#: Registry rows seen by ProbeStage while it ran, keyed by task id (in-process tests only).
PROBES: dict[str, list[TaskRecord | None]] = {}


class StepState(BaseStageState[str]):
    """State of the test steps: the result is the stage name."""


class Step(BaseStage[StepState]):
    """A stage that journals its runs; it fails while ``fail_flag`` exists, and sleeps in small steps.

    ``sleep_seconds``: the stage runs that long, in 0.05 s steps, but returns early once a cancel of
    the task was requested, so the engine notices the request at the next stage boundary.
    """

    #: Test switches, not inputs: tests turn them between binds of one task.
    checkmate_identity_exclude: ClassVar[frozenset[str]] = frozenset({"journal_path", "fail_flag", "sleep_seconds"})

    journal_path: str = ""
    fail_flag: str = ""
    sleep_seconds: float = 0.0

    def journal_file(self) -> str:
        """The journal this stage writes: its own, else the one the environment names."""
        return self.journal_path or os.environ.get(ENV_JOURNAL, "")

    def execute_stage(self, previous_state_copy: StepState) -> None:
        """Journal the start; fail while the flag exists; sleep (until a cancel request); journal the end."""
        path = self.journal_file()
        append_line(path, f"start {self.stage_name} {self.state.attempts}")
        if self.fail_flag and Path(self.fail_flag).exists():
            append_line(path, f"fail {self.stage_name} {self.state.attempts}")
            raise RuntimeError(f"planned failure of {self.stage_name} ({self.fail_flag} exists)")
        deadline = time.monotonic() + self.sleep_seconds
        while time.monotonic() < deadline and not self.cancel_requested:
            time.sleep(0.05)
        self.state.result = self.stage_name
        append_line(path, f"end {self.stage_name} {self.state.attempts}")

    def rollback_stage(self) -> None:
        """Journal the rollback."""
        append_line(self.journal_file(), f"rollback {self.stage_name} {self.state.attempts}")

    def cancel(self) -> None:
        """Journal the cancel cleanup."""
        append_line(self.journal_file(), f"cancel {self.stage_name} {self.state.attempts}")


class ProbeStage(Step):
    """A step that records the task's registry row as seen while the stage itself runs."""

    def execute_stage(self, previous_state_copy: StepState) -> None:
        """Record the registry row, then run as a Step."""
        engine = self.engine
        assert isinstance(engine, CheckMate)
        PROBES.setdefault(engine.task_id, []).append(engine.registry.get(engine.task_id))
        super().execute_stage(previous_state_copy)


def build(
    factory: Callable[..., Any] | str,
    task_id: str | None = None,
    *,
    journal: str = "",
    base_url: str | None = None,
    database_url: str | None = None,
    stages: Sequence[str] = ("a", "b", "c"),
    fail_flag: str = "",
    fail_stage: str = "b",
    slow_stage: str = "",
    sleep_seconds: float = 0.0,
    probe_stage: str = "",
    queue: str = "etl",
    tags: Sequence[str] = ("team:data",),
    description: str | None = None,
    max_attempts: int = 3,
    auto_cleanup: bool = False,
) -> CheckMate[Any, Any]:
    """A managed task of Step stages; every keyword is recorded as factory_kwargs so it is rebuilt the same."""
    kwargs: dict[str, Any] = {
        "journal": journal,
        "base_url": base_url,
        "database_url": database_url,
        "stages": list(stages),
        "fail_flag": fail_flag,
        "fail_stage": fail_stage,
        "slow_stage": slow_stage,
        "sleep_seconds": sleep_seconds,
        "probe_stage": probe_stage,
        "queue": queue,
        "tags": list(tags),
        "description": description,
        "max_attempts": max_attempts,
        "auto_cleanup": auto_cleanup,
    }
    templates = [
        (ProbeStage if name == probe_stage else Step)(
            stage_name=name,
            state=StepState(),
            journal_path=journal,
            fail_flag=fail_flag if name == fail_stage else "",
            sleep_seconds=sleep_seconds if name == slow_stage else 0.0,
        )
        for name in stages
    ]
    return CheckMate(
        factory,
        templates,
        task_id=task_id,
        description=description,
        retry_policy=RetryPolicy.RETRY if max_attempts > 1 else RetryPolicy.NONE,
        max_attempts=max_attempts,
        auto_cleanup=auto_cleanup,
        queue=queue,
        tags=list(tags),
        io=TaskIO.from_base_url(base_url) if base_url else None,
        registry=database_url,
        factory_kwargs=kwargs,
    )


def make(task_id: str | None = None, **kwargs: Any) -> CheckMate[Any, Any]:
    """The factory the tests register: ``support.managed_tasks.make``."""
    return build(make, task_id, **kwargs)


def make_stages(task_id: str | None = None, journal: str = "", **_: Any) -> list[Step]:
    """A factory that returns only stages; the service wraps them in a CheckMate on the row's storage."""
    return [Step(stage_name=name, state=StepState(), journal_path=journal) for name in ("a", "b", "c")]


def events(path: str | Path, kind: str | None = None) -> list[str]:
    """The journal as ``"kind stage"`` strings (attempt numbers dropped), optionally of one kind only."""
    return [f"{w[0]} {w[1]}" for w in read_journal(path) if kind is None or w[0] == kind]


def main(argv: list[str] | None = None) -> int:
    """Run one task to its end (or until it is canceled) and print its final status."""
    task_id, raw = (argv if argv is not None else sys.argv[1:])[:2]
    engine = build(FACTORY, task_id, **json.loads(raw))  # as __main__, make has no importable path
    with engine:
        try:
            engine.execute()
        except TaskEngineException as exc:
            print(f"{engine.status} {exc}", flush=True)
            return 4
        print(f"{engine.status}", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
