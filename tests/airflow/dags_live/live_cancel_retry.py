"""Live stack DAG: s2 fails on its first run, and the retry waits 40 s: time for `checkmate cancel`.

Built by a factory (a dotted path), so the CLI can rebuild the task and cancel it while no try holds it.
"""

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_checkmate.operators.checkmate import CheckMateOperator

DAG_ID = "checkmate_live_cancel_retry"

with DAG(DAG_ID, schedule=None, start_date=datetime(2024, 1, 1), catchup=False, max_active_runs=1, tags=["test"]):
    CheckMateOperator(
        task_id="stages",
        checkmate_factory="support.live_stages.failing_once_stages",
        factory_kwargs={"dag_id": DAG_ID},
        retries=2,
        retry_delay=timedelta(seconds=40),
    )
