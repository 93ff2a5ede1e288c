"""Liveness of lease holders across processes, on files and PostgreSQL, with real processes.

Proves that:

- a bind by a newer try of the same instance (the operator's claim: instance key + try number) takes
  over a live older try's lease at once and records it; the older try stops its stage at once, ends
  naming the new holder and writes nothing more (no rollback, no status change);
- a holder of another instance, a holder without a claim (the CLI, a script) and the same try are not
  taken over: they are waited for, and the wait logs who holds the lock and for how long;
- a stage holding the GIL in one C call for twice the lease keeps its lease (the lease watcher renews
  it) and a second binder is refused;
- a holder in another PID namespace on this host is never judged dead by its pid.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_checkmate.checkmate import BindException, CheckMateEngine, RetryPolicy, StageStatus, TaskIO
from airflow_checkmate.checkmate.holder import BOOT_ID, HOST, PID_NS, LeaseRecord
from airflow_checkmate.checkmate.names import lock_obj_name
from support.processes import ROOT, child_env, start_task_process
from support.stages import expected_result, hold_gil, make_stages, read_journal, start_counts

KEY = '["airflow", "dag", "task", "run", -1]'


@pytest.fixture(params=["file", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage URL: a folder of the test, or the session's PostgreSQL database (task ids are unique)."""
    if request.param == "file":
        return str(tmp_path / "store")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def task_id() -> str:
    return f"live-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes started by a test; any still running at the end is killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def started(journal: Path, stage: str) -> bool:
    return any(words[:2] == ["start", stage] for words in read_journal(journal))


def engine_for(store: str, task_id: str, journal: Path, key: str, try_number: int, **kw: object) -> CheckMateEngine:  # type: ignore[type-arg]
    engine: CheckMateEngine = CheckMateEngine(  # type: ignore[type-arg]
        TaskIO.from_base_url(store), task_id, make_stages(2, str(journal)), RetryPolicy.RETRY, 5, **kw
    )
    engine.instance_key, engine.try_number = key, try_number
    return engine


def holder(store: str, task_id: str, journal: Path, *extra: str) -> list[str]:
    return [store, task_id, "2", "--journal", str(journal), *extra]


def test_newer_try_takes_over_a_live_older_try_which_stops_at_once(
    store: str, task_id: str, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    journal = tmp_path / "journal.log"
    old = start_task_process(
        *holder(store, task_id, journal, "--sleep", "60", "--instance-key", KEY, "--try-number", "1")
    )
    procs.append(old)
    wait_for(lambda: started(journal, "s1"), what="try 1 to start s1")

    newer = engine_for(store, task_id, journal, KEY, 2)  # default lease 30 s, bind_lock_timeout None
    taken = time.monotonic()
    newer.bind()
    try:
        takeover = [e.message for e in newer.task_state.history if e.event == "lock takeover"]
        assert len(takeover) == 1 and "try 2 took over at once from try 1" in takeover[0], takeover
        assert f"pid {old.pid}" in takeover[0], takeover
        out, _ = old.communicate(timeout=30)
        stopped_after = time.monotonic() - taken
        # try 1 stopped mid-stage (its stage sleeps 60 s), named the new holder, and wrote nothing more
        assert old.returncode == 4 and out.startswith("RUNNING LeaseLostException: the bind lease"), out
        assert f"host {HOST} pid {os.getpid()}" in out, out
        assert stopped_after < 10, f"the old try ran on for {stopped_after:.1f} s after losing its lease"
        assert [w[0] for w in read_journal(journal)] == ["start"], "the old try must not end, roll back or cancel"
        s1 = newer.read_stored_state(newer.stages[0])
        assert s1 is not None and [h.status for h in s1.history] == [StageStatus.RUNNING]
        newer.execute(strict_recovery=True)
        assert newer.status is StageStatus.COMPLETE and newer.task_result == expected_result(2)
    finally:
        newer.unbind()
    assert start_counts(journal) == {"s1": 2, "s2": 1}


OTHER_RUN = '["airflow", "dag", "task", "other-run", -1]'


@pytest.mark.parametrize(
    ("holder_claim", "binder_claims"),
    [
        # a try of this instance holds it: another run's try, the CLI or a script, the same try and an
        # older try all wait
        ((KEY, 3), [(OTHER_RUN, 5), ("", 0), (KEY, 3), (KEY, 2)]),
        (("", 0), [(KEY, 2)]),  # a script holds it: a try does not take it over
    ],
    ids=["try-3-holds", "script-holds"],
)
def test_holders_that_are_not_an_older_try_are_waited_for(
    store: str,
    task_id: str,
    tmp_path: Path,
    procs: list[subprocess.Popen[str]],
    holder_claim: tuple[str, int],
    binder_claims: list[tuple[str, int]],
) -> None:
    journal = tmp_path / "journal.log"
    claim = ["--instance-key", holder_claim[0], "--try-number", str(holder_claim[1])]
    live = start_task_process(*holder(store, task_id, journal, "--sleep", "60", *claim))
    procs.append(live)
    wait_for(lambda: started(journal, "s1"), what="the holder to start s1")
    for binder_claim in binder_claims:
        with pytest.raises(BindException, match=rf"held by a live process: host \S+ pid {live.pid}\b"):
            engine_for(store, task_id, journal, *binder_claim).bind()
    assert live.poll() is None and start_counts(journal) == {"s1": 1}


def test_waiting_for_a_lock_logs_who_holds_it(
    store: str, task_id: str, tmp_path: Path, procs: list[subprocess.Popen[str]], caplog: pytest.LogCaptureFixture
) -> None:
    journal = tmp_path / "journal.log"
    live = start_task_process(*holder(store, task_id, journal, "--sleep", "60"))
    procs.append(live)
    wait_for(lambda: started(journal, "s1"), what="the holder to start s1")
    caplog.set_level(logging.INFO, logger="airflow_checkmate.checkmate.lease")
    with pytest.raises(BindException, match="after waiting 6 s"):
        engine_for(store, task_id, journal, KEY, 2, bind_lock_timeout=6).bind()
    waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for task lock")]
    assert waits and all(f"pid {live.pid}" in w and re.search(r"held for \d+ s", w) for w in waits), waits


def gil_chars_for(seconds: float) -> int:
    """How many characters make :func:`hold_gil` take at least ``seconds`` here (each adds about x2)."""
    chars, took = 18, 0.0
    while took < 0.2:
        chars += 1
        begin = time.perf_counter()
        hold_gil(chars)
        took = time.perf_counter() - begin
    while took < seconds:
        chars, took = chars + 1, took * 1.9
    return chars


def test_a_stage_holding_the_gil_past_its_lease_keeps_it(
    store: str, task_id: str, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    lease, warm_up = 3.0, 2.0  # the stage sleeps first: the watcher process is importing meanwhile
    journal = tmp_path / "journal.log"
    gil = f'{{"s1": {gil_chars_for(3.5 * lease)}}}'
    options = ["--lease", str(lease), "--gil-chars", gil, "--sleep", str(warm_up)]
    live = start_task_process(*holder(store, task_id, journal, *options))
    procs.append(live)
    wait_for(lambda: started(journal, "s1"), what="the holder to start s1")
    time.sleep(warm_up + 2 * lease)  # now 2x the lease into the C call
    io = TaskIO.from_base_url(store, lease_seconds=lease)
    record = LeaseRecord.model_validate_json(io.lease_read(lock_obj_name(task_id)) or "")
    age = time.time() - record.heartbeat_at
    with pytest.raises(BindException, match=rf"held by a live process: host \S+ pid {live.pid}\b"):
        engine_for(store, task_id, journal, "", 0).bind()
    still_in_c_call = start_counts(journal) == {"s1": 1} and not any(w[0] == "end" for w in read_journal(journal))
    assert still_in_c_call, "the stage left its C call too early: this test proved nothing (raise the chars)"
    assert age < lease, f"the heartbeat is {age:.1f} s old while the stage holds the GIL (lease {lease} s)"
    out, err = live.communicate(timeout=120)
    assert live.returncode == 0, out + err
    assert start_counts(journal) == {"s1": 1, "s2": 1}


def _unshare_prefix() -> list[str] | None:
    """``unshare`` arguments that run a command in a new PID namespace here, or None where that is not allowed."""
    if not shutil.which("unshare"):
        return None
    for prefix in (
        ["unshare", "--pid", "--fork", "--mount-proc"],
        ["unshare", "-r", "--pid", "--fork", "--mount-proc"],
    ):
        probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
        if probe.returncode == 0:
            return prefix
    return None


def test_a_holder_in_another_pid_namespace_is_not_judged_by_its_pid(
    store: str, task_id: str, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    prefix = _unshare_prefix()
    if prefix is None:
        pytest.skip("this machine does not allow a new PID namespace (unshare)")
    journal = tmp_path / "journal.log"
    args = holder(store, task_id, journal, "--sleep", "60")
    live = subprocess.Popen(
        [*prefix, sys.executable, "-m", "support.run_task", *args],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(live)
    wait_for(lambda: started(journal, "s1"), what="the namespaced holder to start s1")
    record = LeaseRecord.model_validate_json(TaskIO.from_base_url(store).lease_read(lock_obj_name(task_id)) or "")
    assert record.host == HOST and record.pid_ns != PID_NS and record.pid == 1, record  # pid 1 here is init
    with pytest.raises(BindException, match=r"held by a live process: host \S+ pid 1\b"):
        engine_for(store, task_id, journal, KEY, 2).bind()
    assert start_counts(journal) == {"s1": 1}
    live.send_signal(signal.SIGKILL)


def test_only_a_holder_on_this_machine_and_pid_namespace_is_judged_by_pid() -> None:
    """A dead pid means a dead holder only with the same host, boot id and PID namespace."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    now = time.time()
    base = {"token": "t", "host": HOST, "pid": gone.pid, "acquired_at": now, "heartbeat_at": now, "lease_seconds": 30}
    assert LeaseRecord(**base, boot_id=BOOT_ID, pid_ns=PID_NS).holder_state() == "dead"
    assert LeaseRecord(**base, boot_id="another-boot", pid_ns=PID_NS).holder_state() == "live"
    assert LeaseRecord(**base, boot_id=BOOT_ID, pid_ns="pid:[1]").holder_state() == "live"
    assert LeaseRecord(**{**base, "host": "elsewhere"}, boot_id=BOOT_ID, pid_ns=PID_NS).holder_state() == "live"
    assert LeaseRecord(**{**base, "heartbeat_at": now - 31}).holder_state() == "expired"
