"""TaskIOSQL, the database storage: the TaskIO contract on SQLite and on PostgreSQL.

Every test runs twice through the ``db_url`` fixture (a SQLite file, then PostgreSQL); on PostgreSQL each
test gets a database of its own, so listings see only that test's objects. Covers whole-object writes
(bytes kept exact), listing by prefix, name validation before any storage call, the lease primitives,
fenced writes refused after a takeover, the schema version guard, the hidden password, and an engine
task run to COMPLETE and resumed after a RETRY.
Checkpoints, whole-task reads and a takeover racing a fenced write: test_sql_checkpoint.py.
"""

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url

from airflow_checkmate.checkmate import (
    CheckMateEngine,
    Fence,
    LeaseLostException,
    PersistenceDataNotFoundException,
    RetryPolicy,
    StageStatus,
    TaskEngineException,
    TaskEngineState,
    TaskIO,
    TaskIOException,
    TaskIOSQL,
    read_snapshot,
    sqldb,
)
from support.processes import run_python, run_task_process
from support.stages import expected_result, make_stages, read_journal

LOCK = "t/task.lock"
NON_UTF8 = b"\xff\xfe\x00 not text \x80\xc3("


def lease(token: str, **extra: Any) -> str:
    """A lease text as the engine stores it: JSON with the owner token."""
    return json.dumps({"token": token, **extra})


def contents(io: TaskIO) -> dict[str, bytes]:
    """Every stored object, byte for byte."""
    return {name: io.read_bytes(name) for name in io.list("")}


def starts(journal: Path) -> list[str]:
    """The stage names whose code started, in order, from the journal the stage code writes."""
    return [w[1] for w in read_journal(journal) if w[0] == "start"]


@pytest.fixture
def store_url(db_url: str) -> Iterator[str]:
    """``db_url``; on PostgreSQL a fresh database of this test's own (dropped after)."""
    if not db_url.startswith("postgresql"):
        yield db_url
        return
    server = make_url(db_url)
    name = f"{server.database}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(sqldb.parse_url(db_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        for durable in (True, False):
            sqldb.get_engine(url, durable).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sql_io(store_url: str) -> TaskIOSQL:
    """Database storage on a fresh database."""
    io = TaskIO.from_base_url(store_url)
    assert isinstance(io, TaskIOSQL)
    return io


# --------------------------------------------------------------------------- factory


def test_from_base_url_picks_the_sql_backend(store_url: str) -> None:
    io = TaskIO.from_base_url(store_url, lease_seconds=7)
    assert isinstance(io, TaskIOSQL) and io.lease_seconds == 7
    if store_url.startswith("postgresql://"):
        alias = TaskIO.from_base_url("postgres://" + store_url[len("postgresql://") :])
        assert isinstance(alias, TaskIOSQL)
        alias.write("t/a.json", "via alias")
        assert io.read("t/a.json") == "via alias"
    with pytest.raises(TaskEngineException, match="names no file"):
        TaskIO.from_base_url("sqlite://")
    with pytest.raises(TaskEngineException, match="lease_seconds must be positive"):
        TaskIO.from_base_url(store_url, lease_seconds=0)


# --------------------------------------------------------------------------- objects


def test_write_read_round_trip_of_text_and_bytes(sql_io: TaskIOSQL) -> None:
    sql_io.write("t/text.json", '{"name": "héllo ✓"}')
    sql_io.write("t/bytes.json", b'{"x": 1}')
    sql_io.write("t/raw.bin", NON_UTF8)
    sql_io.write("t/empty.json", b"")
    assert sql_io.read("t/text.json") == '{"name": "héllo ✓"}'
    assert sql_io.read_bytes("t/text.json") == '{"name": "héllo ✓"}'.encode()
    assert sql_io.read("t/bytes.json") == '{"x": 1}'
    assert sql_io.read_bytes("t/raw.bin") == NON_UTF8
    assert sql_io.read_bytes("t/empty.json") == b"" and sql_io.exists("t/empty.json")
    with pytest.raises(PersistenceDataNotFoundException, match=r"t/raw\.bin is not UTF-8 text"):
        sql_io.read("t/raw.bin")
    assert sql_io.read_bytes("t/raw.bin") == NON_UTF8, "a failed read changed the object"


def test_overwrite_replaces_the_whole_object(sql_io: TaskIOSQL) -> None:
    sql_io.write("t/a.json", "x" * 10_000)
    sql_io.write("t/a.json", b"short")
    assert sql_io.read_bytes("t/a.json") == b"short"
    sql_io.write("t/a.json", NON_UTF8)
    assert sql_io.read_bytes("t/a.json") == NON_UTF8
    assert sql_io.list("") == ["t/a.json"]


def test_exists_remove_and_missing_object(sql_io: TaskIOSQL) -> None:
    sql_io.write("t/a.json", "1")
    assert sql_io.exists("t/a.json") and not sql_io.exists("t/none.json")
    assert sql_io.remove("t/a.json") is True
    assert sql_io.remove("t/a.json") is False
    assert not sql_io.exists("t/a.json")
    for read in (sql_io.read, sql_io.read_bytes):
        with pytest.raises(PersistenceDataNotFoundException, match=r"#t/a\.json does not exist"):
            read("t/a.json")
    assert sql_io.list("") == []


def test_list_returns_one_tasks_objects_sorted(sql_io: TaskIOSQL) -> None:
    for name in ("t1/task.json", "t10/task.json", "t1/b.stage.json", "t2/task.json", "t1/a.stage.json"):
        sql_io.write(name, "{}")
    assert sql_io.list("t1/") == ["t1/a.stage.json", "t1/b.stage.json", "t1/task.json"]
    assert sql_io.list("t10/") == ["t10/task.json"]
    assert sql_io.list("t1/b") == ["t1/b.stage.json"]
    assert sql_io.list("t1") == ["t1/a.stage.json", "t1/b.stage.json", "t1/task.json", "t10/task.json"]
    assert sql_io.list("") == [
        "t1/a.stage.json",
        "t1/b.stage.json",
        "t1/task.json",
        "t10/task.json",
        "t2/task.json",
    ]
    assert sql_io.list("nothing/") == []


def test_build_url_names_the_database_and_the_object(sql_io: TaskIOSQL, store_url: str) -> None:
    url = sql_io.build_url("t/task.json")
    assert url.endswith("#t/task.json")
    assert make_url(url.partition("#")[0]).database == make_url(store_url).database


def test_readers_never_see_a_half_written_object(store_url: str) -> None:
    """A reader in another thread sees one whole version or another while a large object is replaced."""
    io = TaskIOSQL(store_url, durable=False)
    versions = [json.dumps({"v": i, "pad": str(i) * 200_000}).encode() for i in range(4)]
    io.write("t/obj.json", versions[0])
    stop = threading.Event()
    bad: list[bytes] = []
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            data = io.read_bytes("t/obj.json")
            reads[0] += 1
            if data not in versions:
                bad.append(data[:80])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(30):
            io.write("t/obj.json", versions[i % 4])
    finally:
        stop.set()
        thread.join(30)
    assert bad == [] and reads[0] > 0
    assert io.list("") == ["t/obj.json"]


# --------------------------------------------------------------------------- names

BAD_NAMES = ["../x", "a//b", "/abs", "", "t/../x", "t/./x", "t/", "t/a b"]


def _calls(io: TaskIOSQL, name: str) -> list[tuple[str, Callable[[], object]]]:
    fence = Fence(LOCK, "mine")
    return [
        ("read", lambda: io.read(name)),
        ("read_bytes", lambda: io.read_bytes(name)),
        ("write", lambda: io.write(name, "evil")),
        ("fenced write", lambda: io.write(name, "evil", fence=fence)),
        ("exists", lambda: io.exists(name)),
        ("remove", lambda: io.remove(name)),
        ("fenced remove", lambda: io.remove(name, fence=fence)),
        ("lease_read", lambda: io.lease_read(name)),
        ("lease_create", lambda: io.lease_create(name, lease("evil"))),
        ("lease_swap", lambda: io.lease_swap(name, lease("mine"), lease("evil"))),
        ("lease_swap None", lambda: io.lease_swap(name, lease("mine"), None)),
    ]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_object_names_are_refused_before_any_storage_call(sql_io: TaskIOSQL, name: str) -> None:
    sql_io.lease_create(LOCK, lease("mine"))
    sql_io.write("t/x", "kept")
    before = contents(sql_io)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(sql_io.engine, "before_cursor_execute", count)
    try:
        for what, call in _calls(sql_io, name):
            with pytest.raises(TaskEngineException, match="invalid object name"):
                call()
            assert statements == [], f"{what}({name!r}) reached the database: {statements}"
    finally:
        event.remove(sql_io.engine, "before_cursor_execute", count)
    assert contents(sql_io) == before


@pytest.mark.parametrize("prefix", ["../", "/abs/", "../etc/", "a b/"])
def test_list_refuses_a_prefix_that_is_not_a_task(sql_io: TaskIOSQL, prefix: str) -> None:
    sql_io.write("t/x", "kept")
    with pytest.raises(TaskEngineException, match="invalid object name"):
        sql_io.list(prefix)


def test_check_fence_refuses_an_invalid_lock_name_like_the_file_backend(sql_io: TaskIOSQL) -> None:
    with pytest.raises(TaskEngineException, match="invalid object name"):
        sql_io.check_fence(Fence("../x", "mine"))


# --------------------------------------------------------------------------- leases


def test_lease_create_is_exclusive_and_swap_is_compare_and_set(sql_io: TaskIOSQL) -> None:
    assert sql_io.lease_read(LOCK) is None
    assert sql_io.lease_swap(LOCK, lease("a"), lease("b")) is False, "swapped a lease that does not exist"
    assert sql_io.lease_read(LOCK) is None
    assert sql_io.lease_create(LOCK, lease("a")) is True
    assert sql_io.lease_create(LOCK, lease("b")) is False
    assert sql_io.lease_read(LOCK) == lease("a")
    assert sql_io.lease_swap(LOCK, lease("zzz"), lease("b")) is False
    assert sql_io.lease_swap(LOCK, lease("a") + " ", lease("b")) is False, "compared other than the exact text"
    assert sql_io.lease_swap(LOCK, json.dumps({"token": "a"}, indent=1), lease("b")) is False
    assert sql_io.lease_read(LOCK) == lease("a")
    assert sql_io.lease_swap(LOCK, lease("a"), lease("b", heartbeat_at=1.5)) is True
    assert sql_io.lease_read(LOCK) == lease("b", heartbeat_at=1.5)
    assert sql_io.lease_swap(LOCK, lease("a"), None) is False
    assert sql_io.lease_read(LOCK) == lease("b", heartbeat_at=1.5)
    assert sql_io.lease_swap(LOCK, lease("b", heartbeat_at=1.5), None) is True
    assert sql_io.lease_read(LOCK) is None and not sql_io.exists(LOCK)
    assert sql_io.lease_swap(LOCK, lease("b", heartbeat_at=1.5), None) is False
    assert sql_io.lease_create(LOCK, lease("c")) is True, "a released lease cannot be taken again"
    assert sql_io.list("") == [LOCK]


def test_lease_create_does_not_replace_an_existing_object(sql_io: TaskIOSQL) -> None:
    sql_io.write(LOCK, NON_UTF8)
    assert sql_io.lease_create(LOCK, lease("a")) is False
    assert sql_io.read_bytes(LOCK) == NON_UTF8


def test_many_threads_racing_lease_create_get_one_winner(store_url: str) -> None:
    io = TaskIOSQL(store_url, durable=False)
    wins: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def contender(i: int) -> None:
        try:
            barrier.wait(10)
            if io.lease_create("race/task.lock", lease(str(i))):
                wins.append(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(wins) == 1
    assert json.loads(io.lease_read("race/task.lock") or "{}")["token"] == str(wins[0])


# --------------------------------------------------------------------------- fencing


def test_fenced_write_and_remove_refused_once_the_lease_changed(sql_io: TaskIOSQL) -> None:
    sql_io.lease_create(LOCK, lease("mine"))
    mine = Fence(LOCK, "mine")
    sql_io.check_fence(mine)
    sql_io.write("t/a.json", NON_UTF8, fence=mine)
    sql_io.write("t/b.json", "b", fence=mine)
    assert sql_io.remove("t/b.json", fence=mine) is True
    assert sql_io.lease_swap(LOCK, lease("mine"), lease("theirs")) is True
    before = contents(sql_io)

    with pytest.raises(LeaseLostException, match="refused"):
        sql_io.write("t/a.json", "2", fence=mine)
    with pytest.raises(LeaseLostException):
        sql_io.write("t/new.json", "2", fence=mine)
    with pytest.raises(LeaseLostException):
        sql_io.remove("t/a.json", fence=mine)
    with pytest.raises(LeaseLostException):
        sql_io.check_fence(mine)
    assert contents(sql_io) == before, "a stale fence changed the stored objects"
    assert sql_io.read_bytes("t/a.json") == NON_UTF8

    theirs = Fence(LOCK, "theirs")
    sql_io.check_fence(theirs)
    sql_io.write("t/a.json", "3", fence=theirs)
    assert sql_io.read("t/a.json") == "3"


def test_fence_without_a_lease_is_refused(sql_io: TaskIOSQL) -> None:
    sql_io.write("t/a.json", "1")
    sql_io.lease_create(LOCK, lease("mine"))
    assert sql_io.lease_swap(LOCK, lease("mine"), None) is True
    mine = Fence(LOCK, "mine")
    for call in (
        lambda: sql_io.write("t/a.json", "2", fence=mine),
        lambda: sql_io.remove("t/a.json", fence=mine),
        lambda: sql_io.check_fence(mine),
    ):
        with pytest.raises(LeaseLostException):
            call()
    assert contents(sql_io) == {"t/a.json": b"1"}


# --------------------------------------------------------------------------- schema version


def test_newer_schema_version_is_refused_and_nothing_is_dropped(sql_io: TaskIOSQL, store_url: str) -> None:
    sql_io.write("t/a.json", NON_UTF8)
    sql_io.lease_create(LOCK, lease("mine"))
    with sqldb.write_tx(sql_io.engine) as conn:
        conn.execute(text("UPDATE checkmate_schema SET version = 99 WHERE component = 'objects'"))
    before = contents(sql_io)

    probe = (
        "import sys\n"
        "from airflow_checkmate.checkmate import TaskIO, TaskEngineException\n"
        "try:\n"
        "    TaskIO.from_base_url(sys.argv[1])\n"
        "except TaskEngineException as exc:\n"
        "    print('REFUSED', exc)\n"
        "    sys.exit(7)\n"
        "print('OPENED')\n"
    )
    done = run_python("-c", probe, store_url)
    assert done.returncode == 7, done.stdout + done.stderr
    assert "schema version 99" in done.stdout and "reads version 1" in done.stdout
    assert "Upgrade airflow-provider-checkmate" in done.stdout
    assert contents(sql_io) == before, "refusing the schema changed the stored objects"
    with sqldb.read_conn(sql_io.engine) as conn:
        version = conn.execute(text("SELECT version FROM checkmate_schema WHERE component = 'objects'")).scalar()
    assert version == 99, "the newer schema version was overwritten"


# --------------------------------------------------------------------------- password


def test_password_never_appears_in_urls_reprs_or_messages(postgres_url: str) -> None:
    secret = "s3cret-Pw"
    url = make_url(postgres_url).set(password=secret).render_as_string(hide_password=False)
    assert secret in url
    io = TaskIO.from_base_url(url)
    name = f"pw{uuid.uuid4().hex[:8]}"
    io.write(f"{name}/a.json", "works")  # trust auth accepts any password: the URL is usable
    assert io.read(f"{name}/a.json") == "works"
    shown = [io.base_url, io.build_url(f"{name}/a.json"), repr(io), str(io)]
    with pytest.raises(PersistenceDataNotFoundException) as missing:
        io.read(f"{name}/missing.json")
    shown.append(str(missing.value))
    dead = make_url(url).set(host="127.0.0.1", port=1).render_as_string(hide_password=False)
    with pytest.raises(TaskIOException) as unreachable:
        TaskIO.from_base_url(dead)
    shown.append(str(unreachable.value))
    for text_ in shown:
        assert secret not in text_, text_
    assert "***" in io.base_url and make_url(io.base_url).database == make_url(postgres_url).database
    io.remove(f"{name}/a.json")


def test_password_not_in_the_error_for_a_mistyped_scheme(postgres_url: str) -> None:
    url = make_url(postgres_url).set(password="s3cret-Pw").render_as_string(hide_password=False)
    with pytest.raises(TaskEngineException, match="no CheckMate storage backend") as excinfo:
        TaskIO.from_base_url(url.replace("postgresql://", "postgresq://", 1))
    assert "s3cret-Pw" not in str(excinfo.value)


# --------------------------------------------------------------------------- the engine on this backend


@pytest.mark.slow
def test_engine_task_completes_and_resumes_after_retry_in_new_process(store_url: str, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    args = (store_url, "etl", "4", "--journal", str(journal), "--fail-first", '{"s3": 1}', "--max-attempts", "3")

    first = run_task_process(*args)
    assert first.returncode == 3, first.stdout + first.stderr
    assert first.stdout.startswith("RETRY")
    assert starts(journal) == ["s1", "s2", "s3"]
    io = TaskIO.from_base_url(store_url)
    snap = read_snapshot(io, "etl")
    assert snap is not None and snap.status is StageStatus.RETRY and not snap.locked
    assert [s.status for s in snap.stages] == [StageStatus.COMPLETE] * 2 + [StageStatus.RETRY, StageStatus.CREATED]

    second = run_task_process(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert starts(journal) == ["s1", "s2", "s3", "s3", "s4"]  # s1 and s2 never ran again
    assert json.loads(second.stdout.split(" ", 1)[1]) == expected_result(4)
    assert io.list("etl/") == [*(f"etl/s{i}.stage.json" for i in range(1, 5)), "etl/task.json"]

    engine = CheckMateEngine(io, "etl", make_stages(4), RetryPolicy.RETRY, 3)
    with engine:
        assert engine.status is StageStatus.COMPLETE and engine.task_result == expected_result(4)
        assert engine.stages[2].state.attempts == 2
        assert engine.check_sync()
        assert io.lease_read("etl/task.lock") is not None
    assert io.lease_read("etl/task.lock") is None
    record = TaskEngineState.model_validate_json(io.read_bytes("etl/task.json"))
    assert [e.event for e in record.history] == ["created"]


def test_engine_unbind_clean_removes_every_row(sql_io: TaskIOSQL) -> None:
    with CheckMateEngine(sql_io, "kept", make_stages(2)) as engine:
        engine.execute()
    assert sql_io.list("kept/") == ["kept/s1.stage.json", "kept/s2.stage.json", "kept/task.json"]
    with CheckMateEngine(sql_io, "auto", make_stages(2), auto_cleanup=True) as engine:
        engine.execute()
        assert engine.task_result == expected_result(2)
    engine = CheckMateEngine(sql_io, "kept", make_stages(2))
    engine.bind()
    engine.unbind(clean=True)
    assert sql_io.list("") == []
    with sqldb.read_conn(sql_io.engine) as conn:
        assert conn.execute(text("SELECT count(*) FROM checkmate_objects")).scalar() == 0
