"""End-to-end: the operator's lease claim and local-default warning under real ``airflow dags test`` runs.

The DAG (tests/airflow/dags_liveness/) plants leases held by "try 1 on another worker" and runs
CheckMateOperator with default settings (``retries=1``, ``retry_delay`` 1 s). It runs twice: with
Airflow's executor configured as CeleryExecutor (``airflow dags test`` still runs everything in one
process; the operator only reads the setting), and as LocalExecutor.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_checkmate.operators.checkmate import derive_checkmate_task_id
from support.airflow_env import AirflowEnv
from support.stages import start_counts
from support.stored_objects import get_object

DAGS = Path(__file__).resolve().parent / "dags_liveness"
WARNING = "CheckMate keeps this task's state in files on this machine"

pytestmark = pytest.mark.slow


def dags_test(env: AirflowEnv, out: Path, logical_date: str, executor: str) -> tuple[str, str]:
    """Run the DAG; its output and run id."""
    extra = {"CHECKMATE_E2E_DIR": str(out), "AIRFLOW__CORE__EXECUTOR": executor}
    proc: subprocess.CompletedProcess[str] = env.run("dags", "test", "liveness", logical_date, extra_env=extra)
    found = re.findall(r"DagRun Finished: dag_id=liveness, .*?run_id=([^,\s]+),", proc.stdout)
    assert found, f"airflow dags test did not finish a run:\n{proc.stdout[-8000:]}"
    return proc.stdout, found[-1]


def tries(output: str, task_id: str) -> list[str]:
    pattern = rf"\[DAG TEST\] starting task_id={task_id} .*?\[DAG TEST\] end task task_id={task_id} "
    return re.findall(pattern, output, flags=re.DOTALL)


@pytest.fixture(scope="module")
def env(airflow_env_factory: Callable[[Path], AirflowEnv]) -> AirflowEnv:
    return airflow_env_factory(DAGS)


@pytest.fixture(scope="module")
def celery_run(env: AirflowEnv, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    out = tmp_path_factory.mktemp("liveness_celery")
    output, run_id = dags_test(env, out, "2026-03-01T00:00:00+00:00", "CeleryExecutor")
    return output, run_id, out


def states(env: AirflowEnv, run_id: str) -> dict[str, str]:
    """The task instance states of a run, as the metadata DB has them."""
    proc = env.run("tasks", "states-for-dag-run", "liveness", run_id, "-o", "json", check=True)
    rows = json.loads(proc.stdout[proc.stdout.index("[{") :].splitlines()[0])
    return {row["task_id"]: row["state"] for row in rows}


def test_a_newer_try_takes_over_the_lease_of_a_dead_try_on_another_worker(
    env: AirflowEnv, celery_run: tuple[str, str, Path]
) -> None:
    output, run_id, out = celery_run
    newer = tries(output, "newer_try")
    assert len(newer) == 2, output[-8000:]
    assert "held by a live process: host worker-a pid 4242" in newer[0], newer[0][-3000:]
    assert re.search(r"try 2 took over the bind lease \S+ from try 1 .*host worker-a pid 4242", newer[1]), newer[1]
    assert states(env, run_id) == {"plant_leases": "success", "newer_try": "success", "other_run": "failed"}
    assert start_counts(out / "liveness.newer_try.journal") == {"s1": 1, "s2": 1}
    task_dir = env.state_dir / derive_checkmate_task_id("liveness", "newer_try", run_id)
    stored = json.loads(get_object(env.state_dir, f"{task_dir.name}/task.json") or b"")
    takeovers = [e["message"] for e in stored["history"] if e["event"] == "lock takeover"]
    assert len(takeovers) == 1 and takeovers[0].startswith("try 2 took over at once from try 1"), takeovers


def test_tries_of_another_run_wait_for_the_lease(celery_run: tuple[str, str, Path]) -> None:
    output, _, out = celery_run
    other = tries(output, "other_run")
    assert len(other) == 2, output[-8000:]
    for log in other:
        assert "held by a live process: host worker-a pid 4242 (airflow liveness.other_run run another-run" in log
    assert start_counts(out / "liveness.other_run.journal") == {}


def test_the_embedded_default_under_a_multi_machine_executor_warns_on_every_try(
    env: AirflowEnv, celery_run: tuple[str, str, Path], tmp_path: Path
) -> None:
    output, _, _ = celery_run
    for log in tries(output, "newer_try") + tries(output, "other_run"):
        assert WARNING in log and "CeleryExecutor" in log and "'checkmate_default'" in log, log[-3000:]
        line = next(x for x in log.splitlines() if WARNING in x)
        assert re.search(r"\[warn", line, re.IGNORECASE), line
    local_output, _ = dags_test(env, tmp_path, "2026-03-02T00:00:00+00:00", "LocalExecutor")
    assert len(tries(local_output, "newer_try")) == 2 and WARNING not in local_output, local_output[-8000:]
