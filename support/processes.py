"""Child Python processes from the repository root, and the names tests, bench and campaigns share."""

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ENV = "CHECKMATE_TEST_POSTGRES_URL"
S3_CONN_ID = "checkmate_test_s3"


def child_env() -> dict[str, str]:
    """This process's environment with the repository root importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def run_python(
    *argv: str, timeout: float = 60, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python *argv`` in a new process from the repository root (importable), ``env`` added; wait for it."""
    return subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env={**child_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_python(*argv: str) -> subprocess.Popen[str]:
    """Start ``python *argv`` in a new process from the repository root (importable), its output piped."""
    return subprocess.Popen(
        [sys.executable, *argv],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_task_process(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``support.run_task`` in a new Python process and wait for it."""
    return run_python("-m", "support.run_task", *args, timeout=timeout)


def start_task_process(*args: str) -> subprocess.Popen[str]:
    """Start ``support.run_task`` in a new Python process without waiting."""
    return start_python("-m", "support.run_task", *args)
