"""Test DAG: how CheckMate failures reach Airflow. Every task writes a journal under $CHECKMATE_E2E_DIR.

- ``producer_err``: s2 always fails, ``max_attempts=1``, Airflow ``retries=3``: the engine goes ERROR on
  the first try and the Airflow task must fail without using its retries.
- ``producer_none``: as producer_err with ``checkmate_retry_policy=RetryPolicy.NONE`` and no max_attempts.
- ``use_result``: consumes ``producer_err``'s result and never runs (upstream_failed). A DAG run's state
  comes from its leaves, and this is the leaf that fails the run: every other task is upstream of the
  deferrable chain, whose last sensor is skipped.
- ``fail_<mode>`` / ``soft_<mode>``: CheckMateSensor (poke, reschedule, deferrable) on the ERROR task of
  ``producer_err``; without soft_fail they fail, with it they are skipped.
- ``start_err_a`` >> ``defer_fail`` >> ``start_err_b`` >> ``defer_soft``: deferrable sensors on tasks run
  by another process that go ERROR while the trigger waits (the trigger's failure event path). The
  chain runs after every other task, so nothing delays a sensor past the end of its slow stages.
- ``clearable``: s2 fails on its first run only, ``max_attempts=1``: ERROR now; the test clears the task
  and runs it again in the same DAG run.
- ``cb_retry_budget``: s2 always fails, Airflow gives up (retries=1) while the engine would still allow
  attempts (max_attempts=5): the engine is RETRY when ``cancel_checkmate_task`` runs.
- ``cb_error``: s2 always fails, default max_attempts (retries + 1): the engine is ERROR when
  ``cancel_checkmate_task`` runs.
- ``xcom_refused``: COMPLETE with a bytes result, which XCom refuses: fails once (retries=2), saying how to fix it.
- ``raw_run_id`` / ``safe_run_id``: ``checkmate_task_id`` from ``{{ run_id }}`` (':' and '+') fails at once
  naming the filter; with ``| replace(':', '-') | replace('+', '-')`` it runs.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task

from airflow_checkmate.callbacks import cancel_checkmate_task
from airflow_checkmate.checkmate import RetryPolicy
from airflow_checkmate.operators.checkmate import CheckMateOperator, derive_checkmate_task_id
from airflow_checkmate.sensors.checkmate import CheckMateSensor
from support.stages import BlobStage, BlobState, make_stages
from tests.airflow.dags_e2e.e2e_support import journal_path, launch_background

DAG_ID = "e2e_failures"
ALWAYS = {"s2": 1_000_000}
ERR_ID = "{{ checkmate_id(dag.dag_id, 'producer_err', run_id) }}"


def stages(task_id: str, fail_first: dict[str, int]) -> Any:
    return make_stages(3, journal_path(DAG_ID, task_id), fail_first=fail_first)


with DAG(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    user_defined_macros={"checkmate_id": derive_checkmate_task_id},
    default_args={"retry_delay": timedelta(seconds=1)},
):
    producer_err = CheckMateOperator(
        task_id="producer_err", stage_templates=stages("producer_err", ALWAYS), retries=3, max_attempts=1
    )

    @task
    def use_result(result: Any) -> None:
        """A consumer of the producer's result: never runs (upstream_failed), and as a leaf fails the run."""
        print(f"result: {result}")

    use_result(producer_err.output)
    others: list[Any] = [
        CheckMateOperator(
            task_id="producer_none",
            stage_templates=stages("producer_none", ALWAYS),
            retries=3,
            checkmate_retry_policy=RetryPolicy.NONE,
        ),
        CheckMateOperator(task_id="clearable", stage_templates=stages("clearable", {"s2": 1}), max_attempts=1),
        CheckMateOperator(
            task_id="cb_retry_budget",
            stage_templates=stages("cb_retry_budget", ALWAYS),
            retries=1,
            max_attempts=5,
            on_failure_callback=cancel_checkmate_task,
        ),
        CheckMateOperator(
            task_id="cb_error",
            stage_templates=stages("cb_error", ALWAYS),
            retries=1,
            on_failure_callback=cancel_checkmate_task,
        ),
        CheckMateOperator(
            task_id="xcom_refused", stage_templates=[BlobStage(stage_name="blob", state=BlobState())], retries=2
        ),
        CheckMateOperator(
            task_id="raw_run_id", checkmate_task_id="e2e-{{ run_id }}", stage_templates=stages("raw", {}), retries=2
        ),
        CheckMateOperator(
            task_id="safe_run_id",
            checkmate_task_id="e2e-{{ run_id | replace(':', '-') | replace('+', '-') }}",
            stage_templates=stages("safe_run_id", {}),
        ),
    ]

    for mode in ("poke", "reschedule", "deferrable"):
        for soft in (False, True):
            sensor = CheckMateSensor(
                task_id=f"{'soft' if soft else 'fail'}_{mode}",
                checkmate_task_id=ERR_ID,
                mode="reschedule" if mode == "reschedule" else "poke",
                deferrable=mode == "deferrable",
                soft_fail=soft,
                poke_interval=1,
                timeout=60,
                trigger_rule="all_done",
            )
            producer_err >> sensor
            others.append(sensor)

    @task(trigger_rule="all_done")
    def start_background(checkmate_task_id: str) -> int:
        return launch_background(checkmate_task_id, 3, sleep=1.5, fail_first=ALWAYS)

    ids = {name: f"e2e-{name}-{{{{ ts_nodash }}}}" for name in ("err-a", "err-b")}
    defer_kwargs: dict[str, Any] = {"deferrable": True, "poke_interval": 1, "timeout": 60, "trigger_rule": "all_done"}
    defer_fail = CheckMateSensor(task_id="defer_fail", checkmate_task_id=ids["err-a"], **defer_kwargs)
    defer_soft = CheckMateSensor(task_id="defer_soft", checkmate_task_id=ids["err-b"], soft_fail=True, **defer_kwargs)
    (
        others
        >> start_background.override(task_id="start_err_a")(ids["err-a"])
        >> defer_fail
        >> start_background.override(task_id="start_err_b")(ids["err-b"])
        >> defer_soft
    )
