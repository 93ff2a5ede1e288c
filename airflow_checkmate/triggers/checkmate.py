"""CheckMateTrigger: waits in the triggerer until a CheckMate task ends, without blocking the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_checkmate.checkmate import StageStatus, TaskSnapshot, read_snapshot
from airflow_checkmate.checkmate.status import TERMINAL_STATUSES


class CheckMateTrigger(BaseTrigger):
    """Fire once the CheckMate task is COMPLETE, ERROR or CANCELED; storage reads run in a thread.

    The event payload: ``status``, ``result`` (the task result when COMPLETE), ``progress`` (a line for
    the log), or ``status: "failed"`` with ``message`` if storage could not be read.

    :param checkmate_task_id: the CheckMate task to watch.
    :param checkmate_conn_id: its connection (``checkmate_default`` by default).
    :param poll_interval: seconds between reads of the stored state.
    """

    def __init__(
        self, checkmate_task_id: str, checkmate_conn_id: str = "checkmate_default", poll_interval: float = 5.0
    ) -> None:
        super().__init__()
        self.checkmate_task_id = checkmate_task_id
        self.checkmate_conn_id = checkmate_conn_id
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "checkmate_task_id": self.checkmate_task_id,
                "checkmate_conn_id": self.checkmate_conn_id,
                "poll_interval": self.poll_interval,
            },
        )

    def _snapshot(self) -> TaskSnapshot | None:
        from airflow_checkmate.hooks.checkmate import CheckMateHook

        return read_snapshot(CheckMateHook(self.checkmate_conn_id).io, self.checkmate_task_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        last = ""
        while True:
            try:
                snapshot = await asyncio.to_thread(self._snapshot)
            except Exception as exc:
                yield TriggerEvent({"status": "failed", "message": f"{type(exc).__name__}: {exc}"})
                return
            if snapshot is not None:
                progress = snapshot.progress()
                if progress != last:
                    self.log.info("%s", progress)
                    last = progress
                if snapshot.status in TERMINAL_STATUSES:
                    yield TriggerEvent(
                        {
                            "status": snapshot.status.value,
                            "result": snapshot.result if snapshot.status is StageStatus.COMPLETE else None,
                            "progress": progress,
                        }
                    )
                    return
            else:
                self.log.info("CheckMate task %s has not started yet", self.checkmate_task_id)
            await asyncio.sleep(self.poll_interval)
