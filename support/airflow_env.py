"""Real Airflow for tests and bench: an AIRFLOW_HOME bound to one dags folder, and an ``airflow`` CLI runner.

Every Airflow command runs in a subprocess with the project's venv, as a user would run it.
"""

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from support.processes import ROOT

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
EXAMPLES = ROOT / "dags_examples"
#: The logical date the example DAGs are run at by the tests.
LOGICAL_DATE = "2026-01-15T00:00:00+00:00"

_migrated: dict[str, Path] = {}  # the first migrated metadata DB of this process, copied for every later home


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

    def migrate(self, timeout: float = 300) -> None:
        """``airflow db migrate`` for this home's SQLite metadata DB, run once per process.

        Later homes get a copy of the first migrated file: the schema is the same, and each migration
        costs an Airflow start-up (7-15 s) that tests pay many times otherwise.
        """
        target = self.home / "airflow.db"
        template = _migrated.get("db")
        if template is not None:
            shutil.copyfile(template, target)
            return
        self.run("db", "migrate", check=True, timeout=timeout)
        folder = tempfile.mkdtemp(prefix="checkmate_airflow_db_")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        template = Path(folder) / "airflow.db"
        shutil.copyfile(target, template)
        _migrated["db"] = template

    def connection_env(self, conn_id: str, extra: dict[str, object]) -> dict[str, str]:
        """An ``AIRFLOW_CONN_<ID>`` variable for a checkmate connection."""
        return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps({"conn_type": "checkmate", "extra": extra})}


def tail(proc: subprocess.CompletedProcess[str]) -> str:
    """The end of a finished ``airflow`` command's output, for assertion messages."""
    return proc.stdout[-6000:]
