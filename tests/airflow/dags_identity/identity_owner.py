"""Test DAG: CheckMate task ids shared by every run of the DAG (issue 11, point 2).

- ``owned``: a fixed id, not shared: a second run must be refused (AirflowFailException, no retry).
- ``shared``: a fixed id with ``checkmate_share_across_runs=True``: a second run returns the stored result.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_checkmate.operators.checkmate import CheckMateOperator
from support.stages import make_stages

DAG_ID = "identity_owner"


def journal_of(task_id: str) -> str:
    out = os.environ.get("CHECKMATE_E2E_DIR", "")
    return f"{out}/{DAG_ID}.{task_id}.journal" if out else ""


with DAG(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retry_delay": timedelta(seconds=1)},
):
    CheckMateOperator(
        task_id="owned",
        checkmate_task_id="{{ dag.dag_id }}-owned",
        stage_templates=make_stages(2, journal_of("owned")),
        retries=2,
    )
    CheckMateOperator(
        task_id="shared",
        checkmate_task_id="{{ dag.dag_id }}-shared",
        stage_templates=make_stages(2, journal_of("shared")),
        checkmate_share_across_runs=True,
    )
