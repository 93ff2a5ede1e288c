"""Control: cancel a task (here or from another process) and reset a stopped one."""

import logging
import time
from typing import Any

from airflow_checkmate.checkmate.checkpoint import CheckpointMixin
from airflow_checkmate.checkmate.core import STAGE, STAGE_RESULT, S
from airflow_checkmate.checkmate.exceptions import TaskEngineException
from airflow_checkmate.checkmate.io.base import TaskIO
from airflow_checkmate.checkmate.stage import BaseStage
from airflow_checkmate.checkmate.status import STOPPED_STATUSES, TERMINAL_STATUSES, StageStatus
from airflow_checkmate.checkmate.store import TaskStore

log = logging.getLogger("airflow_checkmate.checkmate.engine")


class ControlMixin(CheckpointMixin[STAGE, STAGE_RESULT]):
    """cancel(), reset(), and cancel requests from outside noticed at stage boundaries."""

    def _cancel_pending(self) -> bool:
        """A cancel request stands: flagged (by the lease thread or a poll) and still stored.

        Checking the object too means a flag raised just before a cancel removed it is not honoured twice.
        """
        self._poll_cancel()
        if self._cancel_event.is_set() and not self.store.cancel_requested():
            self._cancel_event.clear()
        return self._cancel_event.is_set()

    # ----------------------------------------------------------------- cancel and reset

    def cancel(self, reason: str = "") -> None:
        """Cancel the task: the first incomplete stage and all after it become CANCELED.

        That stage's ``cancel()`` runs once for cleanup. Raises TaskEngineException if the task is
        already COMPLETE, ERROR or CANCELED.

        :param reason: recorded in the stages' and the task's history (default "canceled").
        """
        self._require_bound()
        status = self.status
        if status in TERMINAL_STATUSES:
            raise TaskEngineException(f"cannot cancel task {self.task_id!r}: it is already {status}")
        self._cancel_from(self.first_incomplete(), reason or "canceled")

    def _cancel_from(self, index: int, message: str) -> None:
        """Cancel stage ``index`` and every later one, the request withdrawn and the event recorded: one checkpoint."""
        stages = self.task_state.stage_templates
        if self._fence is not None:
            self.io.check_fence(self._fence)  # cleanup has effects outside storage: not for a lost lease
        begin = time.time()
        first = stages[index]
        note = ""
        try:
            first.cancel()
        except Exception as exc:
            log.exception("cancel() cleanup of stage %r failed", first.stage_name)
            note = f"; cancel() cleanup failed: {type(exc).__name__}: {exc}"
        with self.deferred():
            first.update_status(message + note, S.CANCELED, begin, time.time())
            for stage in stages[index + 1 :]:
                stage.update_status(f"canceled with the task ({message})", S.CANCELED, begin, time.time())
        self._record_event("canceled", f"at stage {first.stage_name!r}: {message}{note}", self.store.cancel_removal())
        self._cancel_event.clear()
        log.warning("task %s canceled at stage %r: %s", self.task_id, first.stage_name, message)

    def reset(self, stage_name: str | None = None) -> None:
        """Make a stopped task runnable again; history is kept and records the reset.

        :param stage_name: None: the ERROR or CANCELED stage goes to RETRY with attempts back to 0 and
            the CANCELED stages after it to CREATED. A name: that stage and every stage after it go
            back to CREATED with their template state ("restart from here"); it must not come after
            the first incomplete stage.

        Stages are written from the last to the first, so every intermediate stored sequence is valid
        and a reset cut short by a crash can simply be made again.
        """
        self._require_bound()
        stages = self.task_state.stage_templates
        frontier = self.first_incomplete()
        now = time.time()
        if stage_name is None:
            index = next((i for i, s in enumerate(stages) if s.state.status in STOPPED_STATUSES), None)
            if index is None:
                raise TaskEngineException(
                    f"task {self.task_id!r} is {self.status}: no ERROR or CANCELED stage to reset; pass "
                    "stage_name to restart from a stage"
                )
            plan = [(stages[index], S.RETRY, f"reset from {stages[index].state.status}")]
            plan += [(stage, S.CREATED, "reset with the task") for stage in stages[index + 1 :]]
        else:
            index = self._stage_index.get(stage_name, -1)
            if index < 0:
                known = ", ".join(self.task_state.stage_names)
                raise TaskEngineException(f"task {self.task_id!r} has no stage {stage_name!r}; stages: {known}")
            if index > frontier:
                raise TaskEngineException(
                    f"cannot restart task {self.task_id!r} from stage {stage_name!r}: stage "
                    f"{stages[frontier].stage_name!r} before it is {stages[frontier].state.status}, not COMPLETE. "
                    f"Restart from {stages[frontier].stage_name!r} or earlier, or call reset()"
                )
            plan = [(stage, S.CREATED, f"restart from stage {stage_name!r}") for stage in stages[index:]]
        with self.deferred():  # one checkpoint, stages back to front: every prefix of it is a valid task
            for stage, status, message in reversed(plan):
                self._reset_stage(stage, status, message, now, keep_state=stage_name is None)
        self._record_event("reset", f"from stage {stages[index].stage_name!r}", self.store.cancel_removal())
        self._cancel_event.clear()
        log.warning("task %s reset from stage %r", self.task_id, stages[index].stage_name)

    def _reset_stage(
        self, stage: BaseStage[Any], status: StageStatus, message: str, now: float, keep_state: bool
    ) -> None:
        old = stage.state
        if old.status is S.CREATED and not old.history:
            return  # never started, nothing stored: already as fresh as it gets
        if not keep_state:
            stage.state = self.fresh_state(stage.stage_name)
            stage.state.status, stage.state.history = old.status, old.history
        stage.state.attempts = 0
        stage.update_status(f"{message} (was {old.status}, {old.attempts} attempt(s))", status, now, now, reset=True)

    @staticmethod
    def request_cancel(io: TaskIO, task_id: str, reason: str = "") -> None:
        """Ask whichever process runs ``task_id`` to cancel it at its next stage boundary.

        Needs no lock: it only writes the task's cancel request; the holder does the cancel and runs
        the stage's ``cancel()`` cleanup.
        """
        TaskStore(io, task_id).request_cancel(reason)
