"""(e) A CheckMate task whose stage state, bind lock and registry row live in PostgreSQL.

With state in a database, any worker can resume a task another worker started: they share no disk,
only the database. Every try of this task shows up in ``checkmate list``, under the queue ``exports``
and the tags ``team:data`` and ``dag:checkmate_postgres_state``.

Point the connection ``checkmate_postgres`` (type ``checkmate``) at the database. Install the driver
with ``pip install 'airflow-provider-checkmate[postgres]'``, then either:

- ``airflow connections add checkmate_postgres --conn-type checkmate --conn-extra
  '{"base_url": "postgresql://checkmate:SECRET@db.internal:5432/checkmate",
  "database_url": "postgresql://checkmate:SECRET@db.internal:5432/checkmate"}'``, or
- the environment of every worker: ``AIRFLOW_CONN_CHECKMATE_POSTGRES='{"conn_type": "checkmate",
  "extra": {"base_url": "postgresql://...", "database_url": "postgresql://..."}}'``.

``base_url`` holds the stage state (table ``checkmate_objects``), ``database_url`` the registry
(``checkmate_tasks``); one database can hold both. Tables are created on first use. The password is
masked in Airflow's logs. Name the connection ``checkmate_default`` instead to make it every
CheckMate task's default, and the ``checkmate`` command's (``checkmate --conn-id checkmate_postgres
list`` otherwise).

The export stage fails on its first attempt (a planned, flaky source); Airflow's retry resumes there,
and the snapshot stage, already COMPLETE in PostgreSQL, does not run again.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG
from pydantic import Field

from airflow_checkmate.checkmate import BaseStage, BaseStageState
from airflow_checkmate.operators.checkmate import CheckMateOperator


class ExportState(BaseStageState[dict[str, object]]):
    """What the stages hand on: the snapshot's row ids, then the exported file name."""

    row_ids: list[int] = Field(default_factory=list)
    exported: str = ""


class Snapshot(BaseStage[ExportState]):
    """Pick the rows to export (kept in the stage state, so a retry exports the same rows)."""

    def execute_stage(self, previous_state_copy: ExportState) -> None:
        self.state.row_ids = list(range(1, 101))
        print(f"snapshot: {len(self.state.row_ids)} rows")


class Export(BaseStage[ExportState]):
    """Write the rows out; the first attempt fails, as a flaky remote would."""

    def execute_stage(self, previous_state_copy: ExportState) -> None:
        if self.state.attempts == 1:
            raise ConnectionError("export target unavailable (planned, first attempt only)")
        self.state.row_ids = previous_state_copy.row_ids
        self.state.exported = "export.parquet"
        print(f"export: wrote {len(self.state.row_ids)} rows to {self.state.exported}")


class Publish(BaseStage[ExportState]):
    """Announce the export; its result is the task result (XCom)."""

    def execute_stage(self, previous_state_copy: ExportState) -> None:
        self.state.result = {"file": previous_state_copy.exported, "rows": len(previous_state_copy.row_ids)}
        print(f"publish: {self.state.result}")


with DAG(
    dag_id="checkmate_postgres_state",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["checkmate", "example"],
    doc_md=__doc__,
):
    CheckMateOperator(
        task_id="export",
        stage_templates=[
            Snapshot(stage_name="snapshot", state=ExportState(), description="choose the rows"),
            Export(stage_name="export", state=ExportState(), description="write them out"),
            Publish(stage_name="publish", state=ExportState(), description="announce the file"),
        ],
        checkmate_conn_id="checkmate_postgres",
        checkmate_queue="exports",
        checkmate_tags=["team:data"],
        retries=2,
        retry_delay=timedelta(seconds=1),
    )
