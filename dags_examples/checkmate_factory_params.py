"""(b) A CheckMate task whose stages are built at run time from DAG params and the logical date.

``checkmate_factory`` is called in every try with the rendered ``factory_kwargs`` (a template field):
here one ``copy_<table>`` stage per table in ``params.tables``, each copying ``params.partitions``
partitions of ``{{ ds }}``, then a ``report`` stage whose result (rows per table, the total) is the
task result and goes to XCom. Trigger it with other params to get another stage list, e.g.
``airflow dags test checkmate_factory_params 2026-01-15 -c '{"tables": ["orders", "refunds"], "partitions": 2}'``.

Things to know when you copy this:

- Template rendering gives strings (unless the DAG sets ``render_template_as_native_obj=True``), so
  the factory converts its arguments itself: ``tables`` arrives comma-separated, ``partitions`` as
  ``"3"``. Check them there: a bad value then fails the try with a clear message before anything runs.
- The factory must return the same stage list in every try of one run. Params and the logical date do
  not change between the tries (or clears) of a run, so stages derived from them are safe. If the list
  did change, CheckMate refuses to bind the stored task instead of mixing two task definitions.
- ``checkmate_factory`` takes the callable itself, as here, or a dotted path (``"my_pipelines.sales.
  build_stages"``) to a function in an importable module. Prefer the callable for a function defined
  in the DAG file: Airflow imports DAG files under a generated module name, so a dotted path to the DAG
  file would import it a second time.
- The factory may also return a ready ``CheckMateEngine`` when it needs engine options of its own.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from airflow.sdk import DAG, Param
from pydantic import Field

from airflow_checkmate.checkmate import BaseStage, BaseStageState
from airflow_checkmate.operators.checkmate import CheckMateOperator

TABLE_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")


class CopyState(BaseStageState[dict[str, object]]):
    """Shared by all stages: rows copied per table so far."""

    copied: dict[str, int] = Field(default_factory=dict)


class CopyTable(BaseStage[CopyState]):
    """Copy every partition of one table for one day (idempotent: it overwrites the day's partitions)."""

    table: str
    partitions: int
    day: str

    def execute_stage(self, previous_state_copy: CopyState) -> None:
        rows = 0
        for partition in range(1, self.partitions + 1):
            print(f"copy {self.table} partition {partition}/{self.partitions} of {self.day}")
            rows += 100 * partition
        self.state.copied = {**previous_state_copy.copied, self.table: rows}


class Report(BaseStage[CopyState]):
    """Summarise what the copy stages did; its result is the task result."""

    day: str

    def execute_stage(self, previous_state_copy: CopyState) -> None:
        copied = dict(previous_state_copy.copied)
        self.state.copied = copied
        self.state.result = {"day": self.day, "rows": copied, "total_rows": sum(copied.values())}
        print(f"report for {self.day}: {self.state.result}")


def build_stages(tables: str, partitions: str, day: str) -> list[BaseStage[CopyState]]:
    """The factory: one copy stage per table, then the report. Arguments arrive rendered, as strings."""
    names = [t.strip() for t in tables.split(",") if t.strip()]
    if not names or not all(TABLE_NAME.fullmatch(t) for t in names) or len(set(names)) != len(names):
        raise ValueError(f"tables must be distinct names of letters, digits and '_', got {tables!r}")
    count = int(partitions)
    if not 1 <= count <= 100:
        raise ValueError(f"partitions must be between 1 and 100, got {count}")
    stages: list[BaseStage[CopyState]] = [
        CopyTable(
            stage_name=f"copy_{name}",
            state=CopyState(),
            description=f"copy {count} partition(s) of {name} for {day}",
            table=name,
            partitions=count,
            day=day,
        )
        for name in names
    ]
    stages.append(Report(stage_name="report", state=CopyState(), description="sum the copied rows", day=day))
    return stages


with DAG(
    dag_id="checkmate_factory_params",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["checkmate", "example"],
    doc_md=__doc__,
    params={
        "tables": Param(["orders", "customers", "invoices"], type="array", description="tables to copy"),
        "partitions": Param(3, type="integer", minimum=1, maximum=100, description="partitions per table"),
    },
):
    CheckMateOperator(
        task_id="copy_tables",
        checkmate_factory=build_stages,
        factory_kwargs={
            "tables": "{{ params.tables | join(',') }}",
            "partitions": "{{ params.partitions }}",
            "day": "{{ ds }}",
        },
        retries=2,
        retry_delay=timedelta(seconds=1),
    )
