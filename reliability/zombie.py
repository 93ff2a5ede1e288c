"""Zombie fencing: a holder paused past its lease, taken over, then resumed, must not write.

Each round: process A runs a 4-stage task with a 1 s lease and is paused with SIGSTOP in stage s2 (at a
moment it holds no storage lock: the task folder's flock, or a PostgreSQL transaction). Once its lease has
expired, process B binds, takes the lease over, runs s2 again and is paused in s3. A is resumed with
SIGCONT: it finishes its s2 code, and its write must be refused (``LeaseLostException``, run_task exit 4)
with the storage byte for byte as B left it; then B is resumed and must complete with the crash-free
result. After the round: the takeover is recorded once, naming A; s2's history shows A's attempt, B's
attempt and B's COMPLETE; A's stage code never ran on to s3; no lease is left.

Violations: a write not refused, an object changed or removed by A (*overwritten*), a stored object that
does not parse (*corrupt*), B not completing, A running on. Full size: 20 rounds on file storage and 20 on
PostgreSQL (a fresh database); ``--backends sqlite s3`` adds a SQLite file and a moto S3 server.
``tests/checkmate/test_lock.py`` runs a round on each.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from reliability import kill_child
from reliability.kill_store import Store, file_store, postgres_store, sqlite_store
from reliability.report import Report
from reliability.zombie_round import Outcome, run_round
from support import pg
from support.waiting import proc_state


def pause(pid: int, holds_storage_lock: Callable[[], bool]) -> None:
    """SIGSTOP ``pid`` at a moment it holds no storage lock (else the others would block on it)."""
    for _ in range(500):
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while proc_state(pid) not in ("T", "t"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"pid {pid} did not stop")
            time.sleep(0.001)
        if not holds_storage_lock():
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.003)
    raise TimeoutError(f"could not pause pid {pid} outside of a storage lock")


def file_lock_probe(base: Path, task_id: str) -> Callable[[], bool]:
    """True while some process holds the flock of the task's folder."""
    import fcntl

    def held() -> bool:
        fd = os.open(base / task_id, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    return held


@contextlib.contextmanager
def postgres_lock_probe(url: str) -> Iterator[Callable[[], bool]]:
    """True while another session of the database is inside a transaction (it may hold row locks)."""
    from sqlalchemy import create_engine, text

    from airflow_checkmate.checkmate import sqldb

    engine = create_engine(sqldb.parse_url(url), isolation_level="AUTOCOMMIT", pool_size=1)
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND state NOT IN ('idle') AND backend_type = 'client backend'"
    )

    def held() -> bool:
        with engine.connect() as conn:
            return bool(conn.execute(query).scalar())

    try:
        yield held
    finally:
        engine.dispose()


Probe = Callable[[str], Callable[[], bool]]  # task id -> "is a storage lock held now?"


def sqlite_lock_probe(database: Path) -> Callable[[], bool]:
    """True while some process holds the SQLite database's write lock (a checkpoint in flight)."""
    import sqlite3

    def held() -> bool:
        conn = sqlite3.connect(database, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return True
        finally:
            conn.close()  # rolls back the empty transaction
        return False

    return held


@contextlib.contextmanager
def store_and_probe(name: str, tmp: Path, database_url: str | None) -> Iterator[tuple[Store, Probe]]:
    """The backend's store, and for a task id the probe telling whether a storage lock is held now."""
    if name == "file":
        (tmp / "store").mkdir()
        yield file_store(tmp / "store"), lambda task_id: file_lock_probe(tmp / "store", task_id)
    elif name == "sqlite":
        with sqlite_store(tmp / "checkmate.db") as store:
            yield store, lambda _task_id: sqlite_lock_probe(tmp / "checkmate.db")
    elif name == "s3":
        from reliability.kill_s3 import s3_campaign_store

        with s3_campaign_store() as store:
            yield store, lambda _task_id: lambda: False  # S3 holds no lock between requests
    else:
        assert database_url is not None
        with postgres_store(database_url) as store, postgres_lock_probe(database_url) as in_transaction:
            yield store, lambda _task_id: in_transaction


def run_backend(rounds: int, tmp: Path, database_url: str | None = None, name: str = "") -> list[Outcome]:
    """``rounds`` rounds on the backend ``name`` (file, sqlite, s3; postgresql in ``database_url``)."""
    name = name or ("postgresql" if database_url else "file")
    ctx = kill_child.forkserver(s3=name == "s3")
    with store_and_probe(name, tmp, database_url) as (store, probe):
        outcomes = []
        for i in range(rounds):
            held = probe(f"zombie-{i}")

            def pause_outside_locks(pid: int, held: Callable[[], bool] = held) -> None:
                pause(pid, held)

            outcomes.append(run_round(ctx, store, f"zombie-{i}", tmp, pause_outside_locks))
        return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.zombie", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds per backend")
    parser.add_argument(
        "--backends", nargs="+", default=["file", "postgresql"], choices=["file", "sqlite", "postgresql", "s3"]
    )
    parser.add_argument("--postgres-url", default=None, help="server (a fresh database is made on it)")
    args = parser.parse_args(argv)
    report = Report(
        "zombie fencing: a holder paused (SIGSTOP) past its 1 s lease, taken over, resumed (SIGCONT)",
        ["backend", "rounds", "writes refused", "zombie ran on", "objects overwritten", "corrupt",
         "new holder completed", "seconds"],
    )  # fmt: skip
    for name in args.backends:
        began = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"checkmate-zombie-{name}-") as tmp, contextlib.ExitStack() as stack:
            url = None
            if name == "postgresql":
                server = pg.server_url(args.postgres_url)
                if server is None:
                    report.violation(f"skipped postgresql: no server (--postgres-url or {' / '.join(pg.ENV_VARS)})")
                    continue
                url = stack.enter_context(pg.fresh_database(server, "checkmate_zombie"))
            outcomes = run_backend(args.rounds, Path(tmp), url, name)
        report.row(
            name, len(outcomes), sum(o.refused for o in outcomes), sum(o.ran_on for o in outcomes),
            sum(o.overwritten for o in outcomes), sum(o.corrupt for o in outcomes),
            sum(o.completed for o in outcomes), time.monotonic() - began,
        )  # fmt: skip
        for index, outcome in enumerate(outcomes):
            report.violations.extend(f"{name} round {index}: {v}" for v in outcome.violations)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
