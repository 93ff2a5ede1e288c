"""An execution_timeout leaves the CheckMate task resumable: the retry resumes at the timed-out stage.

Real ``airflow dags test``: Airflow's timeout raises AirflowTaskTimeout inside the sleeping stage; the
engine records the stage as failed by it (RETRY, attempts left) and the Airflow retry runs it again
while the stage before it does not run again. Stage runs are counted by the stage code's journal.
"""

import json
from pathlib import Path

import pytest

from support.airflow_env import AirflowEnv
from support.stages import expected_result, read_journal
from support.stored_objects import get_object

DAGS = Path(__file__).resolve().parent / "dags_timeout"

pytestmark = pytest.mark.slow


def test_execution_timeout_then_retry_resumes_at_the_timed_out_stage(airflow_env_factory, tmp_path: Path) -> None:
    env: AirflowEnv = airflow_env_factory(DAGS)
    journal = tmp_path / "journal"
    proc = env.run("dags", "test", "timeout_resume", extra_env={"CHECKMATE_TIMEOUT_JOURNAL": str(journal)})
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "AirflowTaskTimeout" in proc.stdout

    starts = [w[1] for w in read_journal(journal) if w[0] == "start"]
    assert starts == ["s1", "s2", "s2", "s3"], starts  # s1 did not run again; s2 ran again after the timeout
    (task_dir,) = [p for p in env.state_dir.iterdir() if p.name.startswith("timeout_resume.etl.")]
    s2 = json.loads(get_object(env.state_dir, f"{task_dir.name}/s2.stage.json") or b"")
    assert [h["status"] for h in s2["history"]] == ["RUNNING", "RETRY", "RUNNING", "COMPLETE"]
    assert "AirflowTaskTimeout" in s2["history"][1]["message"]
    s3 = json.loads(get_object(env.state_dir, f"{task_dir.name}/s3.stage.json") or b"")
    assert s3["status"] == "COMPLETE" and s3["result"] == expected_result(3)
    assert not (task_dir / "task.lock").exists()
