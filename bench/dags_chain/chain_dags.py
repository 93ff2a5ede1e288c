"""The chained-tasks benchmark's DAGs: one job of N stages as N chained tasks, and as one CheckMateOperator.

N comes from ``$CHECKMATE_CHAIN_STAGES`` (bench.airflow_chain sets it in the stack's environment). Each shape has
a plain DAG and a ``_fail_once`` DAG whose middle stage fails on its first execution. Every task has retries=1
and retry_delay=1 s, in both shapes, so a failure costs each shape one Airflow retry.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task

from airflow_checkmate.operators.checkmate import CheckMateOperator
from bench.dags_chain.chain_stages import ChainStage, DigestState, failing_stage, run_stage, stage_count

COUNT = stage_count()
FAILING = failing_stage(COUNT)
DAG_ARGS: dict[str, Any] = {
    "schedule": None,
    "start_date": datetime(2024, 1, 1),
    "catchup": False,
    "max_active_runs": 1,
    "tags": ["bench"],
    "default_args": {"retries": 1, "retry_delay": timedelta(seconds=1)},
}


@task
def chained_stage(previous: str, dag_id: str, stage: str, fail_once: bool) -> str:
    """One stage as one Airflow task; the digest travels to the next task through XCom, as users would do it."""
    return run_stage(dag_id, stage, previous, fail_once)


for fail_once in (False, True):
    suffix = "_fail_once" if fail_once else ""

    tasks_dag = f"bench_chain_tasks{suffix}"
    with DAG(tasks_dag, **DAG_ARGS):
        previous: Any = ""  # then the XComArg of the task before
        for index in range(1, COUNT + 1):
            fails = fail_once and index == FAILING
            previous = chained_stage.override(task_id=f"s{index}")(previous, tasks_dag, f"s{index}", fails)

    checkmate_dag = f"bench_chain_checkmate{suffix}"
    with DAG(checkmate_dag, **DAG_ARGS):
        CheckMateOperator(
            task_id="stages",
            stage_templates=[
                ChainStage(
                    stage_name=f"s{index}",
                    state=DigestState(),
                    dag_id=checkmate_dag,
                    fail_once=fail_once and index == FAILING,
                )
                for index in range(1, COUNT + 1)
            ],
        )
