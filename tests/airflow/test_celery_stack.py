"""End-to-end on a real CeleryExecutor deployment: a retry on another worker resumes where the failed try stopped.

The stack (support.celery_stack: PostgreSQL metadata and state, Redis broker, two Celery workers with their
own hostnames, homes and queues) starts once for the module and serves the three scenarios; tests/airflow/
dags_celery holds their DAGs, all on CheckMate's defaults. Each scenario starts try 1 on worker a, then moves the
work queue to worker b with Celery's control API, so the retry runs on the other host. Stage runs are counted from
the journal the stage code writes (host, pid, time of each run), never from the engine.

The scenario with the whole worker killed runs last: it leaves worker a dead (a later check would restart it).
The two kill scenarios' timelines then feed bench.celery_recovery's report: its smoke run, without a second stack.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_checkmate.checkmate import StageStatus
from bench.celery_recovery import SCENARIOS, report
from support.airflow_stack import TASK
from support.celery_stack import CeleryStack, require_services, running_celery_stack
from support.celery_stages import STAGE_FAILS, TASK_KILLED, WORKER_KILLED
from support.live_stages import JOURNAL_DIR_ENV
from support.recovery import SLOW_STAGE, Timeline, host_lines, kill_and_recover, start_on_a
from support.stages import expected_result, start_counts

pytestmark = [pytest.mark.slow, pytest.mark.live_airflow, pytest.mark.timeout(900)]

DAGS_CELERY = Path(__file__).resolve().parent / "dags_celery"
ONCE_EACH_BUT_S2_TWICE = {"s1": 1, "s2": 2, "s3": 1}


@pytest.fixture(scope="module")
def celery_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryStack]:
    home = tmp_path_factory.mktemp("airflow_celery_home")
    journal_dir = tmp_path_factory.mktemp("airflow_celery_journal")
    dags = (STAGE_FAILS, WORKER_KILLED, TASK_KILLED)
    with running_celery_stack(home, DAGS_CELERY, journal_dir, JOURNAL_DIR_ENV, dags, require_services()) as stack:
        yield stack


@pytest.fixture(scope="module")
def measured() -> dict[str, list[tuple[str, Timeline]]]:
    """The outcome and timeline of each kill scenario, as the tests saw them (for the report check)."""
    return {scenario: [] for scenario in SCENARIOS}


def assert_resumed_on_b(stack: CeleryStack, dag_id: str, run_id: str) -> None:
    """The run succeeded; s1 ran once on a, s2 once on a and once on b, s3 once on b; the state is complete."""
    where = stack.diagnostics(dag_id, run_id)
    assert stack.run_state(dag_id, run_id) == "success", where
    journal_file = stack.journal_dir / f"{dag_id}.journal"
    assert start_counts(journal_file) == ONCE_EACH_BUT_S2_TWICE, f"stage runs: {stack.journal(dag_id)}"
    hosts = {stage: [host for host, _, _ in host_lines(stack, dag_id, stage)] for stage in ("s1", "s2", "s3")}
    a, b = stack.workers["a"].hostname, stack.workers["b"].hostname
    if stack.own_hostnames:
        assert hosts == {"s1": [a], "s2": [a, b], "s3": [b]}, hosts
    snap = stack.snapshot(dag_id, run_id)
    assert snap is not None and snap.status is StageStatus.COMPLETE, snap and snap.progress()
    assert snap.result == expected_result(3) and not snap.locked
    assert snap.stages[1].attempts == 2, snap.stages[1].history


def assert_tries_on(stack: CeleryStack, dag_id: str, run_id: str, worker_of_try: dict[int, str]) -> None:
    """Airflow's own record of each try's host agrees (checked where the workers have hostnames of their own)."""
    if not stack.own_hostnames:
        return
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{TASK}/tries"
    tries = {t["try_number"]: t["hostname"] for t in stack.api("GET", path)["task_instances"]}
    expected = {n: stack.workers[w].hostname for n, w in worker_of_try.items()}
    assert {n: tries.get(n) for n in expected} == expected, tries


def assert_ordered(line: Timeline) -> None:
    """Each recovery step was recorded, in causal order (no durations are checked: see bench/celery_recovery.py)."""
    steps = [line.try1_ended, line.retry_queued, line.retry_running, line.takeover, line.stage_resumed]
    assert None not in steps, line
    assert steps == sorted(steps), line  # type: ignore[type-var]


def test_retry_on_the_other_worker_resumes_at_the_failed_stage(celery_stack: CeleryStack) -> None:
    """s2 raises on worker a; the retry, sent to worker b, skips s1 and runs s2 and s3 there."""
    stack, dag, run = celery_stack, STAGE_FAILS, "celery_stage_fails_1"
    start_on_a(stack, dag, run)
    stack.route("b")  # s2 fails 6 s after it started; the retry is queued 5 s after that
    stack.wait_for("the run to end", lambda: stack.run_state(dag, run) in ("success", "failed"), 240, dag, run)
    assert_resumed_on_b(stack, dag, run)
    assert stack.ti(dag, run)["try_number"] == 2
    assert_tries_on(stack, dag, run, {1: "a", 2: "b"})
    assert [w[:2] for w in stack.journal(dag) if w[0] == "fail"] == [["fail", "s2"]]


def test_task_process_sigkilled_retry_on_the_other_worker_succeeds_at_once(
    celery_stack: CeleryStack, measured: dict[str, list[tuple[str, Timeline]]]
) -> None:
    """Only the task process dies (as the OOM killer does it), defaults everywhere: the first retry, on b, resumes.

    Airflow starts try 2 only after try 1 ended, so its bind takes over try 1's lease at once, although the lease
    itself has not expired (its last heartbeat is a few seconds old).
    """
    stack, dag, run = celery_stack, TASK_KILLED, "celery_task_killed_1"
    line = kill_and_recover(stack, dag, run, whole_worker=False)
    measured["task"].append((stack.run_state(dag, run), line))
    assert_resumed_on_b(stack, dag, run)
    assert stack.ti(dag, run)["try_number"] == 2, f"not the first retry: {line}"
    assert_tries_on(stack, dag, run, {1: "a", 2: "b"})
    assert_ordered(line)


def test_whole_worker_sigkilled_the_retry_on_the_other_worker_reruns_only_that_stage(
    celery_stack: CeleryStack, measured: dict[str, list[tuple[str, Timeline]]]
) -> None:
    """Worker a and every process under it SIGKILLed mid-s2: Airflow finds the try by its missing heartbeat, and the
    retry on b re-runs s2 (recovered from RUNNING) and s3, never s1."""
    stack, dag, run = celery_stack, WORKER_KILLED, "celery_worker_killed_1"
    line = kill_and_recover(stack, dag, run, whole_worker=True)
    measured["worker"].append((stack.run_state(dag, run), line))
    assert not stack.worker_alive("a")
    assert_resumed_on_b(stack, dag, run)
    s2 = stack.snapshot(dag, run).stages[1]  # type: ignore[union-attr]
    assert any("recovered after an interruption" in h.message for h in s2.history), s2.history
    assert_tries_on(stack, dag, run, {1: "a", line.retry_try: "b"})
    assert_ordered(line)
    assert host_lines(stack, dag, SLOW_STAGE)[1][1] != host_lines(stack, dag, SLOW_STAGE)[0][1]


def test_recovery_bench_reports_both_shares(
    measured: dict[str, list[tuple[str, Timeline]]], capsys: pytest.CaptureFixture[str]
) -> None:
    """bench.celery_recovery's table, from the two kill scenarios above (its smoke run: no second stack start).

    A figure a run did not record prints as ``-``; the scenarios above judge the runs, this checks the table.
    """
    if not all(measured.values()):
        pytest.skip(f"needs both kill scenarios to have run: {measured}")
    report(measured, runs=1, started=0.0, load="-")
    out = capsys.readouterr().out
    rows = {line[:44].strip(): line[44:].split() for line in out.splitlines() if line[:1].isalpha()}
    labels = [label for _, label in Timeline.ROWS]
    labels += ["Airflow's share (kill -> retry running)", "CheckMate's share (retry running -> stage)"]
    for label in labels:
        assert len(rows[label]) == 2, out
        assert all(cell == "-" or cell.replace(".", "", 1).isdigit() for cell in rows[label]), out
    for scenario, runs in measured.items():
        expected = ", ".join(f"{state} on try {line.retry_try}" for state, line in runs)
        assert f"outcomes, {scenario} killed: {expected}" in out, out
