"""Stage work of the chained-tasks benchmark (bench.airflow_chain), shared by its two DAG shapes.

One stage hashes a few MB (a few ms of CPU) seeded with the previous stage's digest and returns its own digest,
so both shapes compute the same chain of values. Around that work the stage code itself appends to
``$CHECKMATE_CHAIN_JOURNAL_DIR/<dag_id>.journal``: ``start STAGE RUN TRY``, then ``end STAGE RUN TRY DIGEST`` or
``fail STAGE RUN TRY``, so the benchmark counts stage executions without trusting Airflow or the engine.

A ``fail_once`` stage fails on its first execution in a run: it creates a marker file and raises when the marker
was not there yet, so the retry (of the chained task, or of the CheckMate task) gets past it.

Importable, not a DAG file, so every try of the CheckMate shape records the same stage class path.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from airflow.sdk import get_current_context

from airflow_checkmate.checkmate import BaseStage, BaseStageState
from support.stages import journal

JOURNAL_DIR_ENV = "CHECKMATE_CHAIN_JOURNAL_DIR"
STAGES_ENV = "CHECKMATE_CHAIN_STAGES"
WORK_BLOCK = bytes(range(256)) * 256  # 64 KiB
WORK_ROUNDS = 48  # 3 MiB hashed per stage: a few ms on one core


def stage_count() -> int:
    """N, the number of stages of every benchmark DAG (set by the benchmark in the stack's environment)."""
    return int(os.environ.get(STAGES_ENV, "10"))


def failing_stage(count: int) -> int:
    """The 1-based stage that fails once in the fail-once DAGs: the middle one (N/2, rounded up)."""
    return max(1, (count + 1) // 2)


def run_stage(dag_id: str, stage: str, previous: str, fail_once: bool) -> str:
    """Do one stage's work for the running Airflow try; returns the stage's digest."""
    context = get_current_context()
    run_id, try_number = context["run_id"], context["ti"].try_number
    folder = os.environ.get(JOURNAL_DIR_ENV, "")
    path = os.path.join(folder, f"{dag_id}.journal") if folder else ""
    journal(path, f"start {stage} {run_id} {try_number}")
    if fail_once and folder:
        try:  # O_EXCL: exactly one execution per run finds the marker absent
            os.close(os.open(Path(folder) / f"{dag_id}.{run_id}.{stage}.failed", os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        else:
            journal(path, f"fail {stage} {run_id} {try_number}")
            raise RuntimeError(f"planned failure of {stage} on its first execution in {run_id}")
    digest = hashlib.sha256(f"{previous}/{stage}".encode())
    for _ in range(WORK_ROUNDS):
        digest.update(WORK_BLOCK)
    result = digest.hexdigest()
    journal(path, f"end {stage} {run_id} {try_number} {result}")
    return result


class DigestState(BaseStageState[str]):
    """A stage's result is its digest; the next stage reads it from the previous state."""


class ChainStage(BaseStage[DigestState]):
    """The CheckMate shape's stage: :func:`run_stage` on the previous stage's digest."""

    dag_id: str
    fail_once: bool = False

    def execute_stage(self, previous_state_copy: DigestState) -> None:
        # The first stage receives its own state, whose result is None until it completes.
        previous = previous_state_copy.result if previous_state_copy is not self.state else None
        self.state.result = run_stage(self.dag_id, self.stage_name, previous or "", self.fail_once)
