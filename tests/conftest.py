"""Shared fixtures: a storage folder per test, and a way to run tasks in real child processes."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_checkmate.checkmate import TaskIO, TaskIOFile, sqldb

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
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"checkmate_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(sqldb.parse_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


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
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tempfile.TemporaryFile()  # noqa: SIM115  (open for the session; a pipe nobody reads would fill and block)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.s3_server", str(port)],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            break
        except urllib.error.HTTPError:
            break  # it answers
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.seek(0)
                raise RuntimeError(f"the moto S3 server did not start: {log.read()[-2000:]!r}") from None
            time.sleep(0.1)
    conn = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    saved = {k: os.environ.get(k) for k in ("AIRFLOW_CONN_CHECKMATE_TEST_S3", "AWS_EC2_METADATA_DISABLED")}
    os.environ["AIRFLOW_CONN_CHECKMATE_TEST_S3"] = json.dumps(conn)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    try:
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_url(s3_endpoint: str) -> str:
    """A fresh bucket on the session's S3 server, as ``s3://<bucket>/state`` (credentials: S3_CONN_ID)."""
    import boto3

    bucket = f"checkmate-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/state"
