"""Shared fixtures: a storage folder per test, and a way to run tasks in real child processes."""

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from airflow_checkmate.checkmate import TaskIO, TaskIOFile
from reliability.pg import fresh_database
from tests.helpers.s3_server import running_s3_server, s3_client

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
    """Run ``tests.helpers.run_task`` in a new Python process and wait for it."""
    return run_python("-m", "tests.helpers.run_task", *args, timeout=timeout)


def start_task_process(*args: str) -> subprocess.Popen[str]:
    """Start ``tests.helpers.run_task`` in a new Python process without waiting."""
    return start_python("-m", "tests.helpers.run_task", *args)


POSTGRES_ENV = "CHECKMATE_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (dropped at the end), from CHECKMATE_TEST_POSTGRES_URL.

    Skips with the reason when the variable is unset, except under CI=true, where it fails: CI must
    run the PostgreSQL tests.
    """
    server = os.environ.get(POSTGRES_ENV)
    if not server:
        reason = f"{POSTGRES_ENV} is not set (e.g. postgresql://postgres@127.0.0.1:5432/test)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}: the PostgreSQL tests must run in CI")
        pytest.skip(reason)
    with fresh_database(server, prefix="checkmate_test") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL, once SQLite (a file in the test's folder) and once the session's PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'checkmate.db'}"
    return str(request.getfixturevalue("postgres_url"))


S3_CONN_ID = "checkmate_test_s3"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port for the session; its Airflow connection is set in os.environ.

    The connection ``checkmate_test_s3`` (type aws, dummy keys, ``endpoint_url``) is exported as
    ``AIRFLOW_CONN_CHECKMATE_TEST_S3`` so that child processes and ``airflow`` commands see it too.
    """
    with running_s3_server(S3_CONN_ID) as endpoint:
        yield endpoint


@pytest.fixture
def s3_url(s3_endpoint: str) -> str:
    """A fresh bucket on the session's S3 server, as ``s3://<bucket>/state`` (credentials: S3_CONN_ID)."""
    bucket = f"checkmate-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/state"
