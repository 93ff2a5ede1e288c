"""CheckMateSensor: wait for a CheckMate task (run by another DAG or process) to complete."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airflow_checkmate.checkmate import StageStatus, TaskSnapshot, read_snapshot
from airflow_checkmate.checkmate.status import STOPPED_STATUSES
from airflow_checkmate.hooks.checkmate import CheckMateHook
from airflow_checkmate.links.checkmate import CheckMateStateLink, state_url
from airflow_checkmate.triggers.checkmate import CheckMateTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class CheckMateSensor(BaseSensorOperator):
    """Succeed when a CheckMate task is COMPLETE (its result to XCom); fail when it is ERROR or CANCELED.

    Reads the stored state without taking the task's lock and logs progress (stages done / total, the
    current stage and its attempt). Works with ``mode="poke"``, ``mode="reschedule"`` and
    ``deferrable=True`` (waiting in the triggerer through :class:`CheckMateTrigger`). ``soft_fail``
    turns a failed task into a skip.

    :param checkmate_task_id: the CheckMate task to wait for (templated).
    :param checkmate_conn_id: its connection (``checkmate_default`` by default).
    :param deferrable: wait in the triggerer instead of a worker slot.
    """

    template_fields: Sequence[str] = ("checkmate_task_id",)
    ui_color = "#b7e4c7"
    operator_extra_links = (CheckMateStateLink(),)

    def __init__(
        self,
        *,
        checkmate_task_id: str,
        checkmate_conn_id: str = CheckMateHook.default_conn_name,
        deferrable: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.checkmate_task_id = checkmate_task_id
        self.checkmate_conn_id = checkmate_conn_id
        self.deferrable = deferrable

    @cached_property
    def hook(self) -> CheckMateHook:
        return CheckMateHook(checkmate_conn_id=self.checkmate_conn_id)

    def _check(self, snapshot: TaskSnapshot | None) -> bool:
        if snapshot is None:
            self.log.info("CheckMate task %s has not started yet", self.checkmate_task_id)
            return False
        self.log.info("%s", snapshot.progress())
        if snapshot.status in STOPPED_STATUSES:
            raise AirflowFailException(
                f"CheckMate task {self.checkmate_task_id} is {snapshot.status}: {snapshot.progress()}"
            )
        return snapshot.status is StageStatus.COMPLETE

    def poke(self, context: Context) -> PokeReturnValue:
        snapshot = read_snapshot(self.hook.io, self.checkmate_task_id)
        done = self._check(snapshot)
        return PokeReturnValue(is_done=done, xcom_value=snapshot.result if done and snapshot else None)

    def execute(self, context: Context) -> Any:
        ti = context["ti"]  # the watched task's view, for the UI's CheckMate tab and the extra link
        stored = read_snapshot(self.hook.io, self.checkmate_task_id)
        dag_id = (stored.labels.get("airflow_dag_id") if stored else None) or ti.dag_id
        link = state_url(self.checkmate_task_id, self.checkmate_conn_id, dag_id)
        ti.xcom_push(key=CheckMateStateLink().xcom_key, value=link)
        if not self.deferrable:
            return super().execute(context)
        try:
            poked = self.poke(context)
        except AirflowFailException as exc:
            if self.soft_fail or getattr(self, "never_fail", False):
                raise AirflowSkipException(f"Skipping as soft_fail or never_fail is set: {exc}") from exc
            raise
        if poked.is_done:
            return poked.xcom_value
        self.defer(
            trigger=CheckMateTrigger(self.checkmate_task_id, self.checkmate_conn_id, self.poke_interval),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Resume after the trigger fired: the task's result, or fail as poke would."""
        status = event.get("status")
        if status == StageStatus.COMPLETE.value:
            self.log.info("%s", event.get("progress", ""))
            return event.get("result")
        raise AirflowFailException(
            f"CheckMate task {self.checkmate_task_id} is {status}: {event.get('progress') or event.get('message')}"
        )
