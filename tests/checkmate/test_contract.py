"""The engine contract, once per storage backend: files, SQLite, PostgreSQL and S3 (a moto server on loopback).

Every backend must give the engine the same guarantees:

- a task that failed a stage (RETRY) resumes in a new engine; completed stages never run again (journal);
- a process SIGKILLed while a stage is RUNNING is resumed by a NEW process, which takes the dead holder's
  lease over at once and records the takeover in the task history;
- a live holder's lock is refused to a second binder (BindException naming the holder); with
  ``bind_lock_timeout`` the second binder waits and gets the lock once the holder releases it;
- a lease whose heartbeat is older than its ``lease_seconds`` is taken over, and the history says so;
- after a takeover, the old holder's writes through its Fence raise LeaseLostException and the new
  holder's stored objects stay byte-identical;
- a corrupt stage object stops the bind with PersistenceDataNotFoundException naming it, left as it was;
- invalid task ids and stage names raise TaskEngineException before any storage call, storing nothing;
- a cancel request that arrives while a stage fails is consumed by that cancel, so a reset task runs again;
- a checkpoint (``commit``) of several objects is read back whole by ``read_prefix`` (one task's objects
  only), and refused after a takeover with nothing changed.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airflow_checkmate.checkmate import (
    BindException,
    CheckMateEngine,
    Fence,
    LeaseLostException,
    PersistenceDataNotFoundException,
    RetryPolicy,
    StageStatus,
    TaskEngineException,
    TaskEngineState,
    TaskIO,
    names,
    read_snapshot,
)
from airflow_checkmate.checkmate.lease import LeaseRecord, acquire
from support.processes import S3_CONN_ID, run_task_process, start_task_process
from support.stages import CounterState, JournalStage, expected_result, make_stages, read_journal
from support.waiting import reaped, wait_for

S = StageStatus
SPIED = ("read_bytes", "write", "exists", "remove", "list", "lease_read", "lease_create", "lease_swap", "prune")


@dataclass
class Backend:
    """One store, opened as many times as a test needs: in this process and by child processes."""

    name: str
    url: str
    conn_id: str | None = None

    def io(self, **options: Any) -> TaskIO:
        """A fresh TaskIO on the store (its own connection, caches and ETags)."""
        if self.conn_id:
            options["conn_id"] = self.conn_id
        return TaskIO.from_base_url(self.url, **options)

    def child_args(self) -> list[str]:
        """The store's arguments for ``support.run_task``."""
        return [self.url, *(["--conn-id", self.conn_id] if self.conn_id else [])]


@pytest.fixture(params=["file", "sqlite", "postgresql", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A fresh store of each backend (PostgreSQL: the session's throwaway database, so task ids are unique)."""
    if request.param == "file":
        return Backend("file", f"file://{tmp_path / 'store'}")
    if request.param == "sqlite":
        return Backend("sqlite", f"sqlite:///{tmp_path / 'checkmate.db'}")
    if request.param == "postgresql":
        return Backend("postgresql", str(request.getfixturevalue("postgres_url")))
    return Backend("s3", str(request.getfixturevalue("s3_url")), S3_CONN_ID)


def new_task_id(kind: str) -> str:
    """A task id no other test uses (the PostgreSQL database is shared by the session)."""
    return f"{kind}-{uuid.uuid4().hex[:10]}"


def objects_of(io: TaskIO, task_id: str) -> dict[str, bytes]:
    """Every stored object of a task, byte for byte."""
    return {name: io.read_bytes(name) for name in io.list(names.task_prefix(task_id))}


def stored_task(io: TaskIO, task_id: str) -> TaskEngineState:
    """The stored task record."""
    return TaskEngineState.model_validate_json(io.read_bytes(names.task_obj_name(task_id)))


def takeovers(io: TaskIO, task_id: str) -> list[str]:
    """The messages of the lock takeovers recorded in the task history."""
    return [e.message for e in stored_task(io, task_id).history if e.event == "lock takeover"]


def starts(journal: Path) -> list[str]:
    """The stage names whose code started, in order, from the journal the stage code writes."""
    return [w[1] for w in read_journal(journal) if w[0] == "start"]


def engine_for(
    io: TaskIO, task_id: str, n: int, journal: Path | str = "", timeout: float | None = None, **stage_options: Any
) -> CheckMateEngine[Any, Any]:
    """An engine for ``n`` journal stages that may run a stage up to 3 times."""
    stages = make_stages(n, str(journal), **stage_options)
    return CheckMateEngine(io, task_id, stages, RetryPolicy.RETRY, 3, bind_lock_timeout=timeout)


def spy(io: TaskIO) -> list[str]:
    """Record every storage call made through ``io`` from now on (names of the TaskIO methods)."""
    calls: list[str] = []

    def recording(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return call(*args, **kwargs)

        return recorded

    for method in SPIED:
        setattr(io, method, recording(method, getattr(io, method)))
    return calls


def lease_of(io: TaskIO, task_id: str) -> LeaseRecord | None:
    raw = io.lease_read(names.lock_obj_name(task_id))
    return None if raw is None else LeaseRecord.model_validate_json(raw)


# --------------------------------------------------------------------------- resume


def test_resume_after_a_stage_failure_never_reruns_completed_stages(backend: Backend, tmp_path: Path) -> None:
    journal, task_id = tmp_path / "journal", new_task_id("retry")
    first = engine_for(backend.io(), task_id, 4, journal, fail_first={"s3": 1})
    with first, pytest.raises(TaskEngineException, match="auto-recovered"):
        first.execute()
    assert first.status is S.UNBOUND
    assert starts(journal) == ["s1", "s2", "s3"]

    io = backend.io()
    snapshot = read_snapshot(io, task_id)
    assert snapshot is not None and not snapshot.locked
    assert [s.status for s in snapshot.stages] == [S.COMPLETE, S.COMPLETE, S.RETRY, S.CREATED]
    resumed = engine_for(io, task_id, 4, journal, fail_first={"s3": 1})
    with resumed:
        assert resumed.status is S.RETRY
        resumed.execute()
        assert resumed.status is S.COMPLETE
        assert resumed.task_result == expected_result(4)
    assert starts(journal) == ["s1", "s2", "s3", "s3", "s4"]  # s1 and s2 never ran again

    with engine_for(backend.io(), task_id, 4, journal) as again:
        again.execute()  # COMPLETE: nothing runs
        assert again.task_result == expected_result(4)
    assert starts(journal) == ["s1", "s2", "s3", "s3", "s4"]
    stored = objects_of(backend.io(), task_id)
    assert sorted(stored) == [f"{task_id}/s{i}.stage.json" for i in range(1, 5)] + [f"{task_id}/task.json"]
    assert [CounterState.model_validate_json(stored[f"{task_id}/s3.stage.json"]).attempts] == [2]


@pytest.mark.slow
def test_resume_after_sigkill_mid_stage_in_a_new_process(backend: Backend, tmp_path: Path) -> None:
    journal, task_id = tmp_path / "journal", new_task_id("killed")
    args = (*backend.child_args(), task_id, "3", "--journal", str(journal), "--max-attempts", "3")
    io = backend.io()
    holder = start_task_process(*args, "--sleep", "60")
    with reaped(holder):

        def s1_running() -> bool:
            # RUNNING is stored before the stage code starts: wait for the code's own journal line too, so
            # the kill lands mid-stage and not in the gap between the checkpoint and the first line of code.
            snapshot = read_snapshot(io, task_id)
            running = snapshot is not None and snapshot.stages[0].status is S.RUNNING
            return running and journal.exists() and starts(journal) == ["s1"]

        wait_for(s1_running, 60, "the child to run s1's code")
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
    snapshot = read_snapshot(io, task_id)
    assert snapshot is not None and snapshot.locked, "the killed holder's lease should still be stored"
    assert (snapshot.stages[0].status, snapshot.stages[0].attempts) == (S.RUNNING, 1)
    lease = lease_of(io, task_id)
    assert lease is not None and lease.pid == holder.pid

    done = run_task_process(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert starts(journal) == ["s1", "s1", "s2", "s3"]  # the interrupted stage again, then the rest once
    messages = takeovers(io, task_id)
    assert len(messages) == 1 and f"pid {holder.pid}," in messages[0], messages
    final = read_snapshot(io, task_id)
    assert final is not None and not final.locked
    assert final.status is S.COMPLETE and final.result == expected_result(3)
    assert [(s.status, s.attempts) for s in final.stages] == [(S.COMPLETE, 2), (S.COMPLETE, 1), (S.COMPLETE, 1)]


# --------------------------------------------------------------------------- the lock


def test_lock_contention_names_the_holder_and_a_waiter_gets_the_released_lock(backend: Backend) -> None:
    task_id = new_task_id("contended")
    holder = engine_for(backend.io(), task_id, 1)
    holder.bind()
    try:
        held = lease_of(backend.io(), task_id)
        assert held is not None and held.pid == os.getpid()
        before = objects_of(backend.io(), task_id)
        began = time.monotonic()
        second = engine_for(backend.io(), task_id, 1, timeout=None)
        with pytest.raises(BindException) as excinfo:
            second.bind()
        assert time.monotonic() - began < 2.0, "bind_lock_timeout=None must fail at once"
        assert f"host {socket.gethostname()} pid {os.getpid()}" in str(excinfo.value)
        assert not isinstance(excinfo.value, LeaseLostException)
        assert not second.bound
        with pytest.raises(BindException, match=r"after waiting 0\.3 s"):
            engine_for(backend.io(), task_id, 1, timeout=0.3).bind()
        assert objects_of(backend.io(), task_id) == before, "a refused bind changed the holder's objects"
    finally:
        releaser = threading.Timer(0.5, holder.unbind)
        releaser.start()
    waiter = engine_for(backend.io(), task_id, 1, timeout=30)
    began = time.monotonic()
    waiter.bind()
    try:
        waited = time.monotonic() - began
        releaser.join()
        assert waited > 0.3, "the waiter got the lock while the holder still had it"
        assert not holder.bound
        lease = lease_of(backend.io(), task_id)
        assert lease is not None and lease.token != held.token and lease.takeovers == 0
        assert [e.event for e in waiter.task_state.history] == ["created"], "a released lock was taken over"
        waiter.execute()
        assert waiter.status is S.COMPLETE
    finally:
        waiter.unbind()
    assert lease_of(backend.io(), task_id) is None


@pytest.mark.parametrize("stale", ["expired-record", "unrenewed-keeper"])
def test_stale_lease_is_taken_over_and_recorded(backend: Backend, stale: str) -> None:
    task_id, io = new_task_id("stale"), backend.io()
    lock = names.lock_obj_name(task_id)
    if stale == "expired-record":
        now = time.time()
        fields = {"token": "old-token", "host": "elsewhere.example", "pid": 4242, "owner": "ghost", "lease_seconds": 2}
        live = LeaseRecord(**fields, acquired_at=now, heartbeat_at=now).model_dump_json()
        assert io.lease_create(lock, live)
        with pytest.raises(BindException, match=r"host elsewhere\.example pid 4242"):
            engine_for(backend.io(), task_id, 2).bind()  # a live lease of another host is respected
        expired = LeaseRecord(**fields, acquired_at=now - 60, heartbeat_at=now - 60).model_dump_json()
        assert io.lease_swap(lock, live, expired)
        holder, old_token = "host elsewhere.example pid 4242 (ghost)", "old-token"
    else:
        keeper, taken = acquire(backend.io(lease_seconds=1.0), lock, None, owner="paused")  # never started
        assert taken is None
        wait_for(lambda: time.time() > keeper.record.heartbeat_at + 1.05, 5, "the lease to expire")
        holder, old_token = f"pid {os.getpid()} (paused)", keeper.record.token

    engine = engine_for(backend.io(), task_id, 2, timeout=None)
    engine.bind()
    try:
        event = engine.task_state.history[-1]
        assert event.event == "lock takeover"
        assert holder in event.message and "lease" in event.message
        assert takeovers(io, task_id) == [event.message]
        lease = lease_of(io, task_id)
        assert lease is not None and lease.token not in (old_token, "") and lease.takeovers == 1
        engine.execute()
        assert engine.task_result == expected_result(2)
    finally:
        engine.unbind()
    assert lease_of(io, task_id) is None
    if stale == "unrenewed-keeper":
        assert keeper.renew() is False and keeper.lost.is_set()
        assert keeper.release() is False


def test_old_holder_is_fenced_after_a_takeover(backend: Backend, tmp_path: Path) -> None:
    journal, task_id = tmp_path / "journal", new_task_id("fenced")
    old_io = backend.io(lease_seconds=1.0)
    old = engine_for(old_io, task_id, 3, journal)
    old.bind()
    old._keeper.stop()  # as if paused: it stops renewing its lease
    fence = old._keeper.fence
    wait_for(lambda: time.time() > old._keeper.record.heartbeat_at + 1.05, 5, "the old lease to expire")

    new = engine_for(backend.io(), task_id, 3, journal, timeout=None)
    new.bind()
    try:
        assert new.task_state.history[-1].event == "lock takeover"
        new.execute()
        assert new.status is S.COMPLETE
        stored = objects_of(backend.io(), task_id)
        journal_before = read_journal(journal)

        s1, task_obj = names.stage_obj_name(task_id, "s1"), names.task_obj_name(task_id)
        for obj in (s1, task_obj, names.stage_obj_name(task_id, "s9"), names.cancel_obj_name(task_id)):
            with pytest.raises(LeaseLostException):
                old_io.write(obj, b'{"overwritten": true}', fence=fence)
        with pytest.raises(LeaseLostException):
            old_io.remove(s1, fence=fence)
        with pytest.raises(LeaseLostException):
            old_io.commit([(s1, b'{"overwritten": true}'), (task_obj, None)], fence=fence)
        with pytest.raises(LeaseLostException):
            old.execute()  # its first write (s1 RUNNING) is refused before any stage code runs
        with pytest.raises(LeaseLostException):
            old.unbind(clean=True)  # nor can it remove the task it no longer holds
        assert not old.bound
        assert read_journal(journal) == journal_before, "stage code ran without the lease"
        assert objects_of(backend.io(), task_id) == stored, "the fenced holder changed the new holder's objects"
        assert new.check_sync()
    finally:
        new.unbind()
    assert lease_of(backend.io(), task_id) is None


# --------------------------------------------------------------------------- cancel


CANCEL_WHILE_RUNNING: list[tuple[Backend, str]] = []  # set: the stage asks for a cancel of its task, then fails


class CancelThenFail(JournalStage):
    """Asks, through another TaskIO, for a cancel of its own task and then fails, while armed."""

    def execute_stage(self, previous_state_copy: CounterState) -> None:
        if CANCEL_WHILE_RUNNING:
            backend, task_id = CANCEL_WHILE_RUNNING[0]
            CheckMateEngine.request_cancel(backend.io(), task_id, "second request")
            raise RuntimeError("failed after the cancel request")
        super().execute_stage(previous_state_copy)


def test_cancel_request_arriving_while_a_stage_fails_is_consumed(
    backend: Backend, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    journal, task_id = tmp_path / "journal", new_task_id("cancel")
    stages = [CancelThenFail(stage_name="s1", state=CounterState(), journal_path=str(journal))]
    engine = CheckMateEngine(backend.io(), task_id, stages, RetryPolicy.RETRY, 5)
    with engine:
        CheckMateEngine.request_cancel(backend.io(), task_id, "first request")
        with pytest.raises(TaskEngineException, match="canceled"):
            engine.execute()  # noticed at the stage boundary: the request is read and removed
        engine.reset()
        CANCEL_WHILE_RUNNING.append((backend, task_id))
        try:
            with pytest.raises(TaskEngineException, match="canceled while"):
                engine.execute()
        finally:
            CANCEL_WHILE_RUNNING.clear()
        assert engine.status is S.CANCELED
        assert not backend.io().exists(names.cancel_obj_name(task_id)), "the honoured cancel request was left"
        engine.reset()
        engine.execute()  # runs: no cancel request stands any more
        assert engine.status is S.COMPLETE and engine.task_result == expected_result(1)
    assert starts(journal) == ["s1"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("corruption", [b'{"stage_name": "s1", "status": "COMPL', b"\xff\xfe\x00 not json"])
def test_corrupt_stage_object_is_refused_by_name_and_left_in_place(
    backend: Backend, tmp_path: Path, corruption: bytes
) -> None:
    journal, task_id = tmp_path / "journal", new_task_id("corrupt")
    first = engine_for(backend.io(), task_id, 3, journal, fail_first={"s2": 1})
    with first, pytest.raises(TaskEngineException, match="auto-recovered"):
        first.execute()
    io = backend.io()
    s1 = names.stage_obj_name(task_id, "s1")
    original = io.read_bytes(s1)
    io.write(s1, corruption)
    before = objects_of(io, task_id)
    assert before[s1] == corruption

    engine = engine_for(backend.io(), task_id, 3, journal, fail_first={"s2": 1})
    with pytest.raises(PersistenceDataNotFoundException) as excinfo:
        engine.bind()
    assert io.build_url(s1) in str(excinfo.value)
    assert "left in place" in str(excinfo.value)
    assert not engine.bound
    assert objects_of(backend.io(), task_id) == before, "the refused bind changed the stored objects"

    io.write(s1, original)  # restored, the task resumes where it stopped: nothing was lost
    with engine_for(backend.io(), task_id, 3, journal, fail_first={"s2": 1}) as resumed:
        resumed.execute()
        assert resumed.task_result == expected_result(3)
    assert starts(journal) == ["s1", "s2", "s2", "s3"]


BAD_IDS = ["", "../x", "a/b", "/abs", "..", ".hidden", "-x", "a..b", "a b", "tâche", "x\n", "x" * 201]


def test_bad_task_ids_and_stage_names_are_refused_before_any_storage_call(backend: Backend, tmp_path: Path) -> None:
    journal, io = tmp_path / "journal", backend.io()
    before = io.list("")
    calls = spy(io)
    for bad in BAD_IDS:
        with pytest.raises(TaskEngineException, match="invalid task id"):
            CheckMateEngine(io, bad, make_stages(2, str(journal)))
        with pytest.raises(TaskEngineException, match="invalid task id"):
            CheckMateEngine.request_cancel(io, bad, "bad id")
        with pytest.raises(TaskEngineException, match="invalid task id"):
            read_snapshot(io, bad)

    task_id = new_task_id("names")
    for bad in BAD_IDS:
        stages = make_stages(2, str(journal))
        stages.append(JournalStage.model_construct(stage_name=bad, state=CounterState(), journal_path=str(journal)))
        engine = CheckMateEngine(io, task_id, stages, RetryPolicy.RETRY, 3)
        with pytest.raises(TaskEngineException, match="invalid stage name"):
            engine.bind()
        assert not engine.bound
    duplicated = make_stages(3, str(journal))
    duplicated[2].stage_name = "s1"
    with pytest.raises(TaskEngineException, match="unique"):
        CheckMateEngine(io, task_id, duplicated, RetryPolicy.RETRY, 3).bind()

    assert calls == [], f"storage was called before the ids were checked: {calls}"
    assert backend.io().list("") == before, "a refused id stored something"
    assert starts(journal) == []


# --------------------------------------------------------------------------- checkpoints


def held_by(token: str) -> str:
    """A lease record's text, held by ``token`` (on another host)."""
    now = time.time()
    record = LeaseRecord(token=token, host="elsewhere", pid=1, acquired_at=now, heartbeat_at=now, lease_seconds=30)
    return record.model_dump_json()


def test_a_checkpoint_is_read_back_whole_and_refused_after_a_takeover(backend: Backend) -> None:
    """``commit`` applies each object's last change; ``read_prefix`` reads one task; a stale fence changes nothing."""
    io, task_id = backend.io(), new_task_id("checkpoint")
    lock, cancel = names.lock_obj_name(task_id), names.cancel_obj_name(task_id)
    s1, s2 = (names.stage_obj_name(task_id, s) for s in ("s1", "s2"))
    record = names.task_obj_name(task_id)
    io.write(f"{task_id}x/task.json", b"a neighbour whose id starts with this one's")
    assert io.lease_create(lock, held_by("old"))
    old = Fence(lock, "old")
    io.commit([(record, b"task"), (s1, b"s1 RUNNING"), (cancel, b"please")], fence=old)
    io.commit([(s1, b"s1 COMPLETE"), (s2, b"s2 RUNNING"), (cancel, None), (s2, b"s2 RUNNING, attempt 1")], fence=old)
    expected = {record: b"task", s1: b"s1 COMPLETE", s2: b"s2 RUNNING, attempt 1"}
    found = backend.io().read_prefix(names.task_prefix(task_id))
    assert found.pop(lock) and found == expected
    assert objects_of(backend.io(), task_id) == {**expected, lock: io.read_bytes(lock)}

    assert backend.io().lease_swap(lock, io.lease_read(lock) or "", held_by("new"))
    before = objects_of(backend.io(), task_id)
    for changes in ([(s2, b"s2 COMPLETE"), (names.stage_obj_name(task_id, "s3"), b"s3 RUNNING")], [(s1, None)]):
        with pytest.raises(LeaseLostException):
            io.commit(changes, fence=old)
        assert objects_of(backend.io(), task_id) == before, "a refused checkpoint changed the task"
