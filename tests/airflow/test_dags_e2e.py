"""End-to-end: CheckMateOperator, CheckMateSensor and cancel_checkmate_task under real ``airflow dags test`` runs.

Two test DAGs (tests/airflow/dags_e2e/) are each run once, in a subprocess, and every test reads what
its run left behind:

- the journals written by the stage code itself (support.stages.JournalStage), one per Airflow
  task, under ``$CHECKMATE_E2E_DIR``: stage executions are counted by the test, never by the engine;
- the XComs, written to a file by a downstream task that pulls them;
- the stored CheckMate objects under ``$AIRFLOW_HOME/checkmate/state`` (the embedded default);
- the run's output, split per Airflow try by the ``[DAG TEST] starting/end task`` lines;
- the task instance states in the metadata DB (``airflow tasks states-for-dag-run``).

``e2e_resume_sensors`` succeeds (resume on retry, sensors in all modes); ``e2e_failures`` fails
(engine ERROR, sensors on an ERROR task, failure callbacks) and then has one task cleared and run
again in the same DAG run.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.airflow_env import AirflowEnv
from support.dags_test import Run, dags_test
from support.stages import expected_result, read_journal

DAGS = Path(__file__).resolve().parent / "dags_e2e"
LOGICAL_DATE = "2026-02-01T00:00:00+00:00"

pytestmark = pytest.mark.slow


def stop_background_tasks(out: Path) -> None:
    """Kill any CheckMate task process a DAG started (by the pid it recorded) that is still running."""
    for pid_file in out.glob("*.pid"):
        pid = int(pid_file.read_text())
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"support.run_task" in cmdline:
                os.kill(pid, signal.SIGKILL)


TRIGGER_PROGRESS = re.compile(r"(\d+)/\d+ stages complete")


def trigger_lines(log: str) -> list[str]:
    """The lines the CheckMateTrigger logged (its logger name is in each line)."""
    return [line for line in log.splitlines() if "CheckMateTrigger" in line]


def history(stage: dict[str, Any]) -> list[str]:
    return [entry["status"] for entry in stage["history"]]


@pytest.fixture(scope="module")
def e2e_env(airflow_env_factory: Callable[[Path], AirflowEnv]) -> AirflowEnv:
    return airflow_env_factory(DAGS)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("e2e_out")
    yield path
    stop_background_tasks(path)


@pytest.fixture(scope="module")
def sensors_run(e2e_env: AirflowEnv, out: Path) -> Run:
    return dags_test(e2e_env, out, "e2e_resume_sensors")


@pytest.fixture(scope="module")
def failures_run(e2e_env: AirflowEnv, out: Path) -> Run:
    return dags_test(e2e_env, out, "e2e_failures", LOGICAL_DATE)


@pytest.fixture(scope="module")
def failure_states(failures_run: Run) -> dict[str, str]:
    """The task instance states of the failed run, as the metadata DB has them right after it."""
    proc = failures_run.env.run(
        "tasks", "states-for-dag-run", "e2e_failures", failures_run.run_id, "-o", "json", check=True
    )
    rows = json.loads(proc.stdout[proc.stdout.index("[{") :].splitlines()[0])
    return {row["task_id"]: row["state"] for row in rows}


@pytest.fixture(scope="module")
def xcoms(sensors_run: Run) -> dict[str, Any]:
    path = sensors_run.out / "e2e_resume_sensors.xcom.json"
    assert path.is_file(), f"the collect task wrote no XComs\n{sensors_run.tail()}"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------- resume


def test_resume_on_retry_runs_completed_stages_once(sensors_run: Run, xcoms: dict[str, Any]) -> None:
    """s2 fails on its first run: try 1 ends RETRY, try 2 resumes at s2; s1 never runs again."""
    assert sensors_run.proc.returncode == 0, sensors_run.tail()
    assert sensors_run.runs_of("producer") == ["s1", "s2", "s2", "s3"]
    assert sensors_run.runs_of("producer", "end") == ["s1", "s2", "s3"]
    assert sensors_run.runs_of("producer", "rollback") == ["s2"]

    tries = sensors_run.tries("producer")
    assert len(tries) == 2, "one failed try and one retry"
    assert "CheckMate stage failed and will be retried" in tries[0]
    assert "Resuming at stage 2/3: 1 stage(s) already COMPLETE" in tries[1]

    checkmate_id = sensors_run.checkmate_id("producer")
    s1, s2, s3 = (sensors_run.stage(checkmate_id, name) for name in ("s1", "s2", "s3"))
    assert (s1["attempts"], s2["attempts"], s3["attempts"]) == (1, 2, 1)
    assert history(s2) == ["RUNNING", "RETRY", "RUNNING", "COMPLETE"]
    assert xcoms["producer"] == expected_result(3)


def test_auto_cleanup_keeps_the_checkpoints_of_a_failed_try_and_removes_them_once_complete(sensors_run: Run) -> None:
    """auto_cleanup=True: try 1 fails at s2 and keeps s1's checkpoint, so try 2 resumes at s2; COMPLETE removes all."""
    assert sensors_run.runs_of("auto_clean") == ["s1", "s2", "s2", "s3"], "s1 ran again: the failed try cleaned up"
    tries = sensors_run.tries("auto_clean")
    assert len(tries) == 2 and "Resuming at stage 2/3" in tries[1], sensors_run.tail()
    assert not (sensors_run.env.state_dir / sensors_run.checkmate_id("auto_clean")).exists()


# ---------------------------------------------------------------------------------------- sensors


@pytest.mark.parametrize("task_id", ["wait_poke", "wait_reschedule", "wait_deferrable"])
def test_sensor_succeeds_with_the_producer_result(sensors_run: Run, xcoms: dict[str, Any], task_id: str) -> None:
    """Each mode ends with the producer's task result as its XCom and logs progress as stages done/total."""
    assert xcoms[task_id] == expected_result(3)
    log = sensors_run.log(task_id)
    assert re.search(rf"task {re.escape(sensors_run.checkmate_id('producer'))} COMPLETE: 3/3 stages complete", log)


def test_reschedule_sensor_waits_across_the_producer_retry(sensors_run: Run) -> None:
    """The reschedule sensor starts with the producer and gives its slot back until the task is COMPLETE."""
    tries = sensors_run.tries("wait_reschedule")
    assert len(tries) >= 2, sensors_run.tail()
    assert "Rescheduling task, marking task as UP_FOR_RESCHEDULE" in tries[0]
    # Its first poke found the task not started or not finished ("current" names the unfinished stage).
    assert re.search(r"has not started yet|: [0-2]/3 stages complete; current 's\d'", tries[0]), tries[0][-3000:]
    assert "3/3 stages complete" in tries[-1]


def test_deferrable_sensor_waits_in_the_trigger_and_logs_progress(sensors_run: Run, xcoms: dict[str, Any]) -> None:
    """The task run by another process is not finished at the first poke: the sensor defers, the trigger
    logs progress while it polls, and execute_complete returns the task result."""
    log = sensors_run.log("wait_background")
    assert "Pausing task as DEFERRED" in log and "[DAG TEST] running trigger in line" in log, log[-4000:]
    progress = [int(m.group(1)) for m in map(TRIGGER_PROGRESS.search, trigger_lines(log)) if m]
    assert progress[-1] == 4
    assert any(done < 4 for done in progress), "the trigger logged no progress before COMPLETE"
    assert progress == sorted(progress)
    assert xcoms["wait_background"] == expected_result(4)
    background = read_journal(sensors_run.out / f"background.e2e-background-{_ts_nodash(sensors_run)}.journal")
    assert [w[1] for w in background if w[0] == "start"] == ["s1", "s2", "s3", "s4"]


def _ts_nodash(run: Run) -> str:
    found = re.search(r"started CheckMate task e2e-background-(\w+) in process", run.output)
    assert found, run.tail()
    return found.group(1)


@pytest.mark.parametrize("mode", ["poke", "reschedule", "deferrable"])
def test_sensor_fails_on_an_error_task_and_soft_fail_skips(
    failures_run: Run, failure_states: dict[str, str], mode: str
) -> None:
    """On a CheckMate task in ERROR the sensor fails (AirflowFailException, no retry); soft_fail skips it."""
    assert failure_states[f"fail_{mode}"] == "failed"
    tries = failures_run.tries(f"fail_{mode}")
    assert len(tries) == 1
    assert "AirflowFailException" in tries[0]
    assert re.search(r"ERROR: 1/3 stages complete; current 's2' ERROR \(attempt 1\)", tries[0]), tries[0][-3000:]
    assert failure_states[f"soft_{mode}"] == "skipped", failures_run.log(f"soft_{mode}")[-3000:]


def test_deferred_sensor_fails_when_the_task_errors_while_it_waits(
    failures_run: Run, failure_states: dict[str, str]
) -> None:
    """The trigger's event for an ERROR task fails the sensor; with soft_fail the sensor is skipped."""
    for task_id, state in (("defer_fail", "failed"), ("defer_soft", "skipped")):
        log = failures_run.log(task_id)
        assert "[DAG TEST] running trigger in line" in log, log[-3000:]
        assert any("ERROR: 1/3 stages complete; current 's2' ERROR" in line for line in trigger_lines(log)), log[-3000:]
        assert failure_states[task_id] == state, log[-3000:]
    assert "AirflowFailException" in failures_run.log("defer_fail")


# ---------------------------------------------------------------------------------------- failures


def test_engine_error_fails_the_task_without_airflow_retries(failures_run: Run, failure_states: dict[str, str]) -> None:
    """max_attempts=1 and retries=3: the stage fails once, the engine is ERROR, Airflow does not retry."""
    assert failures_run.proc.returncode != 0, "airflow dags test must exit non-zero for a failed run"
    assert failure_states["producer_err"] == "failed"
    assert failure_states["use_result"] == "upstream_failed"
    assert failures_run.runs_of("producer_err") == ["s1", "s2"]
    tries = failures_run.tries("producer_err")
    assert len(tries) == 1, "no further Airflow try after an engine ERROR"
    assert "AirflowFailException" in tries[0]
    s2 = failures_run.stage(failures_run.checkmate_id("producer_err"), "s2")
    assert (s2["status"], s2["attempts"]) == ("ERROR", 1)


def test_retry_policy_none_fails_fast(failures_run: Run, failure_states: dict[str, str]) -> None:
    """checkmate_retry_policy=RetryPolicy.NONE (no max_attempts) with retries=3: one run of s2, then failed."""
    assert failure_states["producer_none"] == "failed"
    assert failures_run.runs_of("producer_none") == ["s1", "s2"], failures_run.log("producer_none")[-4000:]
    assert len(failures_run.tries("producer_none")) == 1


@pytest.mark.parametrize("task_id", ["cb_retry_budget", "cb_error"])
def test_failure_callback_cancels_the_task_and_runs_cancel_once(
    failures_run: Run, failure_states: dict[str, str], task_id: str
) -> None:
    """After the last try fails, cancel_checkmate_task cancels the CheckMate task: cancel() of the first
    incomplete stage runs exactly once, that stage and the ones after it are CANCELED.

    cb_retry_budget: Airflow gives up while the engine still allows attempts (engine RETRY).
    cb_error: the stage used its last attempt (engine ERROR), the usual way a task "fails for good".
    """
    assert failure_states[task_id] == "failed"
    assert failures_run.runs_of(task_id) == ["s1", "s2", "s2"]
    assert failures_run.runs_of(task_id, "cancel") == ["s2"], failures_run.log(task_id)[-4000:]
    checkmate_id = failures_run.checkmate_id(task_id)
    s1, s2, s3 = (failures_run.stage(checkmate_id, name) for name in ("s1", "s2", "s3"))
    assert (s1["status"], s2["status"], s3["status"]) == ("COMPLETE", "CANCELED", "CANCELED")
    assert history(s2).count("CANCELED") == 1


# ---------------------------------------------------------------------------------------- clear


def test_clear_after_error_resumes_at_the_failed_stage(failures_run: Run, failure_states: dict[str, str]) -> None:
    """A task in ERROR that is cleared resumes at the failed stage, in the same DAG run.

    How this is done with Airflow 3.3.2 and no scheduler:

    - ``airflow dags test DAG LOGICAL_DATE`` cannot re-run a run: it deletes the DAG run with that
      logical date and creates a new one whose run id is ``manual__<now>`` (DagRun.get_or_create_dagrun
      in dag.test), so the derived CheckMate task id changes and every stage would run again.
    - ``airflow tasks clear DAG -t TASK -s DATE -e DATE -y`` clears the task instance as the UI does
      (state None, a new TI id, the DAG run back to queued). Note: in 3.3.2 ``-t`` is matched as a
      substring of the task id, not as a regex (SerializedDAG.partial_subset), so anchors match nothing.
    - ``airflow tasks test DAG TASK RUN_ID`` then runs that cleared task instance of the existing run
      (same dag id, task id, run id and map index, hence the same derived CheckMate task id) through
      the task runner and records its new state, which is what a scheduler would do after the clear.

    The stage failed on its first run only (JournalStage.fail_first counts runs in the journal), so the
    re-run succeeds.
    """
    assert failure_states["clearable"] == "failed"
    assert failures_run.runs_of("clearable") == ["s1", "s2"]
    checkmate_id = failures_run.checkmate_id("clearable")
    assert failures_run.stage(checkmate_id, "s2")["status"] == "ERROR"

    env, extra = failures_run.env, {"CHECKMATE_E2E_DIR": str(failures_run.out)}
    clear = ["tasks", "clear", "e2e_failures", "-t", "clearable", "-s", LOGICAL_DATE, "-e", LOGICAL_DATE, "-y"]
    env.run(*clear, extra_env=extra, check=True)
    proc = env.run("tasks", "test", "e2e_failures", "clearable", failures_run.run_id, extra_env=extra)
    assert proc.returncode == 0, proc.stdout[-8000:]
    assert re.search(r"running task <TaskInstance: e2e_failures\.clearable \S+ \[None\]", proc.stdout), (
        "the task instance was not cleared"
    )
    assert "is ERROR and a person cleared this Airflow task: resetting" in proc.stdout
    assert "Resuming at stage 2/3: 1 stage(s) already COMPLETE" in proc.stdout
    assert "new_state=success" in proc.stdout

    assert failures_run.runs_of("clearable") == ["s1", "s2", "s2", "s3"], "s1 must not run again"
    s1, s2, s3 = (failures_run.stage(checkmate_id, name) for name in ("s1", "s2", "s3"))
    assert (s1["status"], s2["status"], s3["status"]) == ("COMPLETE", "COMPLETE", "COMPLETE")
    assert history(s1) == ["RUNNING", "COMPLETE"]
    assert history(s2) == ["RUNNING", "ERROR", "RETRY", "RUNNING", "COMPLETE"]
    assert s2["history"][2]["message"].startswith("reset from ERROR")
    assert s3["result"] == expected_result(3)


# ---------------------------------------------------------------------------------------- results and ids


def test_result_xcom_refuses_fails_once_saying_how_to_fix_it(failures_run: Run, failure_states: dict[str, str]) -> None:
    """A COMPLETE task whose result (bytes) XCom cannot take fails at once, not on every retry, with the way out;
    the binary result is stored intact (base64)."""
    assert failure_states["xcom_refused"] == "failed"
    tries = failures_run.tries("xcom_refused")
    assert len(tries) == 1, f"retries were used on a result that can never be pushed: {len(tries)} tries"
    assert "is COMPLETE and its result is stored, but Airflow's XCom cannot take it (bytes" in tries[0]
    assert "do_xcom_push=False" in tries[0] and "checkmate reset" in tries[0]
    blob = failures_run.stage(failures_run.checkmate_id("xcom_refused"), "blob")
    assert blob["status"] == "COMPLETE" and base64.urlsafe_b64decode(blob["result"]) == b"\x00\xff\xfeblob"


def test_task_id_from_run_id_fails_at_once_naming_the_filter_and_the_filtered_one_runs(
    failures_run: Run, failure_states: dict[str, str]
) -> None:
    """Run ids contain ':' and '+': a raw ``{{ run_id }}`` fails once (no retries) and names the filter to use."""
    assert failure_states["raw_run_id"] == "failed"
    tries = failures_run.tries("raw_run_id")
    assert len(tries) == 1, f"{len(tries)} tries for an id that can never be valid"
    assert "checkmate_task_id, rendered: invalid task id 'e2e-manual__" in tries[0]
    assert "{{ run_id | replace(':', '-') | replace('+', '-') }}" in tries[0]
    assert failure_states["safe_run_id"] == "success"
    safe = "e2e-" + failures_run.run_id.replace(":", "-").replace("+", "-")
    assert failures_run.stage(safe, "s3")["status"] == "COMPLETE"
