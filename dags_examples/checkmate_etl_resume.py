"""(a) An ETL task whose transform stage fails once; Airflow's retry resumes at the transform.

Extract runs once: on the retry, CheckMate finds it COMPLETE and skips it. The failure is planned
through a marker file next to the stored state, so a second run of the DAG fails and resumes again.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG
from pydantic import Field

from airflow_checkmate.checkmate import BaseStage, BaseStageState
from airflow_checkmate.hooks.checkmate import default_home
from airflow_checkmate.operators.checkmate import CheckMateOperator


class EtlState(BaseStageState[dict[str, int]]):
    rows: list[int] = Field(default_factory=list)


class Extract(BaseStage[EtlState]):
    def execute_stage(self, previous_state_copy: EtlState) -> None:
        print("extract: reading 5 rows")
        self.state.rows = [3, 1, 4, 1, 5]


class Transform(BaseStage[EtlState]):
    def execute_stage(self, previous_state_copy: EtlState) -> None:
        marker = default_home() / "examples" / f"{self.engine.task_id}.transform-failed-once"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            raise ConnectionError("warehouse connection dropped (planned, once)")
        print("transform: squaring rows")
        self.state.rows = [r * r for r in previous_state_copy.rows]


class Load(BaseStage[EtlState]):
    def execute_stage(self, previous_state_copy: EtlState) -> None:
        print("load: writing the total")
        self.state.result = {"rows": len(previous_state_copy.rows), "total": sum(previous_state_copy.rows)}


with DAG(
    dag_id="checkmate_etl_resume",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["checkmate", "example"],
    doc_md=__doc__,
):
    CheckMateOperator(
        task_id="etl",
        stage_templates=[
            Extract(stage_name="extract", state=EtlState(), description="read the source"),
            Transform(stage_name="transform", state=EtlState(), description="square every row"),
            Load(stage_name="load", state=EtlState(), description="write the result"),
        ],
        retries=2,
        retry_delay=timedelta(seconds=1),
    )
