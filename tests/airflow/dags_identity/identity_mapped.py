"""Test DAG: a mapped CheckMateOperator whose inputs come from an upstream list (issue 11, point 1).

``upstream_items`` returns the items listed in ``$CHECKMATE_E2E_DIR/items.json``; ``mapped_work`` runs
one CheckMate task per item (``.expand(factory_kwargs=...)``), each returning a result computed from
its item. The test changes the list's order, clears the run, and checks map index 0 never returns the
stored result computed for another item.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task

from airflow_checkmate.checkmate import BaseStage, BaseStageState
from airflow_checkmate.operators.checkmate import CheckMateOperator
from support.stages import journal


class ItemState(BaseStageState[str]):
    """The result of the work on one item."""


class ItemStage(BaseStage[ItemState]):
    """Computes ``result-for-<item>`` and journals ``start work <item>``."""

    item: str
    journal_path: str = ""

    def execute_stage(self, previous_state_copy: ItemState) -> None:
        journal(self.journal_path, f"start {self.stage_name} {self.item}")
        self.state.result = f"result-for-{self.item}"


def item_stages(item: str) -> list[ItemStage]:
    out = os.environ.get("CHECKMATE_E2E_DIR", "")
    path = f"{out}/identity_mapped.journal" if out else ""
    return [ItemStage(stage_name="work", state=ItemState(), item=item, journal_path=path)]


with DAG(dag_id="identity_mapped", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):

    @task
    def upstream_items() -> list[dict[str, Any]]:
        items = json.loads(Path(os.environ["CHECKMATE_E2E_DIR"], "items.json").read_text())
        return [{"item": item} for item in items]

    CheckMateOperator.partial(task_id="mapped_work", checkmate_factory=item_stages, retries=2).expand(
        factory_kwargs=upstream_items()
    )
