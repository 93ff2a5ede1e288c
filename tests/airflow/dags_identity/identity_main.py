"""Test DAG run both as ``python identity_main.py`` (``dag.test()``) and by Airflow (issue 11, point 7).

The stage class is defined here, so a run as a script names it ``__main__.MainStage`` in Python and
Airflow's runs of this file name it ``unusual_prefix_<hash>_identity_main.MainStage``: both must be
recognised as the same task.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG

from airflow_checkmate.checkmate import BaseStage, BaseStageState
from airflow_checkmate.operators.checkmate import CheckMateOperator
from support.stages import journal


class MainState(BaseStageState[str]):
    """Holds the stage's result."""


class MainStage(BaseStage[MainState]):
    """Journals ``start <name>`` and returns ``done-<name>``."""

    def execute_stage(self, previous_state_copy: MainState) -> None:
        out = os.environ.get("CHECKMATE_E2E_DIR", "")
        journal(f"{out}/identity_main.journal" if out else "", f"start {self.stage_name}")
        self.state.result = f"done-{self.stage_name}"


with DAG(dag_id="identity_main", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    CheckMateOperator(
        task_id="work",
        stage_templates=[MainStage(stage_name=name, state=MainState()) for name in ("first", "second")],
    )

if __name__ == "__main__":
    dag.test()
