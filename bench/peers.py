"""What the engine's per-stage cost is compared with: the physical floors and DBOS.

- :func:`append_floor`: one crash-safe checkpoint per stage on files, the least a journal can do: one
  appended record of the engine's size plus ``fdatasync``, in a file that already exists;
- :func:`upsert_floor`: one crash-safe checkpoint per stage on PostgreSQL: a single-row upsert of the
  same size in its own committed transaction (synchronous_commit as the server sets it);
- :func:`dbos_workflow`: DBOS, one workflow of N no-op ``@DBOS.step()`` steps, its system database
  on SQLite (in the same temp folder) or on the same PostgreSQL server. Needs the ``bench`` extra.

Each floor returns the seconds its N checkpoints took; setup and cleanup are not timed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install -e '.[bench]'"
FLOOR_TABLE = "checkmate_bench_floor"


def append_floor(path: Path, stages: int, size: int) -> float:
    """Seconds for ``stages`` appends of ``size`` bytes to an existing file, each followed by fdatasync."""
    record = b"x" * size
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fsync(fd)  # the file exists durably before the clock starts, as a task's journal does
        begin = time.perf_counter()
        for _ in range(stages):
            os.write(fd, record)
            os.fdatasync(fd)
        elapsed = time.perf_counter() - begin
    finally:
        os.close(fd)
    path.unlink()
    return elapsed


def upsert_floor(database_url: str, stages: int, size: int) -> float:
    """Seconds for ``stages`` single-row upsert commits of ``size`` bytes on ``database_url`` (PostgreSQL)."""
    from sqlalchemy import text

    from airflow_checkmate.checkmate import sqldb

    engine = sqldb.get_engine(database_url)
    payload = "x" * size
    upsert = text(f"INSERT INTO {FLOOR_TABLE} (k, v) VALUES (:k, :v) ON CONFLICT (k) DO UPDATE SET v = excluded.v")
    with engine.connect() as conn:
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {FLOOR_TABLE} (k text PRIMARY KEY, v text NOT NULL)"))
        conn.commit()
        begin = time.perf_counter()
        for index in range(stages):
            conn.execute(upsert, {"k": f"s{index % 2}", "v": payload})  # the stage's row, then the next's
            conn.commit()
        elapsed = time.perf_counter() - begin
        conn.execute(text(f"DELETE FROM {FLOOR_TABLE}"))
        conn.commit()
    return elapsed


@contextlib.contextmanager
def dbos_workflow(system_database_url: str) -> Iterator[Callable[[int], float] | None]:
    """A launched DBOS on ``system_database_url``; yields "seconds for one workflow of N steps".

    Yields None when DBOS is not installed. DBOS is a process-wide singleton: its step and workflow
    are registered here, before launch, and the registry is dropped again on exit, so one process can
    launch it on SQLite, then on PostgreSQL.
    """
    try:
        from dbos import DBOS
    except ImportError:
        yield None
        return

    @DBOS.step()
    def noop_step() -> None:
        pass

    @DBOS.workflow()
    def noop_workflow(stages: int) -> None:
        for _ in range(stages):
            noop_step()

    config: Any = {
        "name": "checkmate-bench",
        "system_database_url": system_database_url,
        "run_admin_server": False,  # no HTTP port: nothing but the database
        "log_level": "WARNING",
    }
    with contextlib.redirect_stdout(sys.stderr):
        DBOS(config=config)
        DBOS.launch()

    def run(stages: int) -> float:
        begin = time.perf_counter()
        noop_workflow(stages)
        return time.perf_counter() - begin

    try:
        run(3)  # warm up: schema, connection pool, first-call paths
        yield run
    finally:
        DBOS.destroy(destroy_registry=True)


def dbos_available() -> bool:
    """Whether DBOS can be imported (the ``bench`` extra is installed)."""
    try:
        import dbos  # noqa: F401
    except ImportError:
        return False
    return True
