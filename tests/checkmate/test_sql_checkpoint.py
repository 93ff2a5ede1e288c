"""TaskIOSQL checkpoints (``commit``) and whole-task reads (``read_prefix``) on SQLite and PostgreSQL.

Proves that a checkpoint is one transaction: a reader in another process sees every checkpoint whole,
never a mix of two; a fenced checkpoint after a takeover is refused and changes nothing; a takeover
waits for a fenced checkpoint in flight and then sees it (PostgreSQL: observed in ``pg_stat_activity``);
on PostgreSQL a checkpoint, a read, a lease change is ONE statement in autocommit (one round trip); a
connection the server dropped is replaced without failing the write. Each test uses task ids of its own,
so the session's PostgreSQL database is shared safely.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from airflow_checkmate.checkmate import Fence, LeaseLostException, TaskEngineException, TaskIO, TaskIOSQL, sqldb
from support.pg import fresh_database
from support.processes import ROOT, child_env
from support.waiting import wait_for


def lease(token: str) -> str:
    return json.dumps({"token": token})


@pytest.fixture
def task() -> str:
    """A task id no other test uses."""
    return f"cp{uuid.uuid4().hex[:10]}"


@pytest.fixture
def sql_io(db_url: str) -> TaskIOSQL:
    io = TaskIO.from_base_url(db_url)
    assert isinstance(io, TaskIOSQL)
    return io


@contextlib.contextmanager
def statements_of(io: TaskIOSQL) -> Iterator[list[str]]:
    """Every SQL statement sent through ``io``'s engine while the context is open."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    event.listen(io.engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(io.engine, "before_cursor_execute", record)


# --------------------------------------------------------------------------- what a checkpoint does


def test_commit_applies_each_objects_last_change(sql_io: TaskIOSQL, task: str) -> None:
    sql_io.write(f"{task}/a.json", b"a1")
    sql_io.write(f"{task}/b.json", b"b1")
    sql_io.write(f"{task}x/a.json", b"neighbour")  # a task whose id starts with this one's
    sql_io.lease_create(f"{task}/task.lock", lease("me"))
    sql_io.commit(
        [
            (f"{task}/a.json", b"a2"),
            (f"{task}/b.json", None),
            (f"{task}/c.json", b"c1"),
            (f"{task}/a.json", b"a3"),
            (f"{task}/d.json", b"d1"),
            (f"{task}/d.json", None),
            (f"{task}/e.json", None),
        ],
        fence=Fence(f"{task}/task.lock", "me"),
    )
    assert sql_io.read_prefix(f"{task}/") == {
        f"{task}/a.json": b"a3",
        f"{task}/c.json": b"c1",
        f"{task}/task.lock": lease("me").encode(),
    }
    assert list(sql_io.read_prefix(f"{task}/")) == sql_io.list(f"{task}/"), "read_prefix is not sorted by name"
    assert sql_io.read_prefix(f"{task}x/") == {f"{task}x/a.json": b"neighbour"}
    sql_io.commit([])  # nothing to do: no error, nothing changed
    assert sql_io.read_bytes(f"{task}/a.json") == b"a3"


def test_fenced_commit_after_a_takeover_changes_nothing(sql_io: TaskIOSQL, task: str) -> None:
    lock = f"{task}/task.lock"
    sql_io.lease_create(lock, lease("old"))
    sql_io.commit([(f"{task}/s1.json", b"RUNNING"), (f"{task}/cancel.json", b"x")], fence=Fence(lock, "old"))
    assert sql_io.lease_swap(lock, lease("old"), lease("new"))
    before = sql_io.read_prefix(f"{task}/")
    for changes in (
        [(f"{task}/s1.json", b"COMPLETE"), (f"{task}/s2.json", b"RUNNING")],
        [(f"{task}/s1.json", b"COMPLETE"), (f"{task}/cancel.json", None)],
        [(f"{task}/cancel.json", None)],
    ):
        with pytest.raises(LeaseLostException, match="nothing was changed"):
            sql_io.commit(changes, fence=Fence(lock, "old"))
        assert sql_io.read_prefix(f"{task}/") == before, "a refused checkpoint changed the task"
    sql_io.commit([(f"{task}/s1.json", b"COMPLETE"), (f"{task}/cancel.json", None)], fence=Fence(lock, "new"))
    assert sql_io.read_prefix(f"{task}/") == {f"{task}/s1.json": b"COMPLETE", lock: lease("new").encode()}


def test_commit_with_one_invalid_name_stores_nothing(sql_io: TaskIOSQL, task: str) -> None:
    sql_io.write(f"{task}/a.json", b"kept")
    with statements_of(sql_io) as sent, pytest.raises(TaskEngineException, match="invalid object name"):
        sql_io.commit([(f"{task}/a.json", b"changed"), ("../evil", b"x")])
    assert sent == [] and sql_io.read_prefix(f"{task}/") == {f"{task}/a.json": b"kept"}


def test_every_postgresql_operation_is_one_autocommit_statement(postgres_url: str, task: str) -> None:
    io = TaskIOSQL(postgres_url)
    lock, fence = f"{task}/task.lock", Fence(f"{task}/task.lock", "me")
    io.lease_create(lock, lease("me"))
    calls: list[tuple[str, Callable[[], object]]] = [
        ("commit", lambda: io.commit([(f"{task}/a.json", b"1"), (f"{task}/b.json", b"2")], fence=fence)),
        ("commit with a removal", lambda: io.commit([(f"{task}/a.json", None), (f"{task}/c", b"3")], fence=fence)),
        ("write", lambda: io.write(f"{task}/b.json", b"4", fence=fence)),
        ("remove", lambda: io.remove(f"{task}/b.json", fence=fence)),
        ("read_prefix", lambda: io.read_prefix(f"{task}/")),
        ("read", lambda: io.read_bytes(f"{task}/c")),
        ("lease_swap", lambda: io.lease_swap(lock, lease("me"), lease("me"))),
        ("check_fence", lambda: io.check_fence(fence)),
    ]
    for what, call in calls:
        with statements_of(io) as sent:
            call()
        assert len(sent) == 1, f"{what}: {sent}"
        assert not sent[0].lstrip().upper().startswith(("BEGIN", "COMMIT", "SELECT 1")), f"{what}: {sent}"
    in_autocommit: list[bool] = []
    event.listen(
        io.engine,
        "before_cursor_execute",
        lambda conn, *_: in_autocommit.append(conn.connection.driver_connection.autocommit),
    )
    for _, call in calls:
        call()
    assert in_autocommit and all(in_autocommit), (
        "a statement ran inside a transaction (BEGIN and COMMIT: 2 more round trips)"
    )


# --------------------------------------------------------------------------- readers and takeovers

WRITER = """
import sys
from airflow_checkmate.checkmate import TaskIO
io, task = TaskIO.from_base_url(sys.argv[1]), sys.argv[2]
for i in range(1, int(sys.argv[3]) + 1):
    v = str(i).encode()
    io.commit([(f"{task}/a.json", v), (f"{task}/m{i}.json", v), (f"{task}/m{i - 1}.json", None), (f"{task}/b.json", v)])
"""


def test_a_reader_in_another_process_sees_whole_checkpoints(db_url: str, task: str) -> None:
    io = TaskIOSQL(db_url)
    io.commit([(f"{task}/a.json", b"0"), (f"{task}/m0.json", b"0"), (f"{task}/b.json", b"0")])
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, db_url, task, "150"], cwd=ROOT, env=child_env(), stderr=subprocess.PIPE
    )
    seen: set[bytes] = set()
    try:
        while writer.poll() is None:
            found = io.read_prefix(f"{task}/")
            version = found[f"{task}/a.json"]
            assert found == {
                f"{task}/a.json": version,
                f"{task}/b.json": version,
                f"{task}/m{version.decode()}.json": version,
            }, "a reader saw part of a checkpoint"
            seen.add(version)
    finally:
        writer.wait(120)
    assert writer.returncode == 0, writer.stderr.read() if writer.stderr else ""
    assert io.read_prefix(f"{task}/")[f"{task}/b.json"] == b"150"
    assert len(seen) > 1, "the reader never overlapped the writer"


def waiting_on_a_lock(admin: Any, database: str, start: str) -> bool:
    """True once a backend of ``database`` running a statement that starts with ``start`` waits on a lock."""
    with admin.connect() as conn:
        rows = conn.execute(
            text("SELECT query FROM pg_stat_activity WHERE datname = :db AND wait_event_type = 'Lock'"),
            {"db": database},
        )
        return any(query.lstrip().startswith(start) for (query,) in rows)


@pytest.mark.parametrize("op", ["commit", "write", "remove"])
def test_takeover_waits_for_a_fenced_checkpoint_in_flight_on_postgresql(postgres_url: str, task: str, op: str) -> None:
    """The checkpoint holds the lease row's share lock until it commits; the takeover's UPDATE queues behind it.

    To hold the checkpoint in flight, another transaction locks a row it changes: the checkpoint has
    then locked the lease row and waits. Both waits are read from ``pg_stat_activity``, not timed.
    """
    io, other = TaskIOSQL(postgres_url), TaskIOSQL(postgres_url)
    lock, obj = f"{task}/task.lock", f"{task}/s1.json"
    io.lease_create(lock, lease("old"))
    io.write(obj, b"RUNNING")
    changes = {
        "commit": lambda: io.commit([(obj, b"COMPLETE"), (f"{task}/s2.json", b"RUNNING")], fence=Fence(lock, "old")),
        "write": lambda: io.write(obj, b"COMPLETE", fence=Fence(lock, "old")),
        "remove": lambda: io.remove(obj, fence=Fence(lock, "old")),
    }
    database = str(make_url(postgres_url).database)
    admin = create_engine(sqldb.parse_url(postgres_url), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    blocker = create_engine(sqldb.parse_url(postgres_url), poolclass=NullPool).connect()
    blocker.execute(text("SELECT 1 FROM checkmate_objects WHERE name = :n FOR UPDATE"), {"n": obj})
    outcome: dict[str, Any] = {}

    def run(key: str, call: Callable[[], object]) -> None:
        try:
            outcome[key] = call()
        except BaseException as exc:
            outcome[key] = exc

    change = threading.Thread(target=run, args=("change", changes[op]))
    swap = threading.Thread(target=run, args=("swap", lambda: other.lease_swap(lock, lease("old"), lease("new"))))
    try:
        change.start()
        wait_for(lambda: waiting_on_a_lock(admin, database, "WITH lease"), 20, "the checkpoint to wait on the blocker")
        swap.start()
        wait_for(lambda: waiting_on_a_lock(admin, database, "UPDATE"), 20, "the takeover to wait on the checkpoint")
        assert "swap" not in outcome
    finally:
        blocker.rollback()
        blocker.close()
        change.join(30)
        swap.join(30)
        admin.dispose()
    assert outcome == {"change": None if op != "remove" else True, "swap": True}
    expected = {"commit": b"COMPLETE", "write": b"COMPLETE", "remove": None}[op]
    assert other.read_prefix(f"{task}/").get(obj) == expected, "the new holder does not see the checkpoint"
    with pytest.raises(LeaseLostException):
        io.write(obj, b"after the takeover", fence=Fence(lock, "old"))


@pytest.mark.parametrize("op", ["commit", "write", "remove"])
def test_takeover_waits_for_a_fenced_checkpoint_in_flight_on_sqlite(tmp_path: Any, task: str, op: str) -> None:
    """SQLite: the checkpoint holds the database write lock from BEGIN IMMEDIATE to COMMIT."""
    url = f"sqlite:///{tmp_path / 'checkmate.db'}"
    io, lock, obj = TaskIOSQL(url), f"{task}/task.lock", f"{task}/s1.json"
    io.lease_create(lock, lease("old"))
    io.write(obj, b"RUNNING")
    paused, resume = threading.Event(), threading.Event()
    changes = {
        "commit": lambda: io.commit([(obj, b"COMPLETE"), (f"{task}/s2.json", b"RUNNING")], fence=Fence(lock, "old")),
        "write": lambda: io.write(obj, b"COMPLETE", fence=Fence(lock, "old")),
        "remove": lambda: io.remove(obj, fence=Fence(lock, "old")),
    }

    def pause(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if threading.current_thread() is change and statement.lstrip().startswith(("INSERT", "DELETE")):
            paused.set()
            resume.wait(20)

    outcome: dict[str, Any] = {}
    change = threading.Thread(target=lambda: outcome.update(change=changes[op]()))
    swap = threading.Thread(target=lambda: outcome.update(swap=io.lease_swap(lock, lease("old"), lease("new"))))
    event.listen(io.engine, "before_cursor_execute", pause)
    try:
        change.start()
        assert paused.wait(20), "the checkpoint never reached its change"
        swap.start()
        swap.join(0.5)
        assert "swap" not in outcome, "the lease was taken over while a checkpoint held the write lock"
    finally:
        resume.set()
        change.join(30)
        swap.join(30)
        event.remove(io.engine, "before_cursor_execute", pause)
    assert outcome == {"change": None if op != "remove" else True, "swap": True}
    assert io.read_prefix(f"{task}/").get(obj) == (None if op == "remove" else b"COMPLETE")


# --------------------------------------------------------------------------- a dropped connection


@pytest.fixture
def own_database(postgres_url: str) -> Iterator[str]:
    """A database of this test's own on the session's server: dropping its connections touches no other test."""
    server = make_url(postgres_url).set(database="postgres").render_as_string(hide_password=False)
    with fresh_database(server, "checkmate_drop") as url:
        yield url
        for durable in (True, False):
            sqldb.get_engine(url, durable).dispose()


def test_a_connection_the_server_dropped_is_replaced_without_failing_the_write(own_database: str, task: str) -> None:
    postgres_url = own_database
    io = TaskIOSQL(postgres_url)
    lock = f"{task}/task.lock"
    assert io.lease_create(lock, lease("me"))
    io.write(f"{task}/a.json", b"1", fence=Fence(lock, "me"))  # a pooled connection, used a moment ago
    admin = create_engine(
        sqldb.parse_url(postgres_url).set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    with admin.connect() as conn:
        dropped = conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"),
            {"db": make_url(postgres_url).database},
        ).all()
    admin.dispose()
    assert dropped, "no connection to drop"
    io.commit([(f"{task}/a.json", b"2"), (f"{task}/b.json", b"2")], fence=Fence(lock, "me"))
    assert io.read_prefix(f"{task}/") == {f"{task}/a.json": b"2", f"{task}/b.json": b"2", lock: lease("me").encode()}
    assert io.lease_swap(lock, lease("me"), lease("me2"))
