"""Live stack DAG: stage s2 works for up to 120 s and returns early when it sees a cancel request."""

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_checkmate.operators.checkmate import CheckMateOperator
from support.live_stages import cancel_aware_stages

DAG_ID = "checkmate_live_cancel_running"

with DAG(DAG_ID, schedule=None, start_date=datetime(2024, 1, 1), catchup=False, max_active_runs=1, tags=["test"]):
    CheckMateOperator(
        task_id="stages",
        stage_templates=cancel_aware_stages(DAG_ID),
        retries=2,
        retry_delay=timedelta(seconds=1),
    )
