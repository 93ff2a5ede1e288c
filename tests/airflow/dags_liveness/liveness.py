"""Test DAG: who may take a CheckMate task's lock in Airflow, with the operator's default settings.

``plant_leases`` leaves a lease on each task below as if try 1 of a task instance held it from another
worker (host ``worker-a``, another boot, a heartbeat that stays fresh for the whole test):

- ``newer_try``: the lease is try 1 of this very task instance. Try 1 here is refused (same try);
  try 2, a newer try of the same instance, takes the lease over at once and completes.
- ``other_run``: the lease is try 1 of another run's instance: every try is refused and the task fails.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task

from airflow_checkmate.checkmate.holder import PID_NS, LeaseRecord
from airflow_checkmate.checkmate.names import lock_obj_name
from airflow_checkmate.hooks.checkmate import CheckMateHook
from airflow_checkmate.operators.checkmate import CheckMateOperator, airflow_instance_key, derive_checkmate_task_id
from support.stages import make_stages

DAG_ID = "liveness"
HOLDERS = {"newer_try": None, "other_run": "another-run"}  # task -> the run its planted lease claims (None: this)


def journal(task_id: str) -> str:
    out = os.environ.get("CHECKMATE_E2E_DIR", "")
    return f"{out}/{DAG_ID}.{task_id}.journal" if out else ""


with DAG(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retry_delay": timedelta(seconds=1)},
):

    @task
    def plant_leases(**context: Any) -> None:
        """Leases as a live try 1 on another worker would have left them (so pid and boot mean nothing here)."""
        run_id, io, now = context["ti"].run_id, CheckMateHook().io, time.time()
        for task_id, claimed_run in HOLDERS.items():
            run = claimed_run or run_id
            record = LeaseRecord(
                token=uuid.uuid4().hex,
                host="worker-a",
                pid=4242,
                boot_id="boot-of-worker-a",
                pid_ns=PID_NS,
                owner=f"airflow {DAG_ID}.{task_id} run {run} try 1",
                instance_key=airflow_instance_key(DAG_ID, task_id, run, -1),
                try_number=1,
                acquired_at=now,
                heartbeat_at=now,
                lease_seconds=600,
            )
            lock = lock_obj_name(derive_checkmate_task_id(DAG_ID, task_id, run_id))
            assert io.lease_create(lock, record.model_dump_json()), f"{lock} exists already"

    planted = plant_leases()
    for name in HOLDERS:
        planted >> CheckMateOperator(task_id=name, stage_templates=make_stages(2, journal(name)), retries=1)
