"""PostgreSQL connection faults for the fault campaign: the server drops the task's connections mid-task.

An admin connection (to the server's ``postgres`` database, so it is never among the victims) runs
``pg_terminate_backend`` on every backend of the task's database: the real server closing the
sockets, as a restart or a failover does. Two variants at each position (before bind, mid-way
through each stage while its code waits, before unbind):

- ``drop``: connections dropped, the server accepts new ones. The pool's pre-ping must notice and
  reconnect, so the task completes.
- ``drop+refuse``: connections dropped and the database refuses new ones
  (``ALTER DATABASE ... ALLOW_CONNECTIONS false``) until the run has failed. The next write must fail
  with TaskIOException naming the object and the database error; after connections are allowed
  again, a new bind resumes and completes.

Only the campaign's own fresh database is touched; the server is never restarted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from airflow_checkmate.checkmate import TaskIO, sqldb
from reliability.fault_stages import HOOKS, make_stages, resume, run_task
from reliability.faults import LEASE_SECONDS, evaluate, gist
from reliability.report import Report

VARIANTS = ("drop", "drop+refuse")


class Dropper:
    """Drops (and optionally refuses) the connections of one database; remembers what was stored then."""

    def __init__(self, url: str, task_id: str, refuse: bool) -> None:
        self.database = str(make_url(url).database)
        self.admin: Engine = create_engine(
            sqldb.parse_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool
        )
        self.reader: Engine = create_engine(sqldb.parse_url(url), poolclass=NullPool)
        self.task_id = task_id
        self.refuse = refuse
        self.fired = 0
        self.snapshot: dict[str, bytes] | None = None

    def objects(self) -> dict[str, bytes]:
        """The task's stored rows, name -> data, read on a connection of its own."""
        with self.reader.connect() as conn:
            rows = conn.execute(
                text("SELECT name, data FROM checkmate_objects WHERE task_key = :key"), {"key": self.task_id}
            )
            return {name: bytes(data) for name, data in rows}

    def drop(self) -> None:
        if self.snapshot is None:
            self.snapshot = self.objects()
        quoted = '"' + self.database.replace('"', '""') + '"'
        with self.admin.connect() as conn:
            if self.refuse:
                conn.execute(text(f"ALTER DATABASE {quoted} WITH ALLOW_CONNECTIONS false"))
            query = "SELECT pid FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"
            pids = [row[0] for row in conn.execute(text(query), {"db": self.database})]
            for pid in pids:
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            self.fired += len(pids)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and conn.execute(text(query), {"db": self.database}).first():
                time.sleep(0.05)  # terminated backends linger briefly; a refused DB must be empty

    def allow(self) -> None:
        if self.refuse:
            quoted = '"' + self.database.replace('"', '""') + '"'
            with self.admin.connect() as conn:
                conn.execute(text(f"ALTER DATABASE {quoted} WITH ALLOW_CONNECTIONS true"))

    def close(self) -> None:
        self.admin.dispose()
        self.reader.dispose()


def _mid_stage(dropper: Dropper, key: str) -> Callable[[str], None]:
    """A stage hook: while stage ``key``'s code waits, another thread drops the connections."""

    def hook(started: str) -> None:
        if started != key:
            return
        done = threading.Event()

        def admin() -> None:
            try:
                dropper.drop()
            finally:
                done.set()

        worker = threading.Thread(target=admin, name="pg-dropper")
        worker.start()
        done.wait(30)  # the stage's code waits here, mid-stage, while its connections are dropped
        worker.join(30)

    return hook


def pg_case(report: Report, url: str, io: TaskIO, variant: str, position: str, stages: int) -> int:
    task_id = f"pg-{variant.replace('+', '-')}-{position.replace(' ', '-')}"
    dropper = Dropper(url, task_id, refuse=variant == "drop+refuse")
    hook_name = f"pg-{task_id}"
    kwargs: dict[str, Any] = {}
    if position == "before bind":
        dropper.snapshot = {}
        kwargs["before_bind"] = dropper.drop
    elif position == "before unbind":
        kwargs["before_unbind"] = dropper.drop
    else:
        HOOKS[hook_name] = _mid_stage(dropper, f"{task_id}/{position.split()[-1]}")
    try:
        outcome = run_task(io, task_id, make_stages(task_id, stages, hook=hook_name), **kwargs)
    finally:
        dropper.allow()
        HOOKS.pop(hook_name, None)
    after_run = dropper.objects()
    resume_error = resume(io, task_id, stages, lock_timeout=LEASE_SECONDS * 3)
    label = f"postgresql {variant} {position}"
    report.check(dropper.fired > 0, f"{label}: no backend was terminated (the case proved nothing)")
    expect = "complete" if variant == "drop" else "failed: OperationalError"
    resumed, intact = evaluate(
        report, label, task_id, dropper.snapshot, after_run, dropper.objects(), outcome, resume_error, expect, stages
    )
    cell = gist(outcome.error, f"{sqldb.safe_url(sqldb.parse_url(url))}#{task_id}/")
    cell = f"{outcome.where}: {cell}" if outcome.where else cell
    report.row("postgresql", variant, position, dropper.fired, cell, resumed, intact)
    dropper.close()
    return dropper.fired


def pg_positions(stages: int) -> list[str]:
    return ["before bind", *(f"mid-stage s{k}" for k in range(1, stages + 1)), "before unbind"]


def pg_cases(report: Report, url: str, stages: int, positions: list[str] | None = None) -> int:
    """Both variants at every position on the (fresh) database ``url``; returns backends terminated."""
    io = TaskIO.from_base_url(url, lease_seconds=LEASE_SECONDS)
    fired = 0
    for variant in VARIANTS:
        for position in positions or pg_positions(stages):
            fired += pg_case(report, url, io, variant, position, stages)
    return fired
