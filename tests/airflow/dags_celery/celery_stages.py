"""Stages for the Celery-stack DAGs: live stages that also record on which host, in which process and when they ran.

Kept in an importable module (not in a DAG file) so every try, on either worker, records the same stage class path.
"""

import os
import socket
import time

from tests.airflow.dags_live.live_stages import LiveStage, live_stages
from tests.helpers.stages import CounterState, journal

QUEUE_ENV = "CHECKMATE_CELERY_QUEUE"  # set by tests.helpers.celery_stack


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
