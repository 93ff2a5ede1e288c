"""(d) When a CheckMate task fails for good, cancel it from Airflow and let the stage clean up.

``stage_files`` writes a batch of files to a scratch directory; ``load`` is meant to push them to a
warehouse, but the warehouse rejects the batch every time (a permanent error, planned here). After its
last try the Airflow task fails and ``on_failure_callback=cancel_checkmate_task`` cancels the CheckMate
task: the first stage that is not COMPLETE (``load``) and every stage after it become CANCELED, and
that stage's ``cancel()`` runs once to clean up — here it removes the scratch directory and prints
what it removed. The stored history records the failure and the cancel.

``rollback_stage()`` and ``cancel()`` differ: rollback runs after every failed attempt, to undo that
attempt's partial work before a retry; cancel runs once, when the task is given up on, to release what
the task as a whole holds (scratch data, reservations, external jobs). Both must be idempotent.

Clearing the failed Airflow task later resets the CheckMate task and resumes it at ``load``;
``stage_files`` stays COMPLETE, so ``load`` must cope with its scratch data being gone (re-stage it or
fail with a clear message) — here it would fail the same way.

``airflow dags test checkmate_cancel_callback`` therefore ends with the DAG run failed (exit code 1).
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG
from pydantic import Field

from airflow_checkmate.callbacks import cancel_checkmate_task
from airflow_checkmate.checkmate import BaseStage, BaseStageState
from airflow_checkmate.hooks.checkmate import default_home
from airflow_checkmate.operators.checkmate import CheckMateOperator


class BatchState(BaseStageState[dict[str, int]]):
    files: list[str] = Field(default_factory=list)


class BatchStage(BaseStage[BatchState]):
    """Stages of one batch; whichever of them is current when the task is canceled cleans up."""

    @property
    def scratch(self) -> Path:
        """The task's scratch directory (one per CheckMate task, so per DAG run)."""
        return default_home() / "examples" / self.engine.task_id / "scratch"

    def cancel(self) -> None:
        if not self.scratch.exists():
            print(f"cleanup: nothing to remove at {self.scratch}")
            return
        files = sorted(p.name for p in self.scratch.iterdir())
        print(f"cleanup: removing scratch dir {self.scratch} with {len(files)} file(s): {', '.join(files)}")
        shutil.rmtree(self.scratch)


class StageFiles(BatchStage):
    def execute_stage(self, previous_state_copy: BatchState) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        for part in ("part-0001.csv", "part-0002.csv"):
            (self.scratch / part).write_text("id,amount\n1,10\n2,20\n")
        self.state.files = sorted(p.name for p in self.scratch.iterdir())
        print(f"stage_files: wrote {self.state.files} to {self.scratch}")


class Load(BatchStage):
    def execute_stage(self, previous_state_copy: BatchState) -> None:
        print(f"load: pushing {previous_state_copy.files} to the warehouse")
        raise PermissionError("warehouse rejected the batch: column 'amount' is not allowed (planned, permanent)")


class Publish(BatchStage):
    def execute_stage(self, previous_state_copy: BatchState) -> None:
        self.state.result = {"files": len(previous_state_copy.files)}


with DAG(
    dag_id="checkmate_cancel_callback",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["checkmate", "example"],
    doc_md=__doc__,
):
    CheckMateOperator(
        task_id="load_batch",
        stage_templates=[
            StageFiles(stage_name="stage_files", state=BatchState(), description="write the batch to scratch"),
            Load(stage_name="load", state=BatchState(), description="load the batch into the warehouse"),
            Publish(stage_name="publish", state=BatchState(), description="announce the new data"),
        ],
        retries=1,
        retry_delay=timedelta(seconds=1),
        on_failure_callback=cancel_checkmate_task,
    )
