"""Real worker processes sharing only a database: resume elsewhere, fencing a zombie.

Proves, on PostgreSQL, that:

- a task whose worker was SIGKILLed mid-stage is resumed by another process that shares nothing with
  the first but the database (its own working directory, journal and temp folder): it takes the dead
  holder's lease over at once, runs the interrupted stage again, never the completed ones, completes
  with the right result and records the takeover in the task's history;
- a holder paused (SIGSTOP) past its lease and taken over is fenced: after SIGCONT its write is refused
  with LeaseLostException and the new holder's stored objects are unchanged byte for byte.

The race of many processes binding one task runs on every backend in test_lock.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from airflow_checkmate.checkmate import (
    LeaseLostException,
    StageStatus,
    TaskEngineState,
    TaskIO,
    TaskIOSQL,
    TaskSnapshot,
    read_snapshot,
)
from support.processes import child_env
from support.stages import expected_result, read_journal
from support.waiting import journal_has, proc_state, reaped, wait_for

S = StageStatus
pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- helpers


def spawn(*args: str, cwd: Path, module: str = "support.run_task") -> subprocess.Popen[str]:
    """Start ``python -m module args`` in ``cwd`` with a temp folder of its own under ``cwd``."""
    env = child_env()
    env["TMPDIR"] = str(cwd / "tmp")
    (cwd / "tmp").mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def new_task_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:10]}"


def objects_of(io: TaskIO, task_id: str) -> dict[str, bytes]:
    """Every stored object of a task, byte for byte."""
    return {name: io.read_bytes(name) for name in io.list(f"{task_id}/")}


def stored_task(io: TaskIO, task_id: str) -> TaskEngineState:
    return TaskEngineState.model_validate_json(io.read_bytes(f"{task_id}/task.json"))


def takeovers(io: TaskIO, task_id: str) -> list[str]:
    return [e.message for e in stored_task(io, task_id).history if e.event == "lock takeover"]


def snapshot_where(io: TaskIO, task_id: str, predicate, timeout: float, what: str) -> TaskSnapshot:
    """Poll the stored progress until ``predicate`` holds; return that snapshot."""
    found: list[TaskSnapshot] = []

    def check() -> bool:
        snap = read_snapshot(io, task_id)
        if snap is not None and predicate(snap):
            found.append(snap)
            return True
        return False

    wait_for(check, timeout, what)
    return found[0]


def open_transactions(io: TaskIOSQL) -> int:
    """Transactions other sessions have open in this PostgreSQL database (they may hold row locks)."""
    with io.engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
                )
            ).scalar()
            or 0
        )


def pause(proc: subprocess.Popen[str], io: TaskIOSQL) -> None:
    """SIGSTOP ``proc`` at a moment it has no transaction open (else its row locks would block the others)."""
    for _ in range(200):
        os.kill(proc.pid, signal.SIGSTOP)
        wait_for(lambda: proc_state(proc.pid) in ("T", "t"), 5, "the process to stop")
        if open_transactions(io) == 0:
            return
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.003)
    raise AssertionError("could not pause the process outside of a database transaction")


def starts(path: Path) -> list[str]:
    return [w[1] for w in read_journal(path) if w[0] == "start"]


# --------------------------------------------------------------------------- resume on another worker


def test_task_killed_mid_stage_is_resumed_by_a_worker_sharing_only_the_database(
    postgres_url: str, tmp_path: Path
) -> None:
    task_id = new_task_id("resume")
    io = TaskIO.from_base_url(postgres_url)
    worker_a, worker_b = tmp_path / "worker-a", tmp_path / "worker-b"
    worker_a.mkdir()
    worker_b.mkdir()
    # The journal path is relative: each worker writes its own, in its own working directory. Worker A's
    # lease is 30 s, so worker B can only get in at once by seeing that A's pid is dead.
    common = (postgres_url, task_id, "4", "--journal", "journal", "--max-attempts", "3")
    first = spawn(*common, "--sleep", "0.8", "--lease", "30", cwd=worker_a)
    with reaped(first):
        # RUNNING is stored before the stage code starts: wait for s3's own journal line too, so the kill
        # lands mid-stage, not between the checkpoint and the stage's first line.
        journal_a = worker_a / "journal"
        running = snapshot_where(
            io,
            task_id,
            lambda s: s.stages[2].status is S.RUNNING and journal_a.exists() and starts(journal_a)[-1:] == ["s3"],
            30,
            "worker A to be running s3's code",
        )
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    assert running.locked and [s.status for s in running.stages] == [S.COMPLETE, S.COMPLETE, S.RUNNING, S.CREATED]
    killed = read_snapshot(io, task_id)
    assert killed is not None and killed.locked, "the killed worker's lease is still stored"
    assert [(s.status, s.attempts) for s in killed.stages[:3]] == [(S.COMPLETE, 1), (S.COMPLETE, 1), (S.RUNNING, 1)]

    began = time.monotonic()
    second = spawn(*common, "--sleep", "0.2", "--lease", "2", cwd=worker_b)
    with reaped(second):
        out, err = second.communicate(timeout=45)
    assert second.returncode == 0, out + err
    assert time.monotonic() - began < 25, "worker B waited for the dead holder's lease to expire"
    assert out.split(maxsplit=1) == ["COMPLETE", json.dumps(expected_result(4)) + "\n"]

    assert starts(worker_a / "journal") == ["s1", "s2", "s3"]
    assert starts(worker_b / "journal") == ["s3", "s4"], "a stage completed before the kill ran again"
    done = read_snapshot(io, task_id)
    assert done is not None and done.status is S.COMPLETE and not done.locked
    assert [s.attempts for s in done.stages] == [1, 1, 2, 1]
    assert done.result == expected_result(4)
    messages = takeovers(io, task_id)
    assert len(messages) == 1, messages
    assert f"pid {first.pid}," in messages[0] and "lease 30 s" in messages[0], messages


# --------------------------------------------------------------------------- fencing a zombie


def test_paused_holder_past_its_lease_is_fenced(postgres_url: str, tmp_path: Path) -> None:
    task_id = new_task_id("zombie")
    io = TaskIO.from_base_url(postgres_url)
    assert isinstance(io, TaskIOSQL)
    journal_path = tmp_path / "journal"
    args = (postgres_url, task_id, "4", "--journal", str(journal_path), "--sleep", "0.4")
    old = spawn(*args, "--lease", "1", cwd=tmp_path / "old")
    with reaped(old):
        wait_for(lambda: journal_has(journal_path, "start", "s2"), 30, "the first holder to start s2")
        pause(old, io)
        old_lease = json.loads(io.lease_read(f"{task_id}/task.lock") or "{}")
        assert old_lease["pid"] == old.pid
        wait_for(lambda: time.time() > old_lease["heartbeat_at"] + 1.05, 5, "the paused holder's lease to expire")

        new = spawn(*args, cwd=tmp_path / "new")
        with reaped(new):
            # The new holder takes the expired lease over, runs s2 again and completes it, starts s3.
            wait_for(lambda: journal_has(journal_path, "start", "s3"), 30, "the new holder to reach s3")
            pause(new, io)
            state = objects_of(io, task_id)
            assert json.loads(state[f"{task_id}/task.lock"])["pid"] == new.pid
            s2 = json.loads(state[f"{task_id}/s2.stage.json"])
            assert (s2["status"], s2["attempts"]) == ("COMPLETE", 2)

            # The old holder wakes up: it finishes its s2 code, but its write is refused.
            os.kill(old.pid, signal.SIGCONT)
            out, err = old.communicate(timeout=30)
            assert old.returncode == 4, out + err
            assert LeaseLostException.__name__ in out, out
            assert objects_of(io, task_id) == state, "the fenced holder changed the new holder's stored state"

            os.kill(new.pid, signal.SIGCONT)
            out, err = new.communicate(timeout=30)
            assert new.returncode == 0, out + err
            assert out.split(maxsplit=1) == ["COMPLETE", json.dumps(expected_result(4)) + "\n"]

    messages = takeovers(io, task_id)
    assert len(messages) == 1, messages
    assert f"pid {old.pid}," in messages[0] and "lease 1 s" in messages[0], messages
    s2_history = json.loads(io.read(f"{task_id}/s2.stage.json"))["history"]
    assert [(h["status"], h["attempt"]) for h in s2_history] == [("RUNNING", 1), ("RUNNING", 2), ("COMPLETE", 2)]
    assert [w[1:] for w in read_journal(journal_path) if w[0] == "start"] == [
        ["s1", "1"],
        ["s2", "1"],
        ["s2", "2"],
        ["s3", "1"],
        ["s4", "1"],
    ], "the old holder ran on"
    assert io.lease_read(f"{task_id}/task.lock") is None
