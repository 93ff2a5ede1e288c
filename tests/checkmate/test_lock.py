"""The bind lock between real processes: mutual exclusion, takeover of dead holders, waiting, fencing.

Proves that:

- processes binding the same task over and over are never bound at the same time (an O_EXCL marker
  file each holder creates while bound never finds another's), and each gets the lock in turn;
- a holder killed with SIGKILL is taken over by the next bind at once (its pid is dead, so no waiting
  for the lease to expire), and the takeover is recorded in the task record's history;
- ``bind_lock_timeout=None`` fails at once against a live holder, naming it; a number waits about that
  long then fails; a holder that releases during the wait lets the waiter in;
- a holder paused (SIGSTOP) past its lease is fenced: after another process took the task over, the
  paused one's writes are refused (LeaseLostException) and the new holder's stored state is untouched,
  both across processes and in one process.

The race worker is this module itself: ``python -m tests.checkmate.test_lock race ...``.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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
from tests.conftest import ROOT, S3_CONN_ID, child_env, start_task_process
from tests.helpers.stages import expected_result, journal, make_stages, read_journal

RACE_WORKERS = 3
RACE_ROUNDS = 40


# --------------------------------------------------------------------------- helpers


def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def journal_has(path: Path, *words: str) -> bool:
    return any(line[: len(words)] == list(words) for line in read_journal(path))


def snapshot(task_dir: Path) -> dict[str, bytes]:
    """Every stored object of a task (temporary files excluded), byte for byte."""
    return {p.name: p.read_bytes() for p in sorted(task_dir.iterdir()) if not p.name.startswith(".")}


def stored_task(task_dir: Path) -> TaskEngineState:
    return TaskEngineState.model_validate_json((task_dir / "task.json").read_bytes())


def takeovers(task_dir: Path) -> list[str]:
    return [e.message for e in stored_task(task_dir).history if e.event == "lock takeover"]


def folder_locked(folder: Path) -> bool:
    """True if some process holds the storage's flock on ``folder`` (it would block a lease change)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def pause(proc: subprocess.Popen[str], task_dir: Path) -> None:
    """SIGSTOP ``proc``, at a moment it does not hold the task folder's flock (else others would block)."""
    for _ in range(200):
        os.kill(proc.pid, signal.SIGSTOP)
        wait_for(lambda: _proc_state(proc.pid) in ("T", "t"), 5, "the process to stop")
        if not folder_locked(task_dir):
            return
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.003)
    raise AssertionError("could not pause the process outside of its storage flock")


def _proc_state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2]


@contextlib.contextmanager
def reaped(*procs: subprocess.Popen[str]) -> Iterator[None]:
    """Whatever happens in the test, leave no child running, stopped or unreaped."""
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)


def engine_for(io: TaskIO, n: int, journal_path: Path | str = "", timeout: float | None = None):
    """An engine for task ``t`` of ``n`` journal stages, allowed to run an interrupted stage again."""
    stages = make_stages(n, str(journal_path))
    return CheckMateEngine(io, "t", stages, RetryPolicy.RETRY, max_attempts=5, bind_lock_timeout=timeout)


# --------------------------------------------------------------------------- race


def race_worker(
    base: str, name: str, rounds: int, marker: str, log: str, go: str, seed: int, conn_id: str | None = None
) -> int:
    """Bind the task ``rounds`` times; while bound, own ``marker`` exclusively. Logs to ``log``."""
    io = TaskIO.from_base_url(base, durable=False, **({"conn_id": conn_id} if conn_id else {}))
    rng = random.Random(seed)
    journal(log, f"ready {name}")
    wait_for(lambda: os.path.exists(go), 60, "the go signal")
    for round_ in range(rounds):
        engine = engine_for(io, 1, timeout=30)
        began = time.monotonic()
        engine.bind()
        waited = time.monotonic() - began
        try:
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                journal(log, f"violation {name} {round_}")
                continue
            journal(log, f"acquire {name} {round_} {waited:.4f}")
            time.sleep(rng.uniform(0.001, 0.008))
            journal(log, f"release {name} {round_}")
            os.close(fd)
            os.unlink(marker)
        finally:
            engine.unbind()
        time.sleep(rng.uniform(0.0, 0.02))
    return 0


@pytest.mark.slow
@pytest.mark.parametrize(("store", "rounds"), [("file", RACE_ROUNDS), ("sqlite", 15), ("postgresql", 20), ("s3", 10)])
def test_processes_binding_the_same_task_never_hold_it_together(
    request: pytest.FixtureRequest, tmp_path: Path, store: str, rounds: int
) -> None:
    marker, log, go = tmp_path / "marker", tmp_path / "race.log", tmp_path / "go"
    conn: list[str] = []
    if store == "s3":
        base, conn = str(request.getfixturevalue("s3_url")), [S3_CONN_ID]
    elif store == "postgresql":
        base = str(request.getfixturevalue("postgres_url"))
    elif store == "sqlite":
        base = f"sqlite:///{tmp_path / 'race.db'}"
    else:
        base = str(request.getfixturevalue("base"))
    worker = [sys.executable, "-m", "tests.checkmate.test_lock", "race", base]
    procs = [
        subprocess.Popen(
            [*worker, f"w{i}", str(rounds), str(marker), str(log), str(go), str(i), *conn],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(RACE_WORKERS)
    ]
    with reaped(*procs):
        wait_for(lambda: sum(w[0] == "ready" for w in read_journal(log)) == RACE_WORKERS, 60, "workers to start")
        go.touch()
        for proc in procs:
            _, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, err

    lines = read_journal(log)
    violations = [w for w in lines if w[0] == "violation"]
    assert not violations, f"two holders at once: {violations}"
    events = [w for w in lines if w[0] in ("acquire", "release")]
    # Holding intervals never overlap: the log strictly alternates acquire X / release X.
    for acquire, release in zip(events[::2], events[1::2], strict=True):
        assert (acquire[0], release[0]) == ("acquire", "release"), events
        assert acquire[1:3] == release[1:3], f"{acquire} overlapped by another holder: {events}"
    holders = [w[1] for w in events[::2]]
    for i in range(RACE_WORKERS):
        assert holders.count(f"w{i}") == rounds, f"w{i} did not get the lock every round"
    switches = sum(a != b for a, b in itertools.pairwise(holders))
    waits = sum(float(w[3]) > 0.03 for w in events[::2])
    print(f"\nlock race: {len(holders)} binds, {switches} holder switches, {waits} binds waited for the lock")
    assert switches >= RACE_WORKERS, "the workers did not contend: one ran all its rounds, then the other"
    assert waits > 0, "no bind ever had to wait, so nothing was raced"
    store_io = TaskIO.from_base_url(base, **({"conn_id": conn[0]} if conn else {}))
    assert store_io.lease_read("t/task.lock") is None, "the last holder left its lease behind"
    assert not marker.exists()


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
            wait_for(lambda: _proc_state(holder.pid) == "Z", 10, "the holder to become a zombie")

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
def test_paused_holder_past_its_lease_is_fenced(base: Path, tmp_path: Path) -> None:
    journal_path = tmp_path / "journal"
    task_dir = base / "t"
    args = (str(base), "t", "4", "--journal", str(journal_path), "--sleep", "0.4")
    old = start_task_process(*args, "--lease", "1")
    new: subprocess.Popen[str] | None = None
    with reaped(old):
        wait_for(lambda: journal_has(journal_path, "start", "s2"), what="the first holder to start s2")
        pause(old, task_dir)
        old_lease = json.loads((task_dir / "task.lock").read_text())
        assert old_lease["pid"] == old.pid
        wait_for(lambda: time.time() > old_lease["heartbeat_at"] + 1.05, 5, "the paused holder's lease to expire")

        new = start_task_process(*args)
        with reaped(new):
            # The new holder takes the expired lease over, runs s2 again and completes it, starts s3.
            wait_for(lambda: journal_has(journal_path, "start", "s3"), what="the new holder to reach s3")
            pause(new, task_dir)
            state = snapshot(task_dir)
            assert json.loads(state["task.lock"])["pid"] == new.pid
            s2 = json.loads(state["s2.stage.json"])
            assert (s2["status"], s2["attempts"]) == ("COMPLETE", 2)

            # The old holder wakes up: it finishes its s2 code, but its writes are refused.
            os.kill(old.pid, signal.SIGCONT)
            out, err = old.communicate(timeout=30)
            assert old.returncode == 4, out + err
            assert "LeaseLostException" in out, out
            assert snapshot(task_dir) == state, "the fenced holder changed the new holder's stored state"

            os.kill(new.pid, signal.SIGCONT)
            out, err = new.communicate(timeout=30)
            assert new.returncode == 0, out + err
            assert out.split(maxsplit=1) == ["COMPLETE", json.dumps(expected_result(4)) + "\n"]

    messages = takeovers(task_dir)
    assert len(messages) == 1, messages
    assert f"pid {old.pid}," in messages[0], messages
    assert "lease 1 s" in messages[0], messages
    s2_history = json.loads((task_dir / "s2.stage.json").read_text())["history"]
    assert [(h["status"], h["attempt"]) for h in s2_history] == [("RUNNING", 1), ("RUNNING", 2), ("COMPLETE", 2)]
    starts = [w[1:] for w in read_journal(journal_path) if w[0] == "start"]
    assert starts == [["s1", "1"], ["s2", "1"], ["s2", "2"], ["s3", "1"], ["s4", "1"]], "the old holder ran on"
    assert not (task_dir / "task.lock").exists()


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
    assert sorted(p.name for p in task_dir.iterdir() if not p.name.startswith(".")) == [
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


if __name__ == "__main__":
    if sys.argv[1] == "race":
        _, _, base_arg, name_arg, rounds_arg, marker_arg, log_arg, go_arg, seed_arg, *conn_arg = sys.argv
        sys.exit(
            race_worker(base_arg, name_arg, int(rounds_arg), marker_arg, log_arg, go_arg, int(seed_arg), *conn_arg)
        )
    sys.exit(f"unknown command {sys.argv[1:]}")
