"""Recovery after a kill on the Celery stack: drive one scenario, then read its timeline from what the stack recorded.

Shared by tests/airflow/test_celery_stack.py (behaviour) and bench/celery_recovery.py (the figures). Every moment
comes from a record a user can read: the moment of the SIGKILL (taken by the caller), Airflow's task-instance tries
(REST API: end of try 1, retry scheduled, retry queued, retry started), CheckMate's task record (the lock takeover
event of the retry's bind) and the journal the stage code writes (when the interrupted stage started again).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from datetime import datetime

from airflow_checkmate.checkmate import names
from airflow_checkmate.checkmate.models import TaskEngineState
from airflow_checkmate.operators.checkmate import derive_checkmate_task_id
from support.airflow_stack import TASK
from support.celery_stack import CeleryStack

SLOW_STAGE = "s2"  # the stage the DAGs of tests/airflow/dags_celery sleep in on their first run


def host_lines(stack: CeleryStack, dag_id: str, stage: str) -> list[tuple[str, int, float]]:
    """(hostname, pid, start time) of every run of ``stage``, from the stage code's journal, oldest first."""
    return [(w[2], int(w[3]), float(w[4])) for w in stack.journal(dag_id) if w[:2] == ["host", stage]]


def epoch(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


@dataclass
class Timeline:
    """Seconds after the SIGKILL at which each step of the recovery happened (None: not recorded)."""

    try1_ended: float | None  # Airflow recorded the killed try as ended (supervisor report or heartbeat timeout)
    retry_scheduled: float | None  # the retry delay passed and the scheduler scheduled try 2
    retry_queued: float | None  # handed to the Celery queue
    retry_running: float | None  # the task process of try 2 started (execution API)
    takeover: float | None  # CheckMate: the retry's bind took over the dead try's lock
    stage_resumed: float | None  # the interrupted stage's code started again
    retry_try: int  # the try that ran the stage again

    ROWS = (
        ("try1_ended", "Airflow: try 1 recorded as ended"),
        ("retry_scheduled", "Airflow: retry scheduled"),
        ("retry_queued", "Airflow: retry queued to Celery"),
        ("retry_running", "Airflow: retry running on worker B"),
        ("takeover", "CheckMate: lock taken over at bind"),
        ("stage_resumed", "CheckMate: interrupted stage running again"),
    )


def takeover_time(stack: CeleryStack, dag_id: str, run_id: str) -> float | None:
    """When the last lock takeover of the task was recorded in its task record (None if never)."""
    task_id = derive_checkmate_task_id(dag_id, TASK, run_id)
    record = TaskEngineState.model_validate_json(stack.state_io.read(names.task_obj_name(task_id)))
    stamps = [event.ts.timestamp() for event in record.history if "takeover" in event.event]
    return stamps[-1] if stamps else None


def timeline(stack: CeleryStack, dag_id: str, run_id: str, killed_at: float) -> Timeline:
    """The recovery timeline of a run whose try 1 was killed at ``killed_at`` and that has since succeeded."""
    tries_path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{TASK}/tries"
    tries = {t["try_number"]: t for t in stack.api("GET", tries_path)["task_instances"]}
    resumed = host_lines(stack, dag_id, SLOW_STAGE)[1:2]
    after_kill = [t for t in sorted(tries) if t > 1]
    retry = tries[after_kill[-1]] if after_kill else {}

    def since(moment: float | None) -> float | None:
        return None if moment is None else round(moment - killed_at, 2)

    return Timeline(
        try1_ended=since(epoch(tries[1]["end_date"])),
        retry_scheduled=since(epoch(tries.get(2, {}).get("scheduled_when"))),
        retry_queued=since(epoch(tries.get(2, {}).get("queued_when"))),
        retry_running=since(epoch(tries.get(2, {}).get("start_date"))),
        takeover=since(takeover_time(stack, dag_id, run_id)),
        stage_resumed=since(resumed[0][2] if resumed else None),
        retry_try=int(retry.get("try_number", 0)),
    )


def start_on_a(stack: CeleryStack, dag_id: str, run_id: str) -> int:
    """Route the work queue to worker a, trigger a run and wait until its slow stage runs there; its task pid."""
    stack.ensure_workers()
    stack.route("a")
    stack.reset_journal(dag_id)
    stack.trigger(dag_id, run_id)
    lines = stack.wait_for(
        f"{SLOW_STAGE} to start on worker a", lambda: host_lines(stack, dag_id, SLOW_STAGE), 180, dag_id, run_id
    )
    pid = lines[0][1]
    assert stack.worker_of(pid) == "a", f"{SLOW_STAGE} ran in pid {pid}, not under worker a ({lines})"
    return pid


def kill_and_recover(stack: CeleryStack, dag_id: str, run_id: str, whole_worker: bool) -> Timeline:
    """Run ``dag_id`` on worker a, send the work queue to b, SIGKILL a (or only the task process) mid-stage and
    wait for the run to succeed on b. Returns the recovery timeline."""
    task_pid = start_on_a(stack, dag_id, run_id)
    stack.route("b")
    killed_at = time.time()
    if whole_worker:
        stack.kill_worker("a")
    else:
        os.kill(task_pid, signal.SIGKILL)
    stack.wait_for(
        "the run to end", lambda: stack.run_state(dag_id, run_id) in ("success", "failed"), 240, dag_id, run_id
    )
    return timeline(stack, dag_id, run_id, killed_at)
