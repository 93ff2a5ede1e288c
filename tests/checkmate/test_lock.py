"""The bind lock between real processes: mutual exclusion, takeover of dead holders, waiting, fencing.

Proves that:

- processes binding the same task over and over are never bound at the same time, and each gets the
  lock in turn (a seeded subset of the lock race campaign, ``reliability.race``, on every backend);
- a holder killed with SIGKILL is taken over by the next bind at once (its pid is dead, so no waiting
  for the lease to expire), and the takeover is recorded in the task record's history;
- ``bind_lock_timeout=None`` fails at once against a live holder, naming it; a number waits about that
  long then fails; a holder that releases during the wait lets the waiter in;
- a holder paused (SIGSTOP) past its lease is fenced: after another process took the task over, the
  paused one's writes are refused (LeaseLostException) and the new holder's stored state is untouched,
  across processes (a round of the zombie campaign, ``reliability.zombie``, on file and PostgreSQL) and
  in one process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from airflow_checkmate.checkmate import (
    BindException,
    CheckMateEngine,
    LeaseLostException,
    RetryPolicy,
    StageStatus,
    TaskEngineState,
    TaskIO,
    TaskIOFile,
)
from reliability import race, zombie
from support.processes import S3_CONN_ID, start_task_process
from support.stages import expected_result, make_stages, read_journal
from support.stored_objects import get_object, objects_under
from support.waiting import journal_has, proc_state, reaped, wait_for

RACE_WORKERS = 3
RACE_ROUNDS = 40


# --------------------------------------------------------------------------- helpers


def snapshot(task_dir: Path) -> dict[str, bytes]:
    """Every stored object of a task (temporary files excluded), byte for byte."""
    return {n.partition("/")[2]: b for n, b in objects_under(task_dir.parent, f"{task_dir.name}/").items()}


def stored_task(task_dir: Path) -> TaskEngineState:
    return TaskEngineState.model_validate_json(get_object(task_dir.parent, f"{task_dir.name}/task.json") or b"")


def takeovers(task_dir: Path) -> list[str]:
    return [e.message for e in stored_task(task_dir).history if e.event == "lock takeover"]


def engine_for(io: TaskIO, n: int, journal_path: Path | str = "", timeout: float | None = None):
    """An engine for task ``t`` of ``n`` journal stages, allowed to run an interrupted stage again."""
    stages = make_stages(n, str(journal_path))
    return CheckMateEngine(io, "t", stages, RetryPolicy.RETRY, max_attempts=5, bind_lock_timeout=timeout)


# --------------------------------------------------------------------------- race


@pytest.mark.slow
@pytest.mark.parametrize(("store", "rounds"), [("file", RACE_ROUNDS), ("sqlite", 15), ("postgresql", 20), ("s3", 10)])
def test_processes_binding_the_same_task_never_hold_it_together(
    request: pytest.FixtureRequest, tmp_path: Path, store: str, rounds: int
) -> None:
    """A seeded subset of ``reliability.race``: its journal checks, on every backend."""
    conn_id = None
    if store == "s3":
        base, conn_id = str(request.getfixturevalue("s3_url")), S3_CONN_ID
    elif store == "postgresql":
        base = str(request.getfixturevalue("postgres_url"))
    elif store == "sqlite":
        base = f"sqlite:///{tmp_path / 'race.db'}"
    else:
        base = str(request.getfixturevalue("base"))
    result = race.run_race(base, RACE_WORKERS, rounds, tmp_path, conn_id)
    print(f"\nlock race: {result.binds} binds, {result.switches} holder switches, {result.waited} binds waited")
    assert not result.violations, result.violations
    assert result.binds == RACE_WORKERS * rounds


def test_race_journal_check_finds_two_holders() -> None:
    """The race's journal check is not vacuous: overlapping holders, a taken marker and a missed round fail it."""
    lines = [
        ["enter", "w0", "1", "0", "1.0", "0.05"],
        ["enter", "w1", "2", "0", "1.1", "0.00"],
        ["marker-taken", "w1", "2", "0"],
        ["exit", "w0", "1", "0", "1.2"],
        ["exit", "w1", "2", "0", "1.3"],
    ]
    result = race.RaceResult()
    race.check_journal(lines, 2, 2, result)
    assert any("entered while w0" in v for v in result.violations), result.violations
    assert any("marker" in v for v in result.violations)
    assert any("held the lock 1 times, not 2" in v for v in result.violations)
    ok = race.RaceResult()
    race.check_journal([line for line in lines[:1] + lines[3:4]], 1, 1, ok)
    assert ok.violations == ["only 0 holder switches: the workers did not contend"]


# --------------------------------------------------------------------------- dead holder


@pytest.mark.parametrize("reap", [True, False], ids=["reaped", "zombie"])
def test_killed_holder_is_taken_over_at_once(base: Path, tmp_path: Path, reap: bool) -> None:
    journal_path = tmp_path / "journal"
    holder = start_task_process(str(base), "t", "3", "--journal", str(journal_path), "--sleep", "60")
    with reaped(holder):
        wait_for(lambda: journal_has(journal_path, "start", "s1"), what="the holder to start s1")
        lease = json.loads((base / "t" / "task.lock").read_text())
        assert lease["pid"] == holder.pid
        os.kill(holder.pid, signal.SIGKILL)
        if reap:
            holder.wait(timeout=10)
        else:  # a dead child its parent has not reaped yet is a zombie: dead as well
            wait_for(lambda: proc_state(holder.pid) == "Z", 10, "the holder to become a zombie")

        # The lease is fresh (30 s) and the holder is dead: bind without any waiting takes it over.
        engine = engine_for(TaskIOFile(base), 3, journal_path, timeout=None)
        engine.bind()
        try:
            event = engine.task_state.history[-1]
            assert event.event == "lock takeover"
            assert f"pid {holder.pid}," in event.message
            assert takeovers(base / "t") == [event.message]
            new_lease = json.loads((base / "t" / "task.lock").read_text())
            assert new_lease["pid"] == os.getpid()
            assert new_lease["token"] != lease["token"]
            engine.execute(strict_recovery=True)
            assert engine.status is StageStatus.COMPLETE
            assert engine.task_result == expected_result(3)
        finally:
            engine.unbind()
    starts = [w for w in read_journal(journal_path) if w[0] == "start"]
    assert starts == [["start", "s1", "1"], ["start", "s1", "2"], ["start", "s2", "1"], ["start", "s3", "1"]]
    assert not (base / "t" / "task.lock").exists()


# --------------------------------------------------------------------------- waiting for a live holder


def test_bind_lock_timeout_against_a_live_holder(base: Path, tmp_path: Path) -> None:
    journal_path = tmp_path / "journal"
    holder = start_task_process(str(base), "t", "1", "--journal", str(journal_path), "--sleep", "2.5")
    task_dir = base / "t"
    with reaped(holder):
        wait_for(lambda: journal_has(journal_path, "start", "s1"), what="the holder to start s1")
        before = snapshot(task_dir)
        io = TaskIOFile(base)

        began = time.monotonic()
        with pytest.raises(BindException) as excinfo:
            engine_for(io, 1, timeout=None).bind()
        assert time.monotonic() - began < 1.0, "bind_lock_timeout=None must fail at once"
        assert f"host {socket.gethostname()} pid {holder.pid}" in str(excinfo.value)
        assert not isinstance(excinfo.value, LeaseLostException)

        began = time.monotonic()
        with pytest.raises(BindException, match=rf"after waiting 0\.6 s: host \S+ pid {holder.pid}\b"):
            engine_for(io, 1, timeout=0.6).bind()
        assert 0.6 <= time.monotonic() - began < 2.0
        assert snapshot(task_dir) == before, "a failed bind changed the holder's stored objects"
        assert holder.poll() is None

        # The holder finishes its stage and releases while we wait: we get in, with no takeover.
        began = time.monotonic()
        waiter = engine_for(io, 1, journal_path, timeout=30)
        waiter.bind()
        try:
            assert time.monotonic() - began > 0.3, "the waiter got in while the holder still ran"
            assert journal_has(journal_path, "end", "s1"), "bound before the holder finished its stage"
            assert waiter.status is StageStatus.COMPLETE
            assert waiter.task_result == expected_result(1)
            assert takeovers(task_dir) == [], "a released lock was recorded as taken over"
            assert json.loads((task_dir / "task.lock").read_text())["pid"] == os.getpid()
        finally:
            waiter.unbind()
        out, err = holder.communicate(timeout=30)
        assert holder.returncode == 0, out + err


# --------------------------------------------------------------------------- fencing


@pytest.mark.slow
@pytest.mark.parametrize("store", ["file", "sqlite", "postgresql", "s3"])
def test_paused_holder_past_its_lease_is_fenced(request: pytest.FixtureRequest, tmp_path: Path, store: str) -> None:
    """A round of ``reliability.zombie``: A paused past its lease, B takes over, A resumed is refused."""
    url = str(request.getfixturevalue("postgres_url")) if store == "postgresql" else None
    (outcome,) = zombie.run_backend(1, tmp_path, url, store)
    assert outcome.violations == []
    assert (outcome.refused, outcome.overwritten, outcome.ran_on, outcome.completed) == (1, 0, 0, 1)


def take_over_in_process(base: Path, journal_path: Path):
    """Engine A binds with a 0.3 s lease and stops renewing it (as if paused); engine B, a real second bind,
    takes the expired lease over and runs the task to COMPLETE. Returns (A, B), B still bound."""
    a = engine_for(TaskIOFile(base, lease_seconds=0.3, durable=False), 3, journal_path)
    a.bind()
    a._keeper.stop()
    time.sleep(0.4)
    b = engine_for(TaskIOFile(base, durable=False), 3, journal_path, timeout=None)
    b.bind()
    assert b.task_state.history[-1].event == "lock takeover"
    assert "lease 0.3 s" in b.task_state.history[-1].message
    b.execute()
    assert b.status is StageStatus.COMPLETE
    return a, b


def test_engine_whose_lease_was_taken_over_cannot_write(base: Path, tmp_path: Path) -> None:
    journal_path = tmp_path / "journal"
    task_dir = base / "t"
    a, b = take_over_in_process(base, journal_path)
    try:
        stored = snapshot(task_dir)
        journal_before = read_journal(journal_path)

        with pytest.raises(LeaseLostException):
            a.execute()  # its first write (s1 RUNNING) is refused, before any stage code runs
        assert read_journal(journal_path) == journal_before, "stage code ran without the lease"
        with pytest.raises(LeaseLostException):
            a.reset(stage_name="s1")
        with pytest.raises(LeaseLostException):
            a.unbind(clean=True)  # nor can it remove the task it no longer holds
        assert not a.bound
        assert snapshot(task_dir) == stored, "the engine that lost its lease changed the new holder's objects"

        assert b.check_sync()
        assert b.task_result == expected_result(3)
    finally:
        b.unbind()
    assert not (task_dir / "task.lock").exists()
    assert sorted(snapshot(task_dir)) == [
        "s1.stage.json",
        "s2.stage.json",
        "s3.stage.json",
        "task.json",
    ]


def test_engine_whose_lease_was_taken_over_runs_no_cancel_cleanup(base: Path, tmp_path: Path) -> None:
    """A cancel by an engine that lost its lease is refused, so the stage's cancel() cleanup must not run:
    it would clean up after work that the new holder owns (here: has already completed)."""
    journal_path = tmp_path / "journal"
    task_dir = base / "t"
    a, b = take_over_in_process(base, journal_path)
    try:
        stored = snapshot(task_dir)
        with pytest.raises(LeaseLostException):
            a.cancel()
        assert snapshot(task_dir) == stored
        cleanups = [w for w in read_journal(journal_path) if w[0] == "cancel"]
        assert cleanups == [], f"a refused cancel ran the stage's cleanup: {cleanups}"
    finally:
        with contextlib.suppress(LeaseLostException):
            a.unbind()
        b.unbind()
