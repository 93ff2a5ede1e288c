"""(e) The PostgreSQL example under a real ``airflow dags test``: state, lock and registry row in PostgreSQL.

The connection ``checkmate_postgres`` comes from ``AIRFLOW_CONN_CHECKMATE_POSTGRES``, as the example's
docstring tells users to set it, pointing at the test session's PostgreSQL database.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_checkmate.checkmate import StageStatus, TaskIO, TaskRegistry, read_snapshot
from airflow_checkmate.operators.checkmate import derive_checkmate_task_id
from support.airflow_env import LOGICAL_DATE, AirflowEnv, tail


@pytest.mark.slow
def test_postgres_example_keeps_state_and_registry_in_postgres(examples_env: AirflowEnv, postgres_url: str) -> None:
    """The export stage fails once; the retry resumes there from PostgreSQL and the task is listed."""
    conn = {"conn_type": "checkmate", "extra": {"base_url": postgres_url, "database_url": postgres_url}}
    extra_env = {"AIRFLOW_CONN_CHECKMATE_POSTGRES": json.dumps(conn)}
    proc = examples_env.run("dags", "test", "checkmate_postgres_state", LOGICAL_DATE, extra_env=extra_env)
    assert proc.returncode == 0, tail(proc)
    run_id = proc.stdout.split("run_id=")[-1].split(",")[0].strip()
    task_id = derive_checkmate_task_id("checkmate_postgres_state", "export", run_id)

    snapshot = read_snapshot(TaskIO.from_base_url(postgres_url), task_id)
    assert snapshot is not None, f"no state for {task_id} in PostgreSQL:\n{tail(proc)}"
    assert snapshot.status is StageStatus.COMPLETE
    assert [(s.stage_name, s.status, s.attempts) for s in snapshot.stages] == [
        ("snapshot", StageStatus.COMPLETE, 1),
        ("export", StageStatus.COMPLETE, 2),
        ("publish", StageStatus.COMPLETE, 1),
    ]
    assert snapshot.result == {"file": "export.parquet", "rows": 100}
    assert proc.stdout.count("snapshot: 100 rows") == 1
    assert "Resuming at stage 2/3" in proc.stdout
    assert not (examples_env.state_dir / task_id).exists(), "state must not be written to local files"

    record = TaskRegistry(postgres_url).get(task_id)
    assert record is not None
    assert (record.status, record.queue, record.lock_holder) == (StageStatus.COMPLETE, "exports", None)
    assert record.tags == ["dag:checkmate_postgres_state", "team:data"]
    assert (record.stages_done, record.stages_total) == (3, 3)

    listed = subprocess.run(
        [sys.executable, "-m", "airflow_checkmate.cli", "--conn-id", "checkmate_postgres", "list", "--json"],
        env={**examples_env.env, **extra_env},
        cwd=Path(examples_env.home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert listed.stdout.lstrip().startswith("["), listed.stdout[:2000]
    rows = {row["task_id"]: row for row in json.loads(listed.stdout)}
    assert rows[task_id]["status"] == "COMPLETE"
    assert rows[task_id]["queue"] == "exports"
