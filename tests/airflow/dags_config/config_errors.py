"""CheckMate tasks whose configuration cannot work, next to one whose storage is merely unreachable.

Each has retries to spare: a configuration error must fail its first try at once (no retry can fix it),
while an unreachable database is worth retrying. The connections come from AIRFLOW_CONN_* variables
set by tests/airflow/test_config_errors.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_checkmate.checkmate import BaseStage, BaseStageState
from airflow_checkmate.operators.checkmate import CheckMateOperator


class State(BaseStageState[int]):
    pass


class Work(BaseStage[State]):
    def execute_stage(self, previous_state_copy: State) -> None:
        self.state.result = 1


def stages() -> list[BaseStage[State]]:
    return [Work(stage_name="work", state=State())]


with DAG("config_errors", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    retrying = {"retries": 2, "retry_delay": timedelta(seconds=0)}
    CheckMateOperator(task_id="unknown_conn", stage_templates=stages(), checkmate_conn_id="cm_undefined", **retrying)
    CheckMateOperator(task_id="bad_scheme", stage_templates=stages(), checkmate_conn_id="cm_bad_scheme", **retrying)
    CheckMateOperator(task_id="bad_factory", checkmate_factory="no_such_package.tasks.build", **retrying)
    CheckMateOperator(task_id="unreachable", stage_templates=stages(), checkmate_conn_id="cm_unreachable", **retrying)
