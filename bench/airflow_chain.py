"""What users would do without this package: N chained Airflow tasks against one CheckMateOperator of N stages.

``python -m bench.airflow_chain`` starts a real Airflow stack on loopback (api-server, scheduler, dag-processor;
LocalExecutor on SQLite, as tests/airflow/test_live_stack.py runs it: support.airflow_stack) with
``bench/dags_chain/`` as its dags folder, and runs the same job of N small stages (a few ms of hashing each) as

- chained tasks: ``s1 >> s2 >> ... >> sN``, one TaskFlow task per stage, the digest passed on through XCom;
- CheckMate: one CheckMateOperator whose N stages checkpoint to the embedded default store.

Each round triggers, through the REST API, a clean run of each shape, then a run whose middle stage fails on its
first execution (every task has retries=1, retry_delay=1 s, in both shapes), in the order chained, CheckMate,
chained, CheckMate. It reports medians of the wall time from the trigger to the run's success (polled every
0.1 s), the Airflow task tries, and the stage executions counted in the stage code's journal, among them the
re-executions of stages that had already completed (0 for both shapes: the chained retry re-runs only the failed
task, the CheckMate retry resumes at the failed stage). Ratios are chained / CheckMate; the cost of an extra
Airflow task is the clean runs' difference over N - 1 (scheduling, a task process, an XCom round trip).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from bench.dags_chain.chain_stages import JOURNAL_DIR_ENV, STAGES_ENV, failing_stage
from support.airflow_stack import LiveStack, running_stack

DAGS = Path(__file__).resolve().parent / "dags_chain"
SHAPES = {"chained": "bench_chain_tasks", "checkmate": "bench_chain_checkmate"}
LABELS = {"chained": "chained tasks", "checkmate": "CheckMate"}
SCENARIOS = {"success": "", "fail_once": "_fail_once"}
POLL_SECONDS = 0.1


@dataclass
class Run:
    """One DAG run's figures."""

    seconds: float
    tries: int  # Airflow task tries, summed over the run's task instances
    executions: int  # stage executions (journal ``start`` lines)
    redone: int  # executions of a stage that had already completed in this run
    final_digest: str


def measure(stack: LiveStack, dag_id: str, run_id: str, stages: int, timeout: float) -> Run:
    """Trigger ``dag_id`` and wait for its success; count what ran from the API and the journal."""
    begin = time.perf_counter()
    stack.trigger(dag_id, run_id)
    deadline = time.monotonic() + timeout
    while (state := stack.run_state(dag_id, run_id)) != "success":
        if state == "failed" or time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} of {dag_id} is {state}\n{stack.diagnostics(dag_id, run_id)}")
        stack.check_alive()
        time.sleep(POLL_SECONDS)
    seconds = time.perf_counter() - begin

    tis = stack.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
    entries = [words for words in stack.journal(dag_id) if words[2:3] == [run_id]]
    completed: set[str] = set()
    executions = redone = 0
    for words in entries:
        if words[0] == "start":
            executions += 1
            redone += words[1] in completed
        elif words[0] == "end":
            completed.add(words[1])
    ends = [words for words in entries if words[0] == "end"]
    if len(completed) != stages or len(ends) != stages:
        raise RuntimeError(f"run {run_id} of {dag_id} did not complete each stage once: {entries}")
    return Run(seconds, sum(int(ti["try_number"]) for ti in tis), executions, redone, ends[-1][4])


def median_row(runs: list[Run]) -> tuple[float, float, float, float]:
    return (
        statistics.median(r.seconds for r in runs),
        statistics.median(r.tries for r in runs),
        statistics.median(r.executions for r in runs),
        statistics.median(r.redone for r in runs),
    )


def report(results: dict[tuple[str, str], list[Run]], stages: int, runs: int, load: str, started: float) -> None:
    """Print the table of medians and the ratios."""
    import airflow

    print(
        f"\nAirflow {airflow.__version__} (task-sdk {version('apache-airflow-task-sdk')}), LocalExecutor on SQLite, "
        f"parallelism 2; N={stages} stages, failing stage s{failing_stage(stages)}; "
        f"medians of {runs} run(s); stack start {started:.0f} s; load average {load}"
    )
    print(f"{'scenario':<10} {'shape':<14} {'wall s':>8} {'task tries':>10} {'stage runs':>10} {'redone':>6}")
    medians: dict[tuple[str, str], tuple[float, float, float, float]] = {}
    for scenario in SCENARIOS:
        for shape in SHAPES:
            medians[scenario, shape] = row = median_row(results[scenario, shape])
            seconds, tries, executions, redone = row
            print(f"{scenario:<10} {LABELS[shape]:<14} {seconds:>8.2f} {tries:>10g} {executions:>10g} {redone:>6g}")
    print()
    for scenario in SCENARIOS:
        ratio = medians[scenario, "chained"][0] / medians[scenario, "checkmate"][0]
        print(f"ratio {scenario}: chained/CheckMate wall time = {ratio:.2f}x")
    per_task = (medians["success", "chained"][0] - medians["success", "checkmate"][0]) / (stages - 1)
    print(f"Airflow cost per extra task (clean runs): {per_task:+.2f} s")
    for shape in SHAPES:
        extra = medians["fail_once", shape][0] - medians["success", shape][0]
        print(f"recovery cost of one failure, {LABELS[shape]}: {extra:+.2f} s over its clean run")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.airflow_chain", description=__doc__.split("\n")[0])
    parser.add_argument("--stages", type=int, default=10, help="N, stages per job (default 10)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each shape and scenario (default 3)")
    parser.add_argument("--timeout", type=float, default=0, help="seconds per DAG run (default 60 + 15 per stage)")
    args = parser.parse_args(argv)
    if args.stages < 2 or args.runs < 1:
        parser.error("--stages must be at least 2 and --runs at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The stack's processes live in sessions of their own: on SIGTERM, unwind so running_stack kills them.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    timeout = args.timeout or 60 + 15 * args.stages
    results: dict[tuple[str, str], list[Run]] = {(s, shape): [] for s in SCENARIOS for shape in SHAPES}
    load_before = os.getloadavg()
    try:
        started = run_all(args.stages, args.runs, timeout, results)
    except RuntimeError as exc:  # a run failed or timed out: its diagnostics, not a traceback
        print(exc, file=sys.stderr)
        return 1
    digests = {run.final_digest for shape_runs in results.values() for run in shape_runs}
    if len(digests) != 1:
        print(f"the shapes computed different results: {digests}", file=sys.stderr)
        return 1
    load = "{:.1f} {:.1f} {:.1f} before, ".format(*load_before) + "{:.1f} {:.1f} {:.1f} after".format(*os.getloadavg())
    report(results, args.stages, args.runs, load, started)
    return 0


def run_all(stages: int, runs: int, timeout: float, results: dict[tuple[str, str], list[Run]]) -> float:
    """Start the stack, run every round into ``results``, stop the stack; returns the stack's start time in s."""
    dag_ids = [prefix + suffix for prefix in SHAPES.values() for suffix in SCENARIOS.values()]
    with tempfile.TemporaryDirectory(prefix="bench-airflow-chain-") as tmp:
        home, journal_dir = Path(tmp) / "home", Path(tmp) / "journal"
        home.mkdir()
        journal_dir.mkdir()
        print(f"starting the Airflow stack (N={stages}) ...", flush=True)
        begin = time.perf_counter()
        with running_stack(
            home, DAGS, journal_dir, JOURNAL_DIR_ENV, dag_ids, extra_env={STAGES_ENV: str(stages)}
        ) as stack:
            started = time.perf_counter() - begin
            for round_number in range(1, runs + 1):
                for scenario, suffix in SCENARIOS.items():
                    for shape, prefix in SHAPES.items():
                        dag_id = prefix + suffix
                        run = measure(stack, dag_id, f"bench_{round_number}", stages, timeout)
                        results[scenario, shape].append(run)
                        print(
                            f"round {round_number}/{runs} {scenario:<10} {LABELS[shape]:<14} "
                            f"{run.seconds:7.2f} s, {run.tries} tries, {run.executions} stage runs, "
                            f"{run.redone} redone",
                            flush=True,
                        )
    return started


if __name__ == "__main__":
    sys.exit(main())
