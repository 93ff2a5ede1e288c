"""(c) Wait for a CheckMate task with CheckMateSensor (deferrable) and use its result from XCom.

``build_report`` runs a CheckMate task under an explicit, templated id, one task per day:
``sales-report-{{ (dag_run.logical_date or dag_run.run_after) | ds_nodash }}``. The day is the run's
logical date, or, for a run without one (a manual trigger in Airflow 3), the day it was run after:
``{{ ds_nodash }}`` alone is undefined in such runs and fails the task. Run again for the same day, it
finds the task COMPLETE and only returns the stored result, so the day's report is built once whatever
happens to the DAG run. A task id allows letters, digits, '.', '_' and '-': a ``{{ run_id }}`` needs
``| replace(':', '-') | replace('+', '-')``.

``wait_for_report`` is a CheckMateSensor on the same id with ``deferrable=True``: while the task is not
finished it waits in the triggerer (a CheckMateTrigger polling the stored state every
``poke_interval`` seconds) without holding a worker slot, and it logs progress such as
``2/3 stages complete; current 'render' RUNNING (attempt 1)``. It succeeds with the task result as its
XCom ``return_value``, and fails (AirflowFailException) if the task ends ERROR or CANCELED; set
``soft_fail=True`` to skip instead. ``publish`` pulls that result through XCom.

The sensor is in the producer's DAG here so that ``airflow dags test checkmate_sensor_wait`` runs the
whole example in one process. In production it usually sits in the DAG that consumes the report:
give it the same id template (the id is the contract between the two DAGs) and the same
``checkmate_conn_id``; ``mode="reschedule"`` is the non-deferrable way to free the worker slot.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task
from pydantic import Field

from airflow_checkmate.checkmate import BaseStage, BaseStageState
from airflow_checkmate.operators.checkmate import CheckMateOperator
from airflow_checkmate.sensors.checkmate import CheckMateSensor

REPORT_ID = "sales-report-{{ (dag_run.logical_date or dag_run.run_after) | ds_nodash }}"


class ReportState(BaseStageState[dict[str, Any]]):
    sales: dict[str, int] = Field(default_factory=dict)


class Collect(BaseStage[ReportState]):
    def execute_stage(self, previous_state_copy: ReportState) -> None:
        print("collect: reading the day's sales per region")
        self.state.sales = {"north": 120, "south": 80, "west": 42}


class Aggregate(BaseStage[ReportState]):
    def execute_stage(self, previous_state_copy: ReportState) -> None:
        print("aggregate: totalling the sales")
        self.state.sales = dict(previous_state_copy.sales)
        self.state.sales["total"] = sum(previous_state_copy.sales.values())


class Render(BaseStage[ReportState]):
    def execute_stage(self, previous_state_copy: ReportState) -> None:
        print("render: writing the report")
        self.state.sales = dict(previous_state_copy.sales)
        regions = {name: amount for name, amount in self.state.sales.items() if name != "total"}
        self.state.result = {
            "regions": len(regions),
            "total": self.state.sales["total"],
            "top": max(regions, key=regions.__getitem__),
        }


with DAG(
    dag_id="checkmate_sensor_wait",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["checkmate", "example"],
    doc_md=__doc__,
):
    build_report = CheckMateOperator(
        task_id="build_report",
        checkmate_task_id=REPORT_ID,
        stage_templates=[
            Collect(stage_name="collect", state=ReportState(), description="read sales per region"),
            Aggregate(stage_name="aggregate", state=ReportState(), description="total the sales"),
            Render(stage_name="render", state=ReportState(), description="write the report"),
        ],
        retries=2,
        retry_delay=timedelta(seconds=1),
    )

    wait_for_report = CheckMateSensor(
        task_id="wait_for_report",
        checkmate_task_id=REPORT_ID,
        deferrable=True,
        poke_interval=5,
        timeout=3600,
    )

    @task
    def publish(report: dict[str, Any]) -> None:
        """Use the CheckMate task result the sensor pushed to XCom."""
        print(f"publishing sales report: {report['regions']} regions, total {report['total']}, top {report['top']}")

    build_report >> wait_for_report
    publish(wait_for_report.output)
