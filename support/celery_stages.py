"""Stages for the Celery-stack DAGs: live stages that also record on which host, in which process and when they ran.

Kept in an importable module (not in a DAG file) so every try, on either worker, records the same stage class path.
"""

import os
import socket
import time

from support.live_stages import LiveStage, live_stages
from support.stages import CounterState, journal

QUEUE_ENV = "CHECKMATE_CELERY_QUEUE"  # set by support.celery_stack


#: The three scenario DAGs of tests/airflow/dags_celery/celery_dags.py (the bench times two of them).
STAGE_FAILS = "checkmate_celery_stage_fails"  # s2 raises on its first run: the retry resumes at s2
WORKER_KILLED = "checkmate_celery_worker_killed"  # s2 sleeps on its first run: the whole worker is SIGKILLed
TASK_KILLED = "checkmate_celery_task_killed"  # s2 sleeps on its first run: only the task process is SIGKILLed


class HostStage(LiveStage):
    """A LiveStage that first writes ``host NAME HOSTNAME PID EPOCH``: who ran it and when it started."""

    def execute_stage(self, previous_state_copy: CounterState) -> None:
        journal(self.journal_path, f"host {self.stage_name} {socket.gethostname()} {os.getpid()} {time.time():.3f}")
        super().execute_stage(previous_state_copy)


def work_queue() -> str:
    """The Celery queue the stack moves between its workers."""
    return os.environ.get(QUEUE_ENV, "default")


def host_stages(dag_id: str, first_run_sleep: float, fail_first: int = 0) -> list[LiveStage]:
    """Stages s1..s3; s2 sleeps ``first_run_sleep`` s on its first run, then fails its first ``fail_first`` runs."""
    return live_stages(dag_id, "s2", first_run_sleep, fail_first, stage_class=HostStage)
