"""Permanent configuration errors fail the Airflow task on its first try; an unreachable store is retried.

One real ``airflow dags test`` of tests/airflow/dags_config/config_errors.py: every task has two retries.
An undefined ``checkmate_conn_id``, a connection with an unknown URL scheme and a ``checkmate_factory``
that cannot be imported must each end FAILED after one try (AirflowFailException); a registry database
that refuses connections is a transient error and uses every try.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from support.airflow_env import AirflowEnv
from support.dags_test import Run, dags_test

DAGS = Path(__file__).resolve().parent / "dags_config"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(airflow_env_factory: Callable[[Path], AirflowEnv], tmp_path_factory: pytest.TempPathFactory) -> Run:
    env = airflow_env_factory(DAGS)
    env.env.update(env.connection_env("cm_bad_scheme", {"base_url": "ftp://files.example/checkmate"}))
    env.env.update(
        env.connection_env(
            "cm_unreachable",
            {"base_url": str(env.home / "unreachable"), "database_url": "postgresql://cm:s3cret@127.0.0.1:1/none"},
        )
    )
    return dags_test(env, tmp_path_factory.mktemp("config_out"), "config_errors")


@pytest.fixture(scope="module")
def states(run: Run) -> dict[str, str]:
    proc = run.env.run("tasks", "states-for-dag-run", "config_errors", run.run_id, "-o", "json", check=True)
    rows = json.loads(proc.stdout[proc.stdout.index("[{") :].splitlines()[0])
    return {row["task_id"]: row["state"] for row in rows}


@pytest.mark.parametrize(
    ("task_id", "reason"),
    [
        ("unknown_conn", "CheckMate connection 'cm_undefined' is not defined"),
        ("bad_scheme", "no CheckMate storage backend for URL scheme 'ftp'"),
        ("bad_factory", "checkmate_factory 'no_such_package.tasks.build' cannot be imported"),
    ],
)
def test_configuration_error_fails_on_the_first_try(
    run: Run, states: dict[str, str], task_id: str, reason: str
) -> None:
    tries = run.tries(task_id)
    assert len(tries) == 1, f"{task_id}: {len(tries)} tries, expected one\n{run.log(task_id)[-4000:]}"
    assert states[task_id] == "failed"
    assert reason in tries[0], tries[0][-4000:]
    assert "new_state=up_for_retry" not in tries[0]


def test_unreachable_storage_is_retried(run: Run, states: dict[str, str]) -> None:
    tries = run.tries("unreachable")
    assert len(tries) == 3, run.log("unreachable")[-4000:]
    assert states["unreachable"] == "failed"
    assert "Connection refused" in tries[0] and "s3cret" not in run.output
