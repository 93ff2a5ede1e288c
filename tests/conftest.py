"""Shared fixtures: a storage folder per test, and a way to run tasks in real child processes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_checkmate.checkmate import TaskIO, TaskIOFile

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A fresh storage folder."""
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def io(base: Path) -> TaskIOFile:
    """File storage in the test's folder; durable, as users run it."""
    return TaskIOFile(base)


@pytest.fixture
def fast_io(base: Path) -> TaskIO:
    """File storage without fsync, for tests that run many tasks and do not kill processes."""
    return TaskIOFile(base, durable=False)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def run_task_process(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``tests.helpers.run_task`` in a new Python process and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "tests.helpers.run_task", *args],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_task_process(*args: str) -> subprocess.Popen[str]:
    """Start ``tests.helpers.run_task`` in a new Python process without waiting."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.run_task", *args],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
