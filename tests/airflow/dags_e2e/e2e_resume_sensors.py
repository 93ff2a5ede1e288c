"""Test DAG: a CheckMateOperator that resumes on its Airflow retry, and CheckMateSensor in all three modes.

- ``producer``: journal stages s1..s3 (default, derived CheckMate task id); s2 fails on its first run,
  so try 1 ends RETRY and try 2 resumes at s2.
- ``wait_reschedule`` has no upstream: it pokes while the producer is still failing or waiting for its
  retry, is rescheduled, and succeeds once the producer is COMPLETE.
- ``wait_poke`` and ``wait_deferrable`` run after the producer (a waiting poke sensor or an inline
  trigger would block ``airflow dags test``, which runs one task at a time).
- ``start_background`` starts a CheckMate task in a separate process (slow stages) and
  ``wait_background`` (deferrable) really defers: the trigger polls until that task is COMPLETE. It
  runs after the other sensors, so no other task delays the sensor past the end of the slow stages.
- ``auto_clean``: as the producer with ``auto_cleanup=True``: the failed try keeps its checkpoints, so the
  retry resumes at s2; the stored state is removed once the task is COMPLETE.
- ``collect`` writes every XCom return_value to ``$CHECKMATE_E2E_DIR/e2e_resume_sensors.xcom.json``.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task

from airflow_checkmate.operators.checkmate import CheckMateOperator, derive_checkmate_task_id
from airflow_checkmate.sensors.checkmate import CheckMateSensor
from support.stages import make_stages
from tests.airflow.dags_e2e.e2e_support import journal_path, launch_background, out_dir

DAG_ID = "e2e_resume_sensors"
PRODUCER_ID = "{{ checkmate_id(dag.dag_id, 'producer', run_id) }}"
BACKGROUND_ID = "e2e-background-{{ ts_nodash }}"
WAITERS = ("wait_poke", "wait_reschedule", "wait_deferrable", "wait_background")

with DAG(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    user_defined_macros={"checkmate_id": derive_checkmate_task_id},
    default_args={"retry_delay": timedelta(seconds=1)},
):
    producer = CheckMateOperator(
        task_id="producer",
        stage_templates=make_stages(3, journal_path(DAG_ID, "producer"), fail_first={"s2": 1}),
        retries=2,
    )
    CheckMateOperator(
        task_id="auto_clean",
        stage_templates=make_stages(3, journal_path(DAG_ID, "auto_clean"), fail_first={"s2": 1}),
        retries=2,
        auto_cleanup=True,
    )
    on_producer: dict[str, Any] = {"checkmate_task_id": PRODUCER_ID, "poke_interval": 1, "timeout": 120}
    wait_reschedule = CheckMateSensor(task_id="wait_reschedule", mode="reschedule", **on_producer)
    wait_poke = CheckMateSensor(task_id="wait_poke", mode="poke", **on_producer)
    wait_deferrable = CheckMateSensor(task_id="wait_deferrable", deferrable=True, **on_producer)
    producer >> [wait_poke, wait_deferrable]

    @task
    def start_background(checkmate_task_id: str) -> int:
        return launch_background(checkmate_task_id, 4, sleep=1.5)

    wait_background = CheckMateSensor(
        task_id="wait_background", checkmate_task_id=BACKGROUND_ID, deferrable=True, poke_interval=1, timeout=120
    )
    started = start_background.override(trigger_rule="all_done")(BACKGROUND_ID)
    [wait_reschedule, wait_poke, wait_deferrable] >> started >> wait_background

    @task(trigger_rule="all_done")
    def collect(**context: Any) -> None:
        ti = context["ti"]
        values = {name: ti.xcom_pull(task_ids=name) for name in ("producer", *WAITERS)}
        if out_dir():
            Path(out_dir(), f"{DAG_ID}.xcom.json").write_text(json.dumps(values))

    [producer, wait_reschedule, wait_poke, wait_deferrable, wait_background] >> collect()
