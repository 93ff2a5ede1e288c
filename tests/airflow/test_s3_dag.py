"""A real ``airflow dags test`` whose CheckMate state lives on the test session's S3 server.

The connection ``checkmate_default`` points at ``s3://<bucket>/state`` with ``storage_conn_id`` naming
the ``aws`` connection of the moto server (endpoint_url in its extra), as the README tells users to do.
"""

from __future__ import annotations

import json
import os

import pytest

from airflow_checkmate.checkmate import StageStatus, TaskIO, read_snapshot
from airflow_checkmate.operators.checkmate import derive_checkmate_task_id
from support.airflow_env import LOGICAL_DATE, AirflowEnv, tail
from support.processes import S3_CONN_ID


@pytest.mark.slow
def test_etl_example_with_state_on_s3_resumes_on_retry(examples_env: AirflowEnv, s3_url: str) -> None:
    """transform fails once; the Airflow retry binds the task from S3 and resumes there, extract runs once."""
    conn = {"conn_type": "checkmate", "extra": {"base_url": s3_url, "storage_conn_id": S3_CONN_ID}}
    extra_env = {
        "AIRFLOW_CONN_CHECKMATE_DEFAULT": json.dumps(conn),
        "AIRFLOW_CONN_CHECKMATE_TEST_S3": os.environ["AIRFLOW_CONN_CHECKMATE_TEST_S3"],
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    proc = examples_env.run("dags", "test", "checkmate_etl_resume", LOGICAL_DATE, extra_env=extra_env)
    assert proc.returncode == 0, tail(proc)
    run_id = proc.stdout.split("run_id=")[-1].split(",")[0].strip()
    task_id = derive_checkmate_task_id("checkmate_etl_resume", "etl", run_id)

    io = TaskIO.from_base_url(s3_url, conn_id=S3_CONN_ID)
    snapshot = read_snapshot(io, task_id)
    assert snapshot is not None, f"no state for {task_id} on S3:\n{tail(proc)}"
    assert [(s.stage_name, s.status, s.attempts) for s in snapshot.stages] == [
        ("extract", StageStatus.COMPLETE, 1),
        ("transform", StageStatus.COMPLETE, 2),
        ("load", StageStatus.COMPLETE, 1),
    ]
    assert snapshot.result == {"rows": 5, "total": 9 + 1 + 16 + 1 + 25}
    assert not snapshot.locked, "the lease object must be released"
    assert proc.stdout.count("extract: reading 5 rows") == 1
    assert "Resuming at stage 2/3: 1 stage(s) already COMPLETE" in proc.stdout
    assert not (examples_env.state_dir / task_id).exists(), "state must not be written to local files"
