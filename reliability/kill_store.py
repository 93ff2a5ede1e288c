"""Direct views of a kill campaign's storage, read around the engine so that its own bugs cannot hide.

A :class:`Store` is what the campaign needs of a backend: the runner's storage arguments, the stored
objects of a task as raw bytes (a folder's journal replayed whole without a cache and its plain files,
rows selected from ``checkmate_objects``, keys fetched with a boto3 client of its own), and the temporary
files a writer killed mid-write left.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from airflow_checkmate.checkmate import PersistenceDataNotFoundException
from airflow_checkmate.checkmate.io.journal import JOURNAL_NAME, TMP_SUFFIX
from airflow_checkmate.checkmate.io.journal_format import replay_file

Objects = Callable[[str], dict[str, bytes]]


@dataclass(frozen=True)
class Store:
    """Where a campaign's tasks live, and a view of them that does not go through the engine."""

    name: str  # the backend, for tables: file, postgresql, s3
    args: list[str]  # BASE [--conn-id ID] for support.run_task
    objects: Objects  # task id -> {object name within the task: bytes}; temporary files excluded
    temp_files: Callable[[str], int] = lambda task_id: 0  # task id -> temporary files left behind
    env: dict[str, str] = field(default_factory=dict)  # what the children need in their environment
    # Stage sleeps (seconds) the campaign rotates through: a store with slow writes needs slower stages for
    # kills to land mid-stage as often as mid-write.
    sleeps: tuple[float, ...] = (0.0, 0.004, 0.012, 0.025)


def file_store(base: Path) -> Store:
    """Durable file storage in ``base``, read from the folders."""

    def objects(task_id: str) -> dict[str, bytes]:
        task_dir = base / task_id
        try:
            names = sorted(os.listdir(task_dir))
        except FileNotFoundError:
            return {}
        try:
            found = replay_file(task_dir / JOURNAL_NAME) if JOURNAL_NAME in names else {}
        except PersistenceDataNotFoundException as exc:  # counted as a corrupt object by kill_check.inspect
            return {f"{JOURNAL_NAME} (damaged)": str(exc).encode()}
        for name in names:
            if not name.startswith("."):
                try:
                    found[name] = (task_dir / name).read_bytes()
                except FileNotFoundError:  # removed between listing and reading: only the parent reads now
                    continue
        return found

    def temp_files(task_id: str) -> int:
        try:
            return sum(1 for n in os.listdir(base / task_id) if n.endswith(TMP_SUFFIX))
        except FileNotFoundError:
            return 0

    return Store("file", [str(base)], objects, temp_files)


@contextmanager
def postgres_store(url: str) -> Iterator[Store]:
    """The database at ``url``; ``checkmate_objects`` rows selected by task key with a connection of its own."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import ProgrammingError

    from airflow_checkmate.checkmate import sqldb

    engine = create_engine(sqldb.parse_url(url), isolation_level="AUTOCOMMIT")
    query = text("SELECT name, data FROM checkmate_objects WHERE task_key = :key")
    # A killed client's last statement may still sit unread in its server session's socket: the session
    # runs it (in autocommit, it commits) before it finds the client gone and exits. Read once no other
    # session of the database remains (the campaign reads only after its child died), or a write that
    # lands a moment later would be missed.
    busy = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    )

    def objects(task_id: str) -> dict[str, bytes]:
        try:
            with engine.connect() as conn:
                deadline = time.monotonic() + 10
                while conn.execute(busy).scalar() and time.monotonic() < deadline:
                    time.sleep(0.001)
                rows = conn.execute(query, {"key": task_id}).all()
        except ProgrammingError:  # no task has run yet: the table does not exist
            return {}
        return {name.partition("/")[2]: bytes(data) for name, data in rows}

    try:
        yield Store("postgresql", [url], objects, sleeps=(0.0, 0.006, 0.02, 0.04))
    finally:
        engine.dispose()


@contextmanager
def sqlite_store(database: Path) -> Iterator[Store]:
    """A SQLite file; ``checkmate_objects`` rows selected by task key with a connection of its own."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    url = f"sqlite:///{database}"
    engine = create_engine(url)
    query = text("SELECT name, data FROM checkmate_objects WHERE task_key = :key")

    def objects(task_id: str) -> dict[str, bytes]:
        try:
            with engine.connect() as conn:
                rows = conn.execute(query, {"key": task_id}).all()
        except OperationalError:  # no task has run yet: the table does not exist
            return {}
        return {name.partition("/")[2]: bytes(data) for name, data in rows}

    try:
        yield Store("sqlite", [url], objects)
    finally:
        engine.dispose()


def s3_store(url: str, endpoint: str, conn_id: str) -> Store:
    """A bucket on an S3 server, read with a boto3 client of its own (S3 has no temporary objects).

    The children find the bucket's credentials in the Airflow connection ``conn_id`` of their environment.
    """
    from support.s3_server import s3_client

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    client = s3_client(endpoint)

    def objects(task_id: str) -> dict[str, bytes]:
        found = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{task_id}/").get("Contents", [])
        return {
            o["Key"].rpartition("/")[2]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in found
        }

    env_var = f"AIRFLOW_CONN_{conn_id.upper()}"
    env = {k: os.environ[k] for k in (env_var, "AWS_EC2_METADATA_DISABLED") if k in os.environ}
    # S3 writes take ~10x longer than durable file writes: so do the stages.
    return Store("s3", [url, "--conn-id", conn_id], objects, env=env, sleeps=(0.0, 0.04, 0.12, 0.25))
