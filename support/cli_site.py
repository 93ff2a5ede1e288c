"""The ``checkmate`` command run for real in child processes, against one test's storage: the CLI tests' harness.

Tasks are made in this process with ``support.managed_tasks`` (file storage and a SQLite registry in the
test's folder); the command runs as ``python -m airflow_checkmate.cli`` with the repository first on
PYTHONPATH, so a copy of the repository tests its own code.
"""

import contextlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_checkmate.checkmate import StageStatus, TaskEngineException, TaskIO, TaskRegistry, read_snapshot
from support.managed_tasks import make
from support.processes import ROOT, child_env
from support.stored_objects import objects_under

S = StageStatus
CLI = [sys.executable, "-m", "airflow_checkmate.cli"]
SCRIPT = Path(sys.executable).parent / "checkmate"
ALLOW = ("--allow-factory", "support.managed_tasks.*")
Result = subprocess.CompletedProcess


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The child environment without any CheckMate or Airflow connection setting, AIRFLOW_HOME at ``home``."""
    env = child_env()
    for name in list(env):
        if name.startswith(("AIRFLOW_CONN_", "CHECKMATE_")) or name == "_AIRFLOW_PROCESS_CONTEXT":
            del env[name]
    env["AIRFLOW_HOME"] = str(home)
    env.update(extra)
    return env


def run_all(calls: Sequence[tuple[Sequence[str], dict[str, str]]], command: Sequence[str] = CLI) -> list[Result[str]]:
    """Run the command once per (arguments, environment), all at once, and wait for every run."""
    procs = [
        subprocess.Popen(
            [*command, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args, env in calls
    ]
    results = []
    for (args, _), proc in zip(calls, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess([*command, *args], proc.returncode, out, err))
    return results


def explain(result: Result[str]) -> str:
    """What a failed assertion shows about a run."""
    return (
        f"{' '.join(result.args[2:])} -> exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )


def conn_json(base_url: str, database_url: str | None = None) -> str:
    """An ``AIRFLOW_CONN_*`` value: a checkmate connection with these URLs in its extra."""
    extra = {"base_url": base_url, **({"database_url": database_url} if database_url else {})}
    return json.dumps({"conn_type": "checkmate", "extra": extra})


@dataclass
class Site:
    """A test's file storage, SQLite registry, journal, failure flag and AIRFLOW_HOME."""

    tmp: Path

    def __post_init__(self) -> None:
        self.store = self.tmp / "store"
        self.db_path = self.tmp / "registry.db"
        self.db = f"sqlite:///{self.db_path}"
        self.journal = self.tmp / "journal.log"
        self.flag = self.tmp / "fail"
        self.home = self.tmp / "airflow_home"

    def kw(self, **extra: Any) -> dict[str, Any]:
        """Factory kwargs for a task of this site."""
        kwargs: dict[str, Any] = {
            "journal": str(self.journal),
            "base_url": str(self.store),
            "database_url": self.db,
            "fail_flag": str(self.flag),
        }
        kwargs.update(extra)
        return kwargs

    def task(self, task_id: str, fail: bool = False, **extra: Any) -> S:
        """Run a task in this process: to COMPLETE, or with ``fail`` to RETRY (ERROR with max_attempts=1)."""
        if fail:
            self.flag.touch()
        try:
            with make(task_id, **self.kw(**extra)) as engine:
                with contextlib.suppress(TaskEngineException, RuntimeError):
                    engine.execute()
                return engine.status
        finally:
            self.flag.unlink(missing_ok=True)

    def run(self, *calls: Sequence[str], **env: str) -> list[Result[str]]:
        """Run ``checkmate --base-url STORE --database-url DB ARGS`` for each argument list, in parallel."""
        return self.run_each(*((args, env) for args in calls))

    def run_each(self, *calls: tuple[Sequence[str], dict[str, str]]) -> list[Result[str]]:
        """Like :meth:`run`, each with its own extra environment variables."""
        flags = ["--base-url", str(self.store), "--database-url", self.db]
        return run_all([([*flags, *args], clean_env(self.home, **env)) for args, env in calls])

    def snapshot(self) -> tuple[Any, ...]:
        """Every stored file's bytes, every registry row and tag, and the journal."""
        files = objects_under(self.store)
        with contextlib.closing(sqlite3.connect(self.db_path)) as conn:
            rows = conn.execute("SELECT * FROM checkmate_tasks ORDER BY task_id").fetchall()
            tags = conn.execute("SELECT * FROM checkmate_task_tags ORDER BY task_id, tag").fetchall()
        journal = self.journal.read_text() if self.journal.exists() else ""
        return files, rows, tags, journal

    def status(self, task_id: str) -> S | None:
        """The task's stored status, None if nothing is stored."""
        snapshot = read_snapshot(TaskIO.from_base_url(str(self.store)), task_id)
        return snapshot.status if snapshot else None

    def row(self, task_id: str) -> Any:
        """The task's registry row."""
        return TaskRegistry(self.db).get(task_id)
