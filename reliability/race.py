"""Lock race: many processes bind one task over and over; a shared journal proves there was one holder.

Each worker (:mod:`reliability.race_worker`) binds task ``t`` ROUNDS times and, while bound, appends an
``enter`` line, holds 1-8 ms, and appends an ``exit`` line (pid, round, CLOCK_MONOTONIC time). The lines are
O_APPEND writes made while holding the lock, so with one holder at a time the journal strictly alternates
``enter X`` / ``exit X`` with non-decreasing times; two holders would show as ``enter X, enter Y``. An
O_EXCL marker file each holder owns is a second witness. Violations: any overlap, a marker found taken, a
worker that did not get the lock every round, a lease left behind; and a race that raced nothing (fewer
holder switches than workers, or no bind that had to wait).

Then the takeover of a stale lock: a holder is SIGKILLed while a waiter polls for the lock; the time from
the kill until the waiter is bound is compared with the lease (30 s): the dead pid is noticed, nothing
waits for the lease to expire. Violation: a takeover that took half the lease or more.

Full size (``make reliability``): 8 workers x 500 rounds on file storage and on PostgreSQL (a fresh
database), 10 takeovers each; about a minute and two on this 2-core machine (``--pg-rounds`` makes the
PostgreSQL race smaller where its round trips are slower). ``--backends sqlite s3`` races a SQLite file
and a moto S3 server of the campaign's own (``--s3-rounds``, 50 by default: moto answers one request at
a time, so 500 rounds of 8 workers would take an hour). ``tests/checkmate/test_lock.py`` runs 3 workers
on file, SQLite, PostgreSQL and S3.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from reliability.report import Report
from support import pg
from support.stages import read_journal

ROOT = Path(__file__).resolve().parent.parent
LEASE_SECONDS = 30.0  # the default lease, which the takeover workers use


@dataclass
class RaceResult:
    binds: int = 0
    switches: int = 0
    waited: int = 0  # binds that waited more than 30 ms for the lock
    max_wait: float = 0.0
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)


def spawn(*args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "reliability.race_worker", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@contextlib.contextmanager
def reaped(procs: list[subprocess.Popen[bytes]]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Whatever happens, leave no worker running or unreaped."""
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.communicate(timeout=30)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def has_line(log: Path, word: str) -> Callable[[], bool]:
    return lambda: any(w[0] == word for w in read_journal(log))


def check_journal(lines: list[list[str]], workers: int, rounds: int, result: RaceResult) -> None:
    """The journal alternates enter X / exit X with non-decreasing times; everyone held every round."""
    taken = [w for w in lines if w[0] == "marker-taken"]
    result.violations += [f"{w[1]} found the marker of another holder in round {w[3]}" for w in taken]
    events = [w for w in lines if w[0] in ("enter", "exit")]
    last_time = 0.0
    holder: list[str] | None = None
    for event in events:
        kind, name, round_, at = event[0], event[1], event[3], float(event[4])
        if at < last_time:
            result.violations.append(f"time went back at {event} (previous {last_time})")
        last_time = at
        if kind == "enter":
            if holder is not None:
                result.violations.append(f"{name} round {round_} entered while {holder[1]} round {holder[3]} held")
            holder = event
        elif holder is None or holder[1:4] != event[1:4]:
            result.violations.append(f"{name} round {round_} exited without holding (holder: {holder})")
        else:
            holder = None
    enters = [w for w in events if w[0] == "enter"]
    holders = [w[1] for w in enters]
    for i in range(workers):
        if holders.count(f"w{i}") != rounds:
            result.violations.append(f"w{i} held the lock {holders.count(f'w{i}')} times, not {rounds}")
    result.binds = len(enters)
    result.switches = sum(a != b for a, b in itertools.pairwise(holders))
    waits = [float(w[5]) for w in enters]
    result.waited = sum(w > 0.03 for w in waits)
    result.max_wait = max(waits, default=0.0)
    if result.switches < workers:
        result.violations.append(f"only {result.switches} holder switches: the workers did not contend")
    if not result.waited:
        result.violations.append("no bind ever waited for the lock: nothing was raced")


def run_race(base: str, workers: int, rounds: int, tmp: Path, conn_id: str | None = None) -> RaceResult:
    """``workers`` processes x ``rounds`` binds of task ``t`` at ``base``; the journal checked."""
    from reliability.race_worker import io_for

    log, go = tmp / "race.journal", tmp / "go"
    result = RaceResult()
    conn = [conn_id] if conn_id else []
    argv = [("race", base, f"w{i}", str(rounds), str(log), str(go), str(i), *conn) for i in range(workers)]
    with reaped([spawn(*a) for a in argv]) as procs:
        wait_until(lambda: sum(w[0] == "ready" for w in read_journal(log)) == workers, 120, "the workers to start")
        began = time.monotonic()
        go.touch()
        for proc in procs:
            _, err = proc.communicate(timeout=max(600, rounds * workers * 0.2))
            if proc.returncode != 0:
                result.violations.append(f"a worker exited {proc.returncode}: {err.decode()[-800:]}")
        result.seconds = time.monotonic() - began
    check_journal(read_journal(log), workers, rounds, result)
    if io_for(base, conn_id).lease_read("t/task.lock") is not None:
        result.violations.append("the last holder left its lease behind")
    return result


def measure_takeover(base: str, trials: int, tmp: Path, conn_id: str | None = None) -> list[float]:
    """Seconds from SIGKILL of a holder until a waiting process is bound, ``trials`` times."""
    conn = [conn_id] if conn_id else []
    seconds = []
    for trial in range(trials):
        log = tmp / f"takeover-{trial}.journal"
        with reaped([spawn("hold", base, str(log), *conn)]) as (holder,):
            wait_until(has_line(log, "held"), 60, "the holder to bind")
            with reaped([spawn("wait", base, str(log), *conn)]) as (waiter,):
                wait_until(has_line(log, "waiting"), 60, "the waiter to start")
                time.sleep(0.3)  # the waiter is polling the lease by now
                if waiter.poll() is not None:
                    raise RuntimeError(f"the waiter got in while the holder lived: {waiter.communicate()[1][-300:]!r}")
                killed_at = time.monotonic()
                os.kill(holder.pid, signal.SIGKILL)
                holder.wait(10)
                wait_until(has_line(log, "bound"), 2 * LEASE_SECONDS, "the takeover")
                bound = next(float(w[2]) for w in read_journal(log) if w[0] == "bound")
                seconds.append(bound - killed_at)
                waiter.wait(30)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.race", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=500, help="rounds per worker")
    parser.add_argument("--pg-rounds", type=int, default=None, help="rounds per worker on PostgreSQL (--rounds)")
    parser.add_argument("--s3-rounds", type=int, default=50, help="rounds per worker on S3 (moto answers slowly)")
    parser.add_argument("--takeovers", type=int, default=10, help="SIGKILLed holders per backend")
    parser.add_argument(
        "--backends", nargs="+", default=["file", "postgresql"], choices=["file", "sqlite", "postgresql", "s3"]
    )
    parser.add_argument("--postgres-url", default=None, help="server (a fresh database is made on it)")
    args = parser.parse_args(argv)

    report = Report(
        f"lock race: {args.workers} processes binding one task; stale-lock takeover after SIGKILL",
        ["backend", "rounds", "binds", "switches", "waited>30ms", "max wait s", "seconds",
         "overlaps", "takeovers", "kill->bound ms median", "max", "lease s", "max/lease"],
    )  # fmt: skip
    for name in args.backends:
        with tempfile.TemporaryDirectory(prefix=f"checkmate-race-{name}-") as tmp, contextlib.ExitStack() as stack:
            rounds, conn_id = args.rounds, None
            if name == "file":
                base = str(Path(tmp) / "store")
            elif name == "sqlite":
                base = f"sqlite:///{Path(tmp) / 'checkmate.db'}"
            elif name == "s3":
                from reliability.kill_s3 import CONN_ID, s3_campaign_store

                base, conn_id = stack.enter_context(s3_campaign_store()).args[0], CONN_ID
                rounds = args.s3_rounds
            else:
                server = pg.server_url(args.postgres_url)
                if server is None:
                    report.violation(f"skipped postgresql: no server (--postgres-url or {' / '.join(pg.ENV_VARS)})")
                    continue
                base = stack.enter_context(pg.fresh_database(server, "checkmate_race"))
                rounds = args.pg_rounds or args.rounds
            result = run_race(base, args.workers, rounds, Path(tmp), conn_id)
            try:
                takeovers = measure_takeover(base, args.takeovers, Path(tmp), conn_id)
            except (RuntimeError, TimeoutError) as exc:  # a live holder taken over, or a dead one never
                takeovers = []
                result.violations.append(f"takeover: {exc}")
            overlaps = sum("entered while" in v or "marker" in v for v in result.violations)
            worst = max(takeovers, default=0.0)
            report.row(
                name, rounds, result.binds, result.switches, result.waited, result.max_wait, result.seconds,
                overlaps, len(takeovers), statistics.median(takeovers or [0]) * 1000, worst * 1000,
                LEASE_SECONDS, f"{worst / LEASE_SECONDS:.4f}",
            )  # fmt: skip
            for violation in result.violations:
                report.violation(f"{name}: {violation}")
            report.check(worst < LEASE_SECONDS / 2, f"{name}: a takeover took {worst:.1f} s")
            print(f"{name}: done in {result.seconds:.0f} s", flush=True)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
