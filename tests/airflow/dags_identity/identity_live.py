"""Test DAG: two runs of one DAG on one CheckMate task id, the first still running (issue 11, point 2).

``victim`` has a fixed task id and ``cancel_checkmate_task`` as its failure callback. Run 1 holds the
task while its slow first stage runs; run 2 finds it held, fails (no retries), and its callback must
neither cancel run 1's task nor leave it a cancel request.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG

from airflow_checkmate.callbacks import cancel_checkmate_task
from airflow_checkmate.operators.checkmate import CheckMateOperator
from support.stages import make_stages

OUT = os.environ.get("CHECKMATE_E2E_DIR", "")
SLEEP = float(os.environ.get("IDENTITY_LIVE_SLEEP", "0"))

with DAG(dag_id="identity_live", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    CheckMateOperator(
        task_id="victim",
        checkmate_task_id="identity-live-victim",
        stage_templates=make_stages(2, f"{OUT}/identity_live.journal" if OUT else "", sleep_seconds=SLEEP),
        on_failure_callback=cancel_checkmate_task,
    )
