"""Live stack DAG: stage s2 sleeps on its first run so the test can SIGKILL the task process mid-stage."""

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_checkmate.operators.checkmate import CheckMateOperator
from support.live_stages import live_stages

DAG_ID = "checkmate_live_sigkill"

with DAG(DAG_ID, schedule=None, start_date=datetime(2024, 1, 1), catchup=False, max_active_runs=1, tags=["test"]):
    CheckMateOperator(
        task_id="stages",
        stage_templates=live_stages(DAG_ID, slow_stage="s2", first_run_sleep=60.0),
        retries=2,
        retry_delay=timedelta(seconds=1),
    )
