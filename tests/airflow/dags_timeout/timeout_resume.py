"""A CheckMateOperator whose second stage outlives execution_timeout on its first run.

Airflow raises AirflowTaskTimeout inside the stage (then calls on_kill); the retry resumes at that
stage. The journal path comes from $CHECKMATE_TIMEOUT_JOURNAL (empty: no journal, a plain parse).
"""

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_checkmate.operators.checkmate import CheckMateOperator
from support.stages import CounterState, JournalStage, read_journal


class SlowOnceStage(JournalStage):
    """Sleeps far past the task's execution_timeout on its first run only."""

    def execute_stage(self, previous_state_copy: CounterState) -> None:
        first = not any(w[:2] == ["start", self.stage_name] for w in read_journal(self.journal_path))
        self.sleep_seconds = 60.0 if first else 0.0
        super().execute_stage(previous_state_copy)


journal = os.environ.get("CHECKMATE_TIMEOUT_JOURNAL", "")

with DAG("timeout_resume", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    CheckMateOperator(
        task_id="etl",
        stage_templates=[
            JournalStage(stage_name="s1", state=CounterState(), journal_path=journal),
            SlowOnceStage(stage_name="s2", state=CounterState(), journal_path=journal),
            JournalStage(stage_name="s3", state=CounterState(), journal_path=journal),
        ],
        execution_timeout=timedelta(seconds=4),
        retries=1,
        retry_delay=timedelta(seconds=1),
    )
