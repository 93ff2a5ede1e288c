"""The processes of the lock race (``reliability.race``): ``python -m reliability.race_worker MODE ...``.

- ``race BASE NAME ROUNDS JOURNAL GO SEED [CONN_ID]``: wait for the file GO, then bind task ``t`` ROUNDS
  times; while bound, append ``enter`` and ``exit`` lines (name, pid, round, monotonic time, seconds waited
  for the lock) to the shared JOURNAL and own an O_EXCL marker file next to it.
- ``hold BASE JOURNAL [CONN_ID]``: bind task ``t``, append ``held PID``, then sleep until killed.
- ``wait BASE JOURNAL [CONN_ID]``: append ``waiting PID``, bind task ``t`` waiting up to 120 s, append
  ``bound PID MONOTONIC``, unbind.

Journal lines are single O_APPEND writes, so lines of several processes never mix, and their order in the
file is the order in which they were written. CLOCK_MONOTONIC is one clock for all processes of a host.
"""

from __future__ import annotations

import os
import random
import sys
import time
from typing import Any

from airflow_checkmate.checkmate import CheckMateEngine, RetryPolicy, TaskIO
from support.stages import journal, make_stages


def io_for(base: str, conn_id: str | None = None, **options: Any) -> TaskIO:
    return TaskIO.from_base_url(base, **options, **({"conn_id": conn_id} if conn_id else {}))


def engine_for(io: TaskIO, timeout: float | None) -> CheckMateEngine:  # type: ignore[type-arg]
    """An engine for task ``t`` of one journal stage."""
    return CheckMateEngine(io, "t", make_stages(1), RetryPolicy.RETRY, max_attempts=5, bind_lock_timeout=timeout)


def race(base: str, name: str, rounds: int, log: str, go: str, seed: int, conn_id: str | None = None) -> int:
    io = io_for(base, conn_id, durable=False)  # no fsync: the lock, not crash safety, is raced here
    rng = random.Random(seed)
    marker = os.path.join(os.path.dirname(log), "marker")
    journal(log, f"ready {name} {os.getpid()}")
    while not os.path.exists(go):
        time.sleep(0.005)
    for round_ in range(rounds):
        engine = engine_for(io, timeout=120)
        began = time.monotonic()
        engine.bind()
        try:
            waited = time.monotonic() - began
            journal(log, f"enter {name} {os.getpid()} {round_} {time.monotonic():.6f} {waited:.4f}")
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                journal(log, f"marker-taken {name} {os.getpid()} {round_}")
                fd = -1
            time.sleep(rng.uniform(0.001, 0.008))
            if fd >= 0:
                os.close(fd)
                os.unlink(marker)
            journal(log, f"exit {name} {os.getpid()} {round_} {time.monotonic():.6f}")
        finally:
            engine.unbind()
        time.sleep(rng.uniform(0.0, 0.02))
    return 0


def hold(base: str, log: str, conn_id: str | None = None) -> int:
    engine = engine_for(io_for(base, conn_id), timeout=120)
    engine.bind()
    journal(log, f"held {os.getpid()}")
    time.sleep(3600)
    return 1


def wait(base: str, log: str, conn_id: str | None = None) -> int:
    engine = engine_for(io_for(base, conn_id), timeout=120)
    journal(log, f"waiting {os.getpid()}")
    engine.bind()
    journal(log, f"bound {os.getpid()} {time.monotonic():.6f}")
    engine.unbind()
    return 0


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "race":
        base, name, rounds, log, go, seed, *conn = rest
        sys.exit(race(base, name, int(rounds), log, go, int(seed), *conn))
    if mode in ("hold", "wait"):
        sys.exit({"hold": hold, "wait": wait}[mode](*rest))
    sys.exit(f"unknown mode {mode!r}")
