"""Celery-stack DAGs, one per scenario of tests/airflow/test_celery_stack.py; every task goes to the work queue.

All three use CheckMate's defaults (no lease or lock-timeout setting) and Airflow retries with a 5 s delay.
"""

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_checkmate.operators.checkmate import CheckMateOperator
from support.celery_stages import STAGE_FAILS, TASK_KILLED, WORKER_KILLED, host_stages, work_queue

for dag_id, sleep, fail_first in ((STAGE_FAILS, 6.0, 1), (WORKER_KILLED, 300.0, 0), (TASK_KILLED, 300.0, 0)):
    with DAG(dag_id, schedule=None, start_date=datetime(2024, 1, 1), catchup=False, max_active_runs=1, tags=["test"]):
        CheckMateOperator(
            task_id="stages",
            stage_templates=host_stages(dag_id, first_run_sleep=sleep, fail_first=fail_first),
            queue=work_queue(),
            retries=2,
            retry_delay=timedelta(seconds=5),
        )
