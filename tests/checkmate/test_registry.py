"""The task registry, the managed CheckMate that keeps its row current, and the service operations on it.

Every test runs on SQLite and on PostgreSQL (``db_url``: storage and registry in the same database). The
PostgreSQL database is shared by the session, so each test uses its own task ids, queues and tags and
only ever lists what it made. Stage code is counted by the journal the stages write, never by the engine.
"""

import contextlib
import datetime as dt
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

from airflow_checkmate.checkmate import (
    LeaseLostException,
    StageStatus,
    TaskEngineException,
    TaskIO,
    TaskRecord,
    TaskRegistry,
    names,
    read_snapshot,
    sqldb,
)
from airflow_checkmate.checkmate.lease import HOST
from airflow_checkmate.checkmate.registry_schema import SCHEMA_VERSION
from airflow_checkmate.checkmate.service import CheckMateService, TaskNotFound
from support.managed_tasks import FACTORY, PROBES, build, events, make
from support.stored_objects import get_object

S = StageStatus
ALLOWED = ["support.managed_tasks.*"]
UTC = dt.timezone.utc


@dataclass
class Site:
    """One test's storage, registry, journal and failure flag, and the factory kwargs that point at them."""

    url: str
    io: TaskIO
    registry: TaskRegistry
    journal: Path
    flag: Path
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    def kw(self, **extra: Any) -> dict[str, Any]:
        """Factory kwargs for a task of this site (queue and tag unique to the test)."""
        kwargs: dict[str, Any] = {
            "journal": str(self.journal),
            "base_url": self.url,
            "database_url": self.url,
            "fail_flag": str(self.flag),
            "queue": f"q-{self.uid}",
            "tags": [f"team:{self.uid}"],
        }
        kwargs.update(extra)
        return kwargs

    def tid(self, name: str) -> str:
        """A task id unique to this test."""
        return f"{name}-{self.uid}"

    def service(self, allowed: list[str] | None = ALLOWED) -> CheckMateService:
        """The service over this site, with the given allow-list (None: the setting)."""
        return CheckMateService(self.registry, self.io, allowed)

    def stored(self, task_id: str) -> dict[str, bytes]:
        """Every stored object of the task, byte for byte (the lease included)."""
        found = {}
        for name in self.io.list(names.task_prefix(task_id)):
            raw = self.io.lease_read(name) if name == names.lock_obj_name(task_id) else None
            found[name] = raw.encode() if raw is not None else self.io.read_bytes(name)
        return found

    def status(self, task_id: str) -> S | None:
        """The task's stored status, None if nothing is stored."""
        snapshot = read_snapshot(self.io, task_id)
        return snapshot.status if snapshot else None

    def row(self, task_id: str) -> TaskRecord:
        """The task's registry row (it must exist)."""
        record = self.registry.get(task_id)
        assert record is not None, f"{task_id} is not in the registry"
        return record


@pytest.fixture
def site(db_url: str, tmp_path: Path) -> Site:
    """Storage and registry in the same database (SQLite file or the session's PostgreSQL database)."""
    return Site(db_url, TaskIO.from_base_url(db_url), TaskRegistry(db_url), tmp_path / "journal.log", tmp_path / "fail")


def run(task_id: str, **kwargs: Any) -> S:
    """Build the task with ``make``, run it in this process and return its status (failures are expected)."""
    engine = make(task_id, **kwargs)
    with engine:
        with contextlib.suppress(TaskEngineException, RuntimeError):  # RuntimeError: failed on its last attempt
            engine.execute()
        return engine.status


def utc_aware(value: dt.datetime) -> bool:
    """True for a timezone-aware time in UTC."""
    return value.tzinfo is not None and value.utcoffset() == dt.timedelta(0)


# --------------------------------------------------------------------------- the row kept current


def test_row_follows_bind_run_and_unbind(site: Site) -> None:
    """Status, progress and lock holder at bind, mid-stage, after a failure, at unbind; timestamps in UTC."""
    tid = site.tid("row")
    site.flag.touch()
    kw = site.kw(probe_stage="b", fail_stage="c", description="nightly load")
    before = dt.datetime.now(UTC)
    engine = make(tid, **kw)
    assert site.registry.get(tid) is None
    engine.bind()
    bound = site.row(tid)
    holder = f"host {HOST} pid {os.getpid()}"
    assert bound.lock_holder == holder
    assert (bound.status, bound.stages_done, bound.stages_total, bound.current_stage) == (S.CREATED, 0, 3, "a")
    assert bound.checkmate_factory == FACTORY and bound.factory_kwargs == {**engine.factory_kwargs}
    assert bound.factory_kwargs["journal"] == str(site.journal)
    assert (bound.queue, bound.tags, bound.description) == (f"q-{site.uid}", [f"team:{site.uid}"], "nightly load")
    assert bound.base_url == site.io.base_url and bound.cleaned is False
    assert utc_aware(bound.created_at) and utc_aware(bound.updated_at)
    assert before <= bound.created_at <= dt.datetime.now(UTC)
    time.sleep(0.01)
    with pytest.raises(TaskEngineException, match="can be auto-recovered"):
        engine.execute()
    (probe,) = PROBES[tid]  # the row as the registry had it while stage b ran
    assert probe is not None
    # written when the task became RUNNING, not at the a -> b boundary (that costs one write, in storage)
    assert (probe.status, probe.stages_done, probe.current_stage, probe.lock_holder) == (S.RUNNING, 0, "a", holder)
    failed = site.row(tid)
    assert (failed.status, failed.stages_done, failed.current_stage, failed.lock_holder) == (S.RETRY, 2, "c", holder)
    assert failed.created_at == bound.created_at and failed.updated_at > bound.updated_at
    engine.unbind()
    idle = site.row(tid)
    assert (idle.status, idle.lock_holder, idle.cleaned) == (S.RETRY, None, False)
    assert idle.updated_at >= failed.updated_at

    site.flag.unlink()
    time.sleep(0.01)
    assert run(tid, **kw) is S.COMPLETE
    done = site.row(tid)
    assert (done.status, done.stages_done, done.current_stage, done.lock_holder) == (S.COMPLETE, 3, None, None)
    assert done.created_at == bound.created_at and done.updated_at > idle.updated_at
    assert utc_aware(done.created_at) and utc_aware(done.updated_at)
    assert events(site.journal, "start") == ["start a", "start b", "start c", "start c"]


def test_file_storage_with_sqlite_registry(tmp_path: Path) -> None:
    """Files for stage state, SQLite for the registry: the row names the folder; show, cancel and clean use it."""
    store, db = tmp_path / "store", f"sqlite:///{tmp_path / 'registry.db'}"
    journal, flag = tmp_path / "journal.log", tmp_path / "fail"
    kw = {"journal": str(journal), "base_url": str(store), "database_url": db, "fail_flag": str(flag)}
    flag.touch()
    assert run("filetask", **kw) is S.RETRY
    registry = TaskRegistry(db)
    row = registry.get("filetask")
    assert row is not None and row.base_url == f"file://{store.resolve()}" and row.status is S.RETRY
    assert get_object(store, "filetask/task.json") is not None
    service = CheckMateService(registry, None, ALLOWED)  # no configured storage: the row's base URL is used
    details = service.show("filetask")
    assert details.snapshot is not None and details.snapshot.status is S.RETRY and details.lease is None
    (outcome,) = service.cancel(["filetask"], dry_run=False)
    assert outcome.done and not outcome.failed, outcome
    assert events(journal, "cancel") == ["cancel b"]
    row = registry.get("filetask")
    assert row is not None
    (cleaned,) = service.clean([row], dry_run=False)
    assert cleaned.done, cleaned
    assert not (store / "filetask").exists()
    final = registry.get("filetask")
    assert final is not None and final.cleaned and final.status is S.CANCELED


# --------------------------------------------------------------------------- listing


def test_list_filters_sort_and_limit(site: Site) -> None:
    """queue, statuses (any), tags (all), since/before ([since, before)), include_cleaned, limit and sort."""
    t0 = dt.datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    every, red, blue = f"all-{site.uid}", f"red-{site.uid}", f"blue-{site.uid}"
    qa, qb = f"{site.uid}-a", f"{site.uid}-b"
    specs = [  # name, queue, status, tags, created (minutes after t0), updated (hours after t0), cleaned
        ("t1", qa, S.COMPLETE, [every, red, blue], 2, 1, False),
        ("t2", qa, S.RETRY, [every, red], 1, 2, False),
        ("t3", qb, S.ERROR, [every, blue], 0, 3, False),
        ("t4", qa, S.COMPLETE, [every, red], 3, 4, True),
    ]
    for name, queue, status, tags, created, updated, cleaned in specs:
        site.registry.register(
            TaskRecord(
                task_id=site.tid(name),
                base_url=site.io.base_url,
                status=status,
                queue=queue,
                tags=tags,
                cleaned=cleaned,
                created_at=t0 + dt.timedelta(minutes=created),
                updated_at=(t0 + dt.timedelta(hours=updated)).astimezone(dt.timezone(dt.timedelta(hours=2))),
            )
        )

    def ids(**query: Any) -> list[str]:
        """The short names of the rows a query lists (scoped to this test's tag unless tags are given)."""
        query.setdefault("tags", [every])
        return [r.task_id.split("-")[0] for r in site.registry.list_tasks(**query)]

    assert ids() == ["t3", "t2", "t1"]  # newest update first; cleaned rows left out
    assert ids(include_cleaned=True) == ["t4", "t3", "t2", "t1"]
    assert ids(queue=qa) == ["t2", "t1"] and ids(queue=qb) == ["t3"] and ids(queue=f"{site.uid}-none") == []
    assert ids(statuses=[S.COMPLETE]) == ["t1"] and ids(statuses=[S.COMPLETE, S.ERROR]) == ["t3", "t1"]
    assert ids(statuses=[S.COMPLETE], include_cleaned=True) == ["t4", "t1"]
    assert ids(tags=[every, red]) == ["t2", "t1"] and ids(tags=[every, red, blue]) == ["t1"]
    assert ids(tags=[red, f"nope-{site.uid}"]) == []
    assert ids(since=t0 + dt.timedelta(hours=2)) == ["t3", "t2"]  # since is inclusive
    assert ids(before=t0 + dt.timedelta(hours=2)) == ["t1"]  # before is exclusive
    assert ids(since=t0 + dt.timedelta(hours=1), before=t0 + dt.timedelta(hours=3)) == ["t2", "t1"]
    assert ids(limit=2) == ["t3", "t2"] and ids(limit=1, sort="updated_at") == ["t1"]
    assert ids(sort="task_id") == ["t1", "t2", "t3"] and ids(sort="-task_id") == ["t3", "t2", "t1"]
    assert ids(sort="created_at") == ["t3", "t2", "t1"] and ids(sort="-created_at") == ["t1", "t2", "t3"]
    assert ids(sort="updated_at") == ["t1", "t2", "t3"]
    assert ids(sort="status") == ["t1", "t3", "t2"]  # COMPLETE < ERROR < RETRY
    assert ids(sort="queue") == ["t1", "t2", "t3"] and ids(sort="-queue") == ["t3", "t1", "t2"]  # ties by id
    for bad in ("bogus", "-bogus", "tags", ""):
        with pytest.raises(TaskEngineException, match=r"cannot sort by .*task_id, status, queue, created_at"):
            site.registry.list_tasks(sort=bad)
    with pytest.raises(TaskEngineException, match="limit must be at least 1"):
        site.registry.list_tasks(limit=0)

    first = site.registry.get(site.tid("t1"))
    assert first is not None and first.tags == sorted([every, red, blue])
    assert first.updated_at == t0 + dt.timedelta(hours=1) and utc_aware(first.updated_at)
    assert first.created_at == t0 + dt.timedelta(minutes=2) and utc_aware(first.created_at)
    assert site.registry.get(site.tid("t4")) is not None  # get() finds cleaned rows too
    assert site.registry.get(site.tid("none")) is None
    assert site.registry.update(site.tid("none"), status="ERROR") is False
    with pytest.raises(TaskEngineException, match="unknown registry fields"):
        site.registry.update(site.tid("t1"), colour="red")


def test_clean_unbind_and_auto_cleanup_mark_rows_cleaned(site: Site) -> None:
    """unbind(clean=True) and auto_cleanup remove the state and mark the row cleaned; a new bind unmarks it."""
    kept, auto = site.tid("kept"), site.tid("auto")
    engine = make(kept, **site.kw())
    engine.bind()
    engine.execute()
    engine.unbind(clean=True)
    assert site.stored(kept) == {}
    row = site.row(kept)
    assert row.cleaned and row.status is S.COMPLETE and row.lock_holder is None
    assert run(auto, **site.kw(auto_cleanup=True)) is S.COMPLETE
    assert site.stored(auto) == {} and site.row(auto).cleaned
    query = {"queue": f"q-{site.uid}"}
    assert site.registry.list_tasks(**query) == []
    assert {r.task_id for r in site.registry.list_tasks(**query, include_cleaned=True)} == {kept, auto}

    with make(kept, **site.kw()):  # the same id again: a fresh task, listed again
        assert site.row(kept).cleaned is False
    assert [r.task_id for r in site.registry.list_tasks(**query)] == [kept]


@pytest.mark.parametrize(
    ("queue", "tags"),
    [("bad queue", []), ("", []), ("q" * 101, []), ("etl", ["ok", "bad tag!"]), ("etl", ["t" * 101]), ("etl", [""])],
)
def test_bad_queue_or_tag_is_refused(site: Site, queue: str, tags: list[str]) -> None:
    """An invalid queue or tag raises TaskEngineException naming it; nothing is registered or stored."""
    tid = site.tid("bad")
    kind = "queue" if queue != "etl" else "tag"
    with pytest.raises(TaskEngineException, match=f"invalid {kind} .*letters, digits"):
        make(tid, **site.kw(queue=queue, tags=tags))
    assert site.registry.get(tid) is None and site.stored(tid) == {}


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database no CheckMate has used yet: a new SQLite file, or a new PostgreSQL database (dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    server = request.getfixturevalue("postgres_url")
    name = f"checkmate_fresh_{uuid.uuid4().hex[:12]}"
    admin = create_engine(sqldb.parse_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield sqldb.parse_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_schema_created_on_first_use(fresh_db_url: str) -> None:
    """The registry creates its tables in an empty database and records its version as component 'registry'."""
    probe = create_engine(sqldb.parse_url(fresh_db_url))
    try:
        assert inspect(probe).get_table_names() == []
        registry = TaskRegistry(fresh_db_url)
        tables = set(inspect(probe).get_table_names())
        assert {"checkmate_schema", "checkmate_tasks", "checkmate_task_tags"} <= tables
        assert "checkmate_objects" not in tables  # the storage's table is made only when storage is used
        with probe.connect() as conn:
            assert conn.execute(text("SELECT component, version FROM checkmate_schema")).all() == [
                ("registry", SCHEMA_VERSION)
            ]
        assert registry.list_tasks() == []
    finally:
        probe.dispose()


# --------------------------------------------------------------------------- service operations


def test_cancel_idle_task_rebuilds_it_and_runs_cancel_once(site: Site) -> None:
    """A dry run changes nothing; then the allow-listed factory rebuilds the task and cancel() runs once."""
    tid, other = site.tid("idle"), site.tid("other")
    site.flag.touch()
    assert run(tid, **site.kw()) is S.RETRY
    assert run(other, **site.kw()) is S.RETRY
    before, before_row = site.stored(tid), site.row(tid)
    service = site.service()

    (dry,) = service.cancel([tid])  # dry_run defaults to True
    assert (dry.done, dry.failed) == (False, False) and "dry run" in dry.message and "cancel()" in dry.message
    assert site.stored(tid) == before and site.row(tid) == before_row
    assert events(site.journal, "cancel") == []

    outcome, missing = service.cancel([tid, site.tid("missing")], dry_run=False)
    assert outcome.done and not outcome.failed and "canceled at stage 'b'" in outcome.message, outcome
    assert missing.failed and not missing.done and site.tid("missing") in missing.message
    assert events(site.journal, "cancel") == ["cancel b"]
    snapshot = read_snapshot(site.io, tid)
    assert snapshot is not None and [s.status for s in snapshot.stages] == [S.COMPLETE, S.CANCELED, S.CANCELED]
    assert not site.io.exists(names.cancel_obj_name(tid)) and site.io.lease_read(names.lock_obj_name(tid)) is None
    row = site.row(tid)
    assert (row.status, row.lock_holder) == (S.CANCELED, None)
    assert site.status(other) is S.RETRY and site.row(other).status is S.RETRY  # untouched

    (again,) = service.cancel([tid], dry_run=False)
    assert not again.done and "skipped" in again.message and "CANCELED" in again.message
    assert events(site.journal, "cancel") == ["cancel b"]


def test_cancel_reason_is_recorded_when_canceled_here(site: Site) -> None:
    """``--reason`` is "recorded in the task's history" (CLI help), also when no process holds the task."""
    tid = site.tid("reason")
    site.flag.touch()
    run(tid, **site.kw())
    site.service().cancel([tid], dry_run=False, reason="superseded by run 42")
    snapshot = read_snapshot(site.io, tid)
    assert snapshot is not None
    assert "superseded by run 42" in snapshot.stages[1].last_message


def test_cancel_without_allow_list_leaves_a_request_and_imports_nothing(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A factory outside the allow-list is never imported; the request is honoured when the task next runs."""
    module = f"cm_unlisted_{site.uid}"
    folder = tmp_path / "mods"
    folder.mkdir()
    marker = tmp_path / "imported"
    (folder / f"{module}.py").write_text(
        "from pathlib import Path\n"
        "from support.managed_tasks import build\n"
        f"Path({str(marker)!r}).touch()\n"
        "def make(task_id=None, **kwargs):\n"
        "    return build(__name__ + '.make', task_id, **kwargs)\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("CHECKMATE_ALLOWED_FACTORIES", raising=False)
    tid = site.tid("unlisted")
    kw = site.kw()
    site.flag.touch()
    engine = build(f"{module}.make", tid, **kw)  # the path is recorded as given, not imported
    with engine, pytest.raises(TaskEngineException):
        engine.execute()
    assert site.row(tid).checkmate_factory == f"{module}.make"
    assert module not in sys.modules

    for service in (site.service(allowed=None), site.service(allowed=["tests.*", f"{module}.other"])):
        (outcome,) = service.cancel([tid], dry_run=False)
        assert outcome.done and not outcome.failed, outcome
        assert "cancel requested" in outcome.message and "not in the allow-list" in outcome.message
        assert "CHECKMATE_ALLOWED_FACTORIES" in outcome.message
    assert module not in sys.modules and not marker.exists()
    assert events(site.journal, "cancel") == []
    assert site.io.exists(names.cancel_obj_name(tid)) and site.status(tid) is S.RETRY
    # reset and dump need no factory: they refuse a RETRY task without --stage / show the stored JSON
    with pytest.raises(TaskEngineException, match="no ERROR or CANCELED stage to reset"):
        site.service(allowed=None).reset(tid)
    assert "not in the allow-list" in site.service(allowed=None).dump(tid)
    assert module not in sys.modules and site.status(tid) is S.RETRY

    site.flag.unlink()  # b would now succeed, but the standing request cancels the task first
    engine = build(f"{module}.make", tid, **kw)
    with engine, pytest.raises(TaskEngineException, match="was canceled"):
        engine.execute()
    assert events(site.journal) == ["start a", "end a", "start b", "fail b", "rollback b", "cancel b"]
    assert site.status(tid) is S.CANCELED and site.row(tid).status is S.CANCELED
    assert not site.io.exists(names.cancel_obj_name(tid))
    assert module not in sys.modules and not marker.exists()


def test_reset_error_task_then_restart_from_a_stage(site: Site) -> None:
    """reset() makes an ERROR task resume at its failed stage; reset(stage) reruns that stage and later ones."""
    tid = site.tid("err")
    kw = site.kw(max_attempts=1)
    site.flag.touch()
    assert run(tid, **kw) is S.ERROR
    service = site.service()
    with pytest.raises(TaskEngineException, match="is ERROR"):
        run_strict(tid, kw)
    outcome = service.reset(tid)
    assert outcome.done and "the task is RETRY" in outcome.message, outcome
    snapshot = read_snapshot(site.io, tid)
    assert snapshot is not None and [(s.status, s.attempts) for s in snapshot.stages] == [
        (S.COMPLETE, 1),
        (S.RETRY, 0),
        (S.CREATED, 0),
    ]
    assert site.row(tid).status is S.RETRY and site.row(tid).lock_holder is None
    site.flag.unlink()
    assert run(tid, **kw) is S.COMPLETE
    assert events(site.journal, "start") == ["start a", "start b", "start b", "start c"]

    outcome = service.reset(tid, "b")
    assert outcome.done and "from stage 'b'" in outcome.message and "CREATED" in outcome.message, outcome
    row = site.row(tid)
    assert (row.status, row.stages_done, row.current_stage) == (S.CREATED, 1, "b")
    assert run(tid, **kw) is S.COMPLETE
    assert events(site.journal, "start")[4:] == ["start b", "start c"]  # a is not run again

    with pytest.raises(TaskEngineException, match="no stage 'nope'; stages: a, b, c"):
        service.reset(tid, "nope")
    with pytest.raises(TaskEngineException, match="no ERROR or CANCELED stage"):
        service.reset(tid)
    with pytest.raises(TaskNotFound, match=site.tid("nope")):
        service.reset(site.tid("nope"))


def run_strict(task_id: str, kw: dict[str, Any]) -> None:
    """Run the task and let its exception out."""
    with make(task_id, **kw) as engine:
        engine.execute()


def test_reset_canceled_task(site: Site) -> None:
    """A canceled task reset with the service resumes at the canceled stage and completes."""
    tid = site.tid("canceled")
    site.flag.touch()
    run(tid, **site.kw())
    site.service().cancel([tid], dry_run=False)
    assert site.status(tid) is S.CANCELED
    outcome = site.service().reset(tid)
    assert outcome.done and "the task is RETRY" in outcome.message, outcome
    assert site.status(tid) is S.RETRY and site.row(tid).status is S.RETRY
    site.flag.unlink()
    assert run(tid, **site.kw()) is S.COMPLETE
    assert events(site.journal) == [
        "start a",
        "end a",
        "start b",
        "fail b",
        "rollback b",
        "cancel b",
        "start b",
        "end b",
        "start c",
        "end c",
    ]


def test_clean_removes_finished_state_and_skips_the_rest(site: Site) -> None:
    """Only COMPLETE/CANCELED tasks no live process holds are cleaned; their rows stay, marked cleaned."""
    done, retry, running, held = (site.tid(n) for n in ("done", "retry", "running", "held"))
    assert run(done, **site.kw()) is S.COMPLETE
    assert run(held, **site.kw()) is S.COMPLETE
    site.flag.touch()
    assert run(retry, **site.kw()) is S.RETRY
    crashed = make(running, **site.kw())  # a stage left RUNNING by a process that died mid-stage
    with crashed:
        stage = crashed.stages[0]
        stage.inc_attempts()
        stage.update_status("started", S.RUNNING, time.time())
    assert site.status(running) is S.RUNNING
    holder = make(held, **site.kw())
    holder.bind()
    try:
        ids = [done, retry, running, held]
        records = [site.row(t) for t in ids]
        before = {t: site.stored(t) for t in ids}
        rows_before = {t: site.row(t) for t in ids}
        service = site.service()

        dry = service.clean(records)  # dry run by default
        assert [o.done for o in dry] == [False] * 4 and "dry run: would remove" in dry[0].message
        assert {t: site.stored(t) for t in ids} == before and {t: site.row(t) for t in ids} == rows_before

        outcomes = {o.task_id: o for o in service.clean(records, dry_run=False)}
        assert outcomes[done].done and "row marked cleaned" in outcomes[done].message
        assert site.stored(done) == {}
        row = site.row(done)
        assert row.cleaned and row.status is S.COMPLETE
        assert not outcomes[retry].done and "skipped: it is RETRY" in outcomes[retry].message
        assert not outcomes[running].done and "skipped: it is RUNNING" in outcomes[running].message
        assert not outcomes[held].done and "held by a live process" in outcomes[held].message
        assert not any(o.failed for o in outcomes.values())
        for t in (retry, running, held):
            assert site.stored(t) == before[t], t
            assert site.row(t).cleaned is False, t
        assert site.status(held) is S.COMPLETE
    finally:
        holder.unbind()
    (later,) = site.service().clean([site.row(held)], dry_run=False)
    assert later.done and site.stored(held) == {} and site.row(held).cleaned
    assert [r.task_id for r in site.registry.list_tasks(queue=f"q-{site.uid}", sort="task_id")] == [retry, running]


def test_unlock_reports_without_force_and_breaks_the_lease_with_it(site: Site) -> None:
    """Without force nothing changes and the holder is named; with force the lease is gone and its holder fenced."""
    tid = site.tid("locked")
    lock = names.lock_obj_name(tid)
    engine = make(tid, **site.kw())
    engine.bind()
    try:
        lease = site.io.lease_read(lock)
        assert lease is not None and f"pid {os.getpid()}" in (site.row(tid).lock_holder or "")
        outcome = site.service(allowed=[]).unlock(tid)
        assert not outcome.done and not outcome.failed
        assert f"host {HOST} pid {os.getpid()}" in outcome.message and "(live)" in outcome.message
        assert "--force" in outcome.message
        assert site.io.lease_read(lock) is not None and site.row(tid).lock_holder is not None

        forced = site.service(allowed=[]).unlock(tid, force=True)
        assert forced.done and "lock broken" in forced.message and "alive" in forced.message, forced
        assert site.io.lease_read(lock) is None and site.row(tid).lock_holder is None
        with pytest.raises(LeaseLostException):
            engine.execute()  # the old holder's writes are refused
        assert events(site.journal) == []
    finally:
        engine.unbind()
    assert site.service(allowed=[]).unlock(tid).message == "not locked"
    with pytest.raises(TaskNotFound, match=site.tid("nope")):
        site.service().unlock(site.tid("nope"))


def test_rebuild_from_a_factory_that_returns_stages(site: Site) -> None:
    """A factory returning only stages is wrapped in a CheckMate on the row's storage and registry."""
    tid = site.tid("stages")
    engine = build("support.managed_tasks.make_stages", tid, **site.kw())
    with engine:
        pass
    rebuilt = site.service().rebuild(site.row(tid))
    assert rebuilt.task_id == tid and rebuilt.io.base_url == site.io.base_url
    assert [s.stage_name for s in rebuilt.stages] == ["a", "b", "c"]
    (outcome,) = site.service().cancel([tid], dry_run=False)
    assert outcome.done, outcome
    assert site.status(tid) is S.CANCELED and site.row(tid).status is S.CANCELED
