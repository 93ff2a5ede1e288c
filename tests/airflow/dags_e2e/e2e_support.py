"""Shared by the e2e test DAGs: where journals go, and CheckMate tasks run by a process outside Airflow.

Kept out of the DAG files (and out of the DagBag by .airflowignore) so both DAGs use the same code.
Everything the test reads is written under ``$CHECKMATE_E2E_DIR``; with it unset (a plain DagBag
parse) nothing is written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from airflow_checkmate.hooks.checkmate import default_home

OUT_ENV = "CHECKMATE_E2E_DIR"
ROOT = Path(__file__).resolve().parents[3]


def out_dir() -> str:
    return os.environ.get(OUT_ENV, "")


def journal_path(dag_id: str, task_id: str) -> str:
    """The journal of one Airflow task's stages (empty: no journal)."""
    return f"{out_dir()}/{dag_id}.{task_id}.journal" if out_dir() else ""


def launch_background(
    checkmate_task_id: str, stages: int, *, sleep: float, fail_first: dict[str, int] | None = None
) -> int:
    """Start ``support.run_task`` for a CheckMate task in a process of its own, and return at once.

    The task lives in the embedded default storage that CheckMateSensor reads, so a sensor can really
    wait for it (``airflow dags test`` runs every task and trigger in one process, one at a time). The
    pid is written to ``$CHECKMATE_E2E_DIR/<id>.pid`` so the test can make sure the process is gone.
    """
    journal = journal_path("background", checkmate_task_id)
    cmd = [
        sys.executable,
        "-m",
        "support.run_task",
        str(default_home() / "state"),
        checkmate_task_id,
        str(stages),
        "--sleep",
        str(sleep),
        "--journal",
        journal,
        "--max-attempts",
        "1",
        "--fail-first",
        json.dumps(fail_first or {}),
        "--no-durable",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    if out_dir():
        Path(out_dir(), f"{checkmate_task_id}.pid").write_text(str(proc.pid))
    print(f"started CheckMate task {checkmate_task_id} in process {proc.pid}")
    return proc.pid
