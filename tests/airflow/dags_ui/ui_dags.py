"""UI test DAGs: a task that fails once and resumes, a slow task, a sensor, and a task that is not a CheckMate task."""

from datetime import datetime, timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

from airflow_checkmate.links.checkmate import derive_checkmate_task_id
from airflow_checkmate.operators.checkmate import CheckMateOperator
from airflow_checkmate.sensors.checkmate import CheckMateSensor

FACTORIES = "support.ui_stages"

with DAG("checkmate_ui_resume", schedule=None, start_date=datetime(2024, 1, 1), catchup=False, tags=["test"]):
    CheckMateOperator(
        task_id="stages",
        checkmate_factory=f"{FACTORIES}.resume_stages",
        factory_kwargs={"dag_id": "checkmate_ui_resume"},
        retries=2,
        retry_delay=timedelta(seconds=3),
        checkmate_queue="ui-queue",
        checkmate_tags=["resume"],
    )
    EmptyOperator(task_id="plain")

with DAG("checkmate_ui_slow", schedule=None, start_date=datetime(2024, 1, 1), catchup=False, tags=["test"]):
    CheckMateOperator(
        task_id="stages",
        checkmate_factory=f"{FACTORIES}.slow_stages",
        factory_kwargs={"dag_id": "checkmate_ui_slow"},
        retries=0,
        checkmate_tags=["slow"],
    )

with DAG("checkmate_ui_watch", schedule=None, start_date=datetime(2024, 1, 1), catchup=False, tags=["test"]):
    # Waits on checkmate_ui_resume's task of run ui_resume_1 (tests/airflow/test_ui.py triggers that run first).
    CheckMateSensor(
        task_id="wait",
        checkmate_task_id=derive_checkmate_task_id("checkmate_ui_resume", "stages", "ui_resume_1"),
        poke_interval=1,
        timeout=120,
    )
