"""End-to-end: CheckMateOperator under a real Airflow 3 stack (api-server, scheduler, dag-processor) on loopback.

The stack (support.airflow_stack: LocalExecutor on SQLite, its settings and why) runs with
``tests/airflow/dags_live/`` as the dags folder. The tests act only as a user would: the REST API on 127.0.0.1
(trigger, mark failed, clear) and ``kill -9`` on the task's process. They watch the stage code's journal
(support.stages) and the CheckMate objects the embedded default keeps under ``$AIRFLOW_HOME/checkmate``.

Both tests share one stack (module fixture, 40-70 s to start on 2 cores); every process it started, and everything
they forked, is killed in the finalizer, pass or fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from airflow_checkmate.checkmate import StageStatus
from airflow_checkmate.operators.checkmate import derive_checkmate_task_id
from support.airflow_stack import TASK, LiveStack, running_stack
from support.live_stages import JOURNAL_DIR_ENV
from support.stages import expected_result

pytestmark = [pytest.mark.live_airflow, pytest.mark.timeout(420)]

DAGS_LIVE = Path(__file__).resolve().parent / "dags_live"
ON_KILL_DAG = "checkmate_live_on_kill"
SIGKILL_DAG = "checkmate_live_sigkill"
CANCEL_RUNNING_DAG = "checkmate_live_cancel_running"
CANCEL_RETRY_DAG = "checkmate_live_cancel_retry"


def lines(journal: list[list[str]], kind: str, stage: str) -> list[list[str]]:
    return [words for words in journal if words[:2] == [kind, stage]]


def pid_of(journal: list[list[str]], stage: str) -> int:
    return int(lines(journal, "pid", stage)[-1][2])


def log_time(log: Path, needle: str) -> float | None:
    """The timestamp of the first line of a task log (JSON lines) that contains ``needle``."""
    for raw in log.read_text(errors="replace").splitlines():
        if needle in raw:
            try:
                stamp = json.loads(raw).get("timestamp")
            except ValueError:
                return None
            return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None
    return None


def running_stage_pid(stack: LiveStack, dag_id: str, run_id: str, stage: str) -> int:
    """The pid of the task process running ``stage``, checked: a process of the stack, stage RUNNING, lock held."""
    task_pid = pid_of(stack.journal(dag_id), stage)
    snap = stack.snapshot(dag_id, run_id)
    where = f"journal {stack.journal(dag_id)}, snapshot {snap and snap.progress()}, locked {snap and snap.locked}"
    assert stack.is_descendant(task_pid), f"pid {task_pid} is not a process of the stack ({where})"
    assert snap is not None and snap.locked, f"the running try must hold the task lock ({where})"
    statuses = {s.stage_name: s.status for s in snap.stages}
    assert statuses[stage] is StageStatus.RUNNING, where
    return task_pid


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    home = tmp_path_factory.mktemp("airflow_live_home")
    journal_dir = tmp_path_factory.mktemp("airflow_live_journal")
    dags = (ON_KILL_DAG, SIGKILL_DAG, CANCEL_RUNNING_DAG, CANCEL_RETRY_DAG)
    with running_stack(home, DAGS_LIVE, journal_dir, JOURNAL_DIR_ENV, dags) as stack:
        yield stack


def test_mark_failed_interrupts_stage_and_clear_resumes(live_stack: LiveStack) -> None:
    """Marking the running task failed interrupts its stage through on_kill; clearing it resumes at that stage."""
    stack, dag, run = live_stack, ON_KILL_DAG, "live_on_kill_1"
    stack.trigger(dag, run)
    stack.wait_for("stage s2 to start", lambda: lines(stack.journal(dag), "start", "s2"), 120, dag, run)
    task_pid = running_stage_pid(stack, dag, run, "s2")

    patched_at = time.time()
    ti = stack.api("PATCH", f"/dags/{dag}/dagRuns/{run}/taskInstances/{TASK}", {"new_state": "failed"})
    assert ti["task_instances"][0]["state"] == "failed"

    def interrupted() -> Any:
        snap = stack.snapshot(dag, run)
        s2 = snap.stages[1] if snap else None
        return s2 and next((h for h in s2.history if "StageInterrupted" in h.message), None)

    entry = stack.wait_for("s2 to record StageInterrupted", interrupted, 30, dag, run)
    stack.wait_for("the task process to exit", lambda: not psutil.pid_exists(task_pid), 30, dag, run)

    journal = stack.journal(dag)
    assert not lines(journal, "end", "s2"), f"s2 ran to its end although it was killed: {journal}"
    assert not lines(journal, "start", "s3"), journal
    interrupted_at = (entry.end_ts or entry.begin_ts).timestamp()
    # SIGTERM follows the PATCH at the next supervisor heartbeat (1 s here); SIGKILL would follow 5 s later.
    assert interrupted_at - patched_at < 10, f"s2 interrupted only {interrupted_at - patched_at:.1f} s after the PATCH"
    task_log = stack.task_log(dag, run, 1)
    sigterm_at = log_time(task_log, "shouldn't be running anymore")
    assert sigterm_at is not None, f"no SIGTERM record in {task_log}\n{stack.diagnostics(dag, run)}"
    assert 0 <= interrupted_at - sigterm_at < 3, f"s2 interrupted {interrupted_at - sigterm_at:.2f} s after SIGTERM"
    # The supervisor logs how the process ended: by itself after SIGTERM, not by the SIGKILL escalation.
    exited = stack.wait_for(
        "the supervisor to log the task process's exit",
        lambda: stack.component_log_line("scheduler", "Process exited", f"pid={task_pid} "),
        15,
        dag,
        run,
    )
    assert "signal_sent=SIGTERM" in exited and "exit_code=-9" not in exited, exited
    assert not stack.component_log_line("scheduler", "did not terminate in time", f"pid={task_pid} "), exited

    snap = stack.snapshot(dag, run)
    assert snap is not None
    assert snap.stages[1].status is StageStatus.RETRY, snap.progress()
    assert not snap.locked and not (stack.task_dir(dag, run) / "task.lock").exists(), "the lock was not released"
    time.sleep(2)  # give a wrongly reported success time to land
    assert stack.ti(dag, run)["state"] == "failed"
    assert stack.api("GET", f"/dags/{dag}/dagRuns/{run}/taskInstances/{TASK}/tries/1")["state"] == "failed"

    cleared = stack.api(
        "POST",
        f"/dags/{dag}/clearTaskInstances",
        {"dry_run": False, "dag_run_id": run, "task_ids": [TASK], "only_failed": True, "reset_dag_runs": True},
    )
    assert [t["task_id"] for t in cleared["task_instances"]] == [TASK]
    stack.wait_for("the cleared run to succeed", lambda: stack.run_state(dag, run) == "success", 120, dag, run)

    journal = stack.journal(dag)
    assert len(lines(journal, "start", "s1")) == 1, f"completed stage s1 ran again: {journal}"
    assert [w[2] for w in lines(journal, "start", "s2")] == ["1", "2"], journal
    assert len(lines(journal, "end", "s2")) == 1 and len(lines(journal, "end", "s3")) == 1, journal
    snap = stack.snapshot(dag, run)
    assert snap is not None and snap.status is StageStatus.COMPLETE, snap and snap.progress()
    assert snap.result == expected_result(3)
    assert not snap.locked
    ti = stack.ti(dag, run)
    assert ti["state"] == "success" and ti["try_number"] == 2, ti
    s2 = snap.stages[1]
    assert s2.attempts == 2 and s2.status is StageStatus.COMPLETE, s2.history

    # The extra link leads to the provider plugin's page on the api-server, which shows the stages.
    links = stack.api("GET", f"/dags/{dag}/dagRuns/{run}/taskInstances/{TASK}/links")
    url = links["extra_links"]["CheckMate state"]
    assert url.startswith("/checkmate/tasks/" + derive_checkmate_task_id(dag, TASK, run)), links
    page = stack.http.get(url)
    assert page.status_code == 200 and 'id="checkmate"' in page.text, page.text[:500]
    view = stack.http.get(url.replace("/checkmate/tasks/", "/checkmate/api/tasks/")).json()
    assert view["progress"] == {"done": 3, "total": 3}, view
    assert any("StageInterrupted" in h["message"] for h in view["stages"][1]["history"]), view["stages"][1]
    other = stack.http.get(url.replace(f"dag_id={dag}", "dag_id=live_sigkill"))
    assert other.status_code == 404, "the page must not show a task to readers of another DAG"


def test_sigkilled_try_resumes_at_the_stage_left_running(live_stack: LiveStack) -> None:
    """A task process killed with SIGKILL mid-stage: the next try re-runs that stage only, and the run succeeds."""
    stack, dag, run = live_stack, SIGKILL_DAG, "live_sigkill_1"
    stack.trigger(dag, run)
    stack.wait_for("stage s2 to start", lambda: lines(stack.journal(dag), "start", "s2"), 120, dag, run)
    task_pid = running_stage_pid(stack, dag, run, "s2")

    os.kill(task_pid, signal.SIGKILL)
    stack.wait_for("the retried run to succeed", lambda: stack.run_state(dag, run) == "success", 120, dag, run)

    journal = stack.journal(dag)
    assert len(lines(journal, "start", "s1")) == 1, f"completed stage s1 ran again: {journal}"
    assert [w[2] for w in lines(journal, "start", "s2")] == ["1", "2"], journal
    assert len(lines(journal, "end", "s2")) == 1 and len(lines(journal, "end", "s3")) == 1, journal
    assert pid_of(journal, "s2") != task_pid, journal
    snap = stack.snapshot(dag, run)
    assert snap is not None and snap.status is StageStatus.COMPLETE, snap and snap.progress()
    s2 = snap.stages[1]
    assert s2.attempts == 2
    assert any("recovered after an interruption" in h.message for h in s2.history), s2.history
    assert snap.result == expected_result(3)
    assert not snap.locked and not (stack.task_dir(dag, run) / "task.lock").exists()
    ti = stack.ti(dag, run)
    assert ti["state"] == "success" and ti["try_number"] == 2, ti
    first = stack.api("GET", f"/dags/{dag}/dagRuns/{run}/taskInstances/{TASK}/tries/1")
    assert first["state"] in ("up_for_retry", "failed"), first


def checkmate_cli(stack: LiveStack, *args: str) -> str:
    """Run the ``checkmate`` command as a user on the stack's machine would (same AIRFLOW_HOME), return its output."""
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("checkmate")), "--allow-factory", "support.live_stages.*", *args],
        env=stack.env.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"checkmate {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_cancel_while_a_stage_runs_ends_it_canceled_even_when_it_returns(live_stack: LiveStack) -> None:
    """`checkmate cancel` while s2 runs: s2 sees cancel_requested and returns early; it ends CANCELED (its partial
    result discarded, never COMPLETE), s3 never runs, and the Airflow task fails without using its retries."""
    stack, dag, run = live_stack, CANCEL_RUNNING_DAG, "live_cancel_running_1"
    stack.trigger(dag, run)
    stack.wait_for("stage s2 to start", lambda: lines(stack.journal(dag), "start", "s2"), 120, dag, run)
    running_stage_pid(stack, dag, run, "s2")

    out = checkmate_cli(stack, "cancel", derive_checkmate_task_id(dag, TASK, run), "--no-dry-run", "--reason", "ops")
    assert "cancel requested" in out, out
    stack.wait_for("the run to fail", lambda: stack.run_state(dag, run) == "failed", 120, dag, run)

    journal = stack.journal(dag)
    assert lines(journal, "returned", "s2") == [["returned", "s2", "early"]], journal
    assert not lines(journal, "start", "s3"), f"s3 ran after the cancel: {journal}"
    snap = stack.snapshot(dag, run)
    assert snap is not None, stack.diagnostics(dag, run)
    assert [s.status for s in snap.stages] == [StageStatus.COMPLETE, StageStatus.CANCELED, StageStatus.CANCELED]
    assert snap.stages[1].result is None, "the partial result of the canceled stage was kept"
    assert "ops" in snap.stages[1].history[-1].message, snap.stages[1].history
    ti = stack.ti(dag, run)
    assert ti["state"] == "failed" and ti["try_number"] == 1, ti  # retries=2 left unused: a cancel is final


def test_cancel_during_the_retry_wait_is_not_undone_by_the_retry_but_a_clear_resumes(live_stack: LiveStack) -> None:
    """s2 fails, the try waits 40 s for its retry; `checkmate cancel` then cancels the task (rebuilt by its factory).
    The automatic retry fails at once saying who canceled and how to resume; a clear (REST API) resets and resumes."""
    stack, dag, run = live_stack, CANCEL_RETRY_DAG, "live_cancel_retry_1"
    checkmate_id = derive_checkmate_task_id(dag, TASK, run)
    stack.trigger(dag, run)
    stack.wait_for("try 1 to fail into its retry", lambda: stack.ti(dag, run)["state"] == "up_for_retry", 120, dag, run)

    out = checkmate_cli(stack, "cancel", checkmate_id, "--no-dry-run", "--reason", "stopped-by-ops")
    assert "canceled at stage 's2'" in out, out
    stack.wait_for("the automatic retry to fail the run", lambda: stack.run_state(dag, run) == "failed", 150, dag, run)

    ti = stack.ti(dag, run)
    assert ti["state"] == "failed" and ti["try_number"] == 2, ti  # a third try was allowed: the cancel stopped it
    log = stack.task_log(dag, run, 2).read_text(errors="replace")
    assert "An automatic retry (try 2) does not undo that" in log, log[-3000:]
    assert "stopped-by-ops (`checkmate cancel` by " in log and "clear this Airflow task" in log, log[-3000:]
    journal = stack.journal(dag)
    assert [w[1] for w in journal if w[0] == "start"] == ["s1", "s2"], journal
    assert lines(journal, "cancel", "s2"), f"cancel() cleanup did not run: {journal}"
    snap = stack.snapshot(dag, run)
    assert snap is not None and snap.status is StageStatus.CANCELED, snap and snap.progress()

    stack.api(
        "POST",
        f"/dags/{dag}/clearTaskInstances",
        {"dry_run": False, "dag_run_id": run, "task_ids": [TASK], "only_failed": True, "reset_dag_runs": True},
    )
    stack.wait_for("the cleared run to succeed", lambda: stack.run_state(dag, run) == "success", 150, dag, run)
    journal = stack.journal(dag)
    assert [w[1] for w in journal if w[0] == "start"] == ["s1", "s2", "s2", "s3"], journal
    snap = stack.snapshot(dag, run)
    assert snap is not None and snap.status is StageStatus.COMPLETE and snap.result == expected_result(3)
    assert stack.ti(dag, run)["try_number"] == 3
