"""Shared fixtures: a storage folder per test, PostgreSQL and S3 for the session (helpers live in ``support``)."""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_checkmate.checkmate import TaskIO, TaskIOFile
from support.pg import fresh_database
from support.processes import POSTGRES_ENV, S3_CONN_ID
from support.s3_server import running_s3_server, s3_client


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
