"""Inspection: compare memory with storage, and render the stages as Markdown for logs and people."""

import logging
from typing import Literal

from colorama import Fore

from airflow_checkmate.checkmate.checkpoint import CheckpointMixin
from airflow_checkmate.checkmate.core import STAGE, STAGE_RESULT, S
from airflow_checkmate.checkmate.exceptions import PersistenceDataNotFoundException
from airflow_checkmate.checkmate.render import render_stages, render_table
from airflow_checkmate.checkmate.store import to_json

log = logging.getLogger("airflow_checkmate.checkmate.engine")


class InspectionMixin(CheckpointMixin[STAGE, STAGE_RESULT]):
    """check_sync, dump_stages, stage_table and log_stages."""

    def check_sync(self) -> bool:
        """True if every stage's state in memory equals its stored state."""
        for stage in self.task_state.stage_templates:
            try:
                stored = self.read_stored_state(stage)
            except PersistenceDataNotFoundException:
                return False
            if stored is None:
                if stage.state.status is not S.CREATED or stage.state.history:
                    return False
            elif to_json(stored) != to_json(stage.state):  # as JSON: NaN equals NaN, as stored
                return False
        return True

    def dump_stages(
        self,
        source: Literal["memory", "persistence"] = "memory",
        color: str | None = Fore.LIGHTWHITE_EX,
        basenames_only: bool = False,
        source_in_heading: bool = False,
    ) -> str:
        """A Markdown summary of every stage (status, attempts, history, state) and the stored objects."""
        return render_stages(self, source, color, basenames_only, source_in_heading)

    def stage_table(self) -> str:
        """A compact Markdown table of the stages: number, name, status, attempts, last change."""
        return render_table(self)

    def log_stages(
        self,
        source: Literal["memory", "persistence"] = "memory",
        color: str | None = Fore.LIGHTWHITE_EX,
        basenames_only: bool = False,
    ) -> None:
        """Log :meth:`dump_stages` in colour."""
        log.info("\n%s", self.dump_stages(source, color, basenames_only, source_in_heading=True))
