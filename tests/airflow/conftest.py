"""Real Airflow for tests: an AIRFLOW_HOME with a migrated SQLite DB per dags folder, and a CLI runner.

Every Airflow command runs in a subprocess with the project's venv, as a user would run it.
"""

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
EXAMPLES = ROOT / "dags_examples"


class AirflowEnv:
    """An AIRFLOW_HOME (SQLite metadata DB, migrated) bound to one dags folder."""

    def __init__(self, home: Path, dags_folder: Path) -> None:
        self.home = home
        self.dags_folder = dags_folder
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
        }

    @property
    def state_dir(self) -> Path:
        """Where the embedded default keeps CheckMate state for this home."""
        return self.home / "checkmate" / "state"

    def run(
        self, *args: str, timeout: float = 300, extra_env: dict[str, str] | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``airflow ARGS`` and return the finished process (stdout and stderr merged into stdout)."""
        proc = subprocess.run(
            [AIRFLOW, *args],
            env={**self.env, **(extra_env or {})},
            cwd=self.home,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"airflow {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-6000:]}")
        return proc

    def connection_env(self, conn_id: str, extra: dict[str, object]) -> dict[str, str]:
        """An ``AIRFLOW_CONN_<ID>`` variable for a checkmate connection."""
        return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps({"conn_type": "checkmate", "extra": extra})}


@pytest.fixture(scope="session")
def airflow_env_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], AirflowEnv]:
    """Make (once per dags folder per session) an AirflowEnv with a migrated DB."""
    made: dict[Path, AirflowEnv] = {}

    def make(dags_folder: Path) -> AirflowEnv:
        if dags_folder not in made:
            env = AirflowEnv(tmp_path_factory.mktemp("airflow_home"), dags_folder)
            env.run("db", "migrate", check=True)
            made[dags_folder] = env
        return made[dags_folder]

    return make


@pytest.fixture(scope="session")
def examples_env(airflow_env_factory: Callable[[Path], AirflowEnv]) -> AirflowEnv:
    """Airflow with the project's dags_examples/ as its dags folder."""
    return airflow_env_factory(EXAMPLES)
