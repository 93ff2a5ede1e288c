"""How long a CheckMate task takes to resume on another Celery worker after a SIGKILL, and whose share is whose.

``python -m bench.celery_recovery`` starts the real CeleryExecutor stack of tests/airflow/test_celery_stack.py
(support.celery_stack: PostgreSQL metadata and state, Redis broker, two workers as two hosts) with its DAGs
(tests/airflow/dags_celery: CheckMate defaults, retries=2, retry_delay=5 s) and, N times each, runs a task on worker
a, moves the work queue to worker b and SIGKILLs, mid-stage,

- ``task``: only the task process (as the OOM killer does); the worker's supervisor reports the try at once;
- ``worker``: the whole worker a (its main, pool, supervisor and task processes); the scheduler finds the try by
  its missing heartbeat (``task_instance_heartbeat_timeout`` 30 s and its 5 s detection interval on this stack;
  Airflow's default is 300 s).

It prints, per scenario, the median seconds from the SIGKILL to each recorded step (support.recovery reads
them from Airflow's task-instance tries, CheckMate's task record and the stage code's journal): Airflow's share
ends when the retry's task process is running; CheckMate's share is from there to the interrupted stage running
again. PostgreSQL: CHECKMATE_BENCH_POSTGRES_URL or CHECKMATE_TEST_POSTGRES_URL; Redis: CHECKMATE_TEST_REDIS_URL.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from support.celery_stack import running_celery_stack
from support.celery_stages import TASK_KILLED, WORKER_KILLED
from support.live_stages import JOURNAL_DIR_ENV
from support.recovery import Timeline, kill_and_recover

DAGS = Path(__file__).resolve().parent.parent / "tests" / "airflow" / "dags_celery"
SCENARIOS = {"task": TASK_KILLED, "worker": WORKER_KILLED}


def median(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{statistics.median(known):.1f}" if known else "-"


def airflow_share(line: Timeline) -> float | None:
    return line.retry_running


def checkmate_share(line: Timeline) -> float | None:
    if line.stage_resumed is None or line.retry_running is None:
        return None
    return line.stage_resumed - line.retry_running


def report(results: dict[str, list[tuple[str, Timeline]]], runs: int, started: float, load: str) -> None:
    """Print the medians of every step, the two shares, and each run's outcome."""
    print(
        f"\nAirflow {version('apache-airflow')}, CeleryExecutor (celery {version('celery')}, Redis broker), "
        f"PostgreSQL metadata and CheckMate state, 2 workers; {os.cpu_count()} cores; medians of {runs} run(s); "
        f"stack start {started:.0f} s; load average {load}"
    )
    print(f"{'seconds after the SIGKILL':<44} {'task killed':>12} {'worker killed':>14}")
    for field, label in Timeline.ROWS:
        cells = [median([getattr(t, field) for _, t in results[s]]) for s in SCENARIOS]
        print(f"{label:<44} {cells[0]:>12} {cells[1]:>14}")
    for label, share in (
        ("Airflow's share (kill -> retry running)", airflow_share),
        ("CheckMate's share (retry running -> stage)", checkmate_share),
    ):
        cells = [median([share(t) for _, t in results[s]]) for s in SCENARIOS]
        print(f"{label:<44} {cells[0]:>12} {cells[1]:>14}")
    for scenario in SCENARIOS:
        outcomes = ", ".join(f"{state} on try {t.retry_try}" for state, t in results[scenario])
        print(f"outcomes, {scenario} killed: {outcomes}")


def run_all(server: str, runs: int, results: dict[str, list[tuple[str, Timeline]]]) -> float:
    """Start the stack, run every scenario ``runs`` times into ``results``, stop it; the stack's start time in s."""
    with tempfile.TemporaryDirectory(prefix="bench-celery-recovery-") as tmp:
        home, journal_dir = Path(tmp) / "home", Path(tmp) / "journal"
        home.mkdir()
        journal_dir.mkdir()
        print("starting the Celery stack ...", flush=True)
        begin = time.perf_counter()
        with running_celery_stack(home, DAGS, journal_dir, JOURNAL_DIR_ENV, SCENARIOS.values(), server) as stack:
            started = time.perf_counter() - begin
            for round_number in range(1, runs + 1):
                for scenario, dag_id in SCENARIOS.items():
                    run_id = f"bench_{round_number}"
                    line = kill_and_recover(stack, dag_id, run_id, whole_worker=scenario == "worker")
                    state = stack.run_state(dag_id, run_id)
                    results[scenario].append((state, line))
                    print(f"round {round_number}/{runs} {scenario} killed: {state}, {line}", flush=True)
    return started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.celery_recovery", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each scenario (default 3)")
    args = parser.parse_args(argv)
    server = os.environ.get("CHECKMATE_BENCH_POSTGRES_URL") or os.environ.get("CHECKMATE_TEST_POSTGRES_URL")
    if not server or args.runs < 1:
        parser.error("set CHECKMATE_BENCH_POSTGRES_URL or CHECKMATE_TEST_POSTGRES_URL; --runs must be at least 1")
    # The stack's processes live in sessions of their own: on SIGTERM, unwind so running_celery_stack kills them.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    results: dict[str, list[tuple[str, Timeline]]] = {s: [] for s in SCENARIOS}
    load_before = os.getloadavg()
    try:
        started = run_all(server, args.runs, results)
    except AssertionError as exc:  # a step timed out: the stack's diagnostics, not a traceback
        print(exc, file=sys.stderr)
        return 1
    load = "{:.1f} {:.1f} {:.1f} before, ".format(*load_before) + "{:.1f} {:.1f} {:.1f} after".format(*os.getloadavg())
    report(results, args.runs, started, load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
