"""Stages for the live-stack DAGs: journal stages that record their process id and sleep on their first run.

Kept in an importable module (not in a DAG file) so every Airflow try records the same stage class path.
"""

import os
import time

from support.stages import CounterState, JournalStage, journal, make_stages

JOURNAL_DIR_ENV = "CHECKMATE_LIVE_JOURNAL_DIR"


class LiveStage(JournalStage):
    """A JournalStage that writes ``pid NAME PID`` first and sleeps ``first_run_sleep`` s on its first run only.

    The first run is counted in the journal (across processes), so a resumed try finishes at once.
    """

    first_run_sleep: float = 0.0

    def execute_stage(self, previous_state_copy: CounterState) -> None:
        first_run = self.runs_so_far() == 0
        journal(self.journal_path, f"pid {self.stage_name} {os.getpid()}")
        self.sleep_seconds = self.first_run_sleep if first_run else 0.0
        super().execute_stage(previous_state_copy)


def journal_path(dag_id: str) -> str:
    """The journal of a DAG's stages, in the folder the test stack names (no journal when unset)."""
    folder = os.environ.get(JOURNAL_DIR_ENV, "")
    return os.path.join(folder, f"{dag_id}.journal") if folder else ""


def live_stages(
    dag_id: str,
    slow_stage: str = "s2",
    first_run_sleep: float = 60.0,
    fail_first: int = 0,
    stage_class: type[LiveStage] = LiveStage,
) -> list[LiveStage]:
    """Three stages s1..s3; ``slow_stage`` sleeps ``first_run_sleep`` s on its first run and fails its first
    ``fail_first`` runs."""
    path = journal_path(dag_id)
    return [
        stage_class(
            stage_name=name,
            state=CounterState(),
            journal_path=path,
            first_run_sleep=first_run_sleep if name == slow_stage else 0.0,
            fail_first=fail_first if name == slow_stage else 0,
        )
        for name in ("s1", "s2", "s3")
    ]


class CancelAwareStage(LiveStage):
    """Works for up to ``first_run_sleep`` s polling ``cancel_requested``; on a cancel it returns early with
    partial work in its result (journal ``returned NAME early``), as long-running stage code is told to do."""

    def execute_stage(self, previous_state_copy: CounterState) -> None:
        journal(self.journal_path, f"pid {self.stage_name} {os.getpid()}")
        journal(self.journal_path, f"start {self.stage_name} {self.state.attempts}")
        deadline = time.monotonic() + self.first_run_sleep
        while time.monotonic() < deadline and not self.cancel_requested:
            time.sleep(0.1)
        self.state.result = [-1]  # partial work: must never become the task's result
        journal(self.journal_path, f"returned {self.stage_name} {'early' if self.cancel_requested else 'in full'}")


def cancel_aware_stages(dag_id: str) -> list[LiveStage]:
    """s1, then s2 (CancelAwareStage, up to 120 s), then s3."""
    path = journal_path(dag_id)
    return [
        LiveStage(stage_name="s1", state=CounterState(), journal_path=path),
        CancelAwareStage(stage_name="s2", state=CounterState(), journal_path=path, first_run_sleep=120.0),
        LiveStage(stage_name="s3", state=CounterState(), journal_path=path),
    ]


def failing_once_stages(dag_id: str) -> list[JournalStage]:
    """A factory (so ``checkmate cancel`` can rebuild the task): s1..s3, s2 fails on its first run."""
    return make_stages(3, journal_path(dag_id), fail_first={"s2": 1})
