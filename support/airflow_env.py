"""Real Airflow for tests and bench: an AIRFLOW_HOME bound to one dags folder, and an ``airflow`` CLI runner.

Every Airflow command runs in a subprocess with the project's venv, as a user would run it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from support.processes import ROOT

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
EXAMPLES = ROOT / "dags_examples"
#: The logical date the example DAGs are run at by the tests.
LOGICAL_DATE = "2026-01-15T00:00:00+00:00"


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


def tail(proc: subprocess.CompletedProcess[str]) -> str:
    """The end of a finished ``airflow`` command's output, for assertion messages."""
    return proc.stdout[-6000:]
