"""CheckMateEngine: binds a task to its stored state, runs stages in order, resumes where it stopped."""

import contextlib
import ctypes
import logging
import threading
import time
from typing import Any

from pydantic_core import PydanticSerializationError

from airflow_checkmate.checkmate.binding import BindingMixin
from airflow_checkmate.checkmate.control import ControlMixin
from airflow_checkmate.checkmate.core import STAGE, STAGE_RESULT, S
from airflow_checkmate.checkmate.exceptions import (
    LeaseLostException,
    PersistenceDataNotFoundException,
    StageInterrupted,
    StateNotStorable,
    TaskEngineException,
)
from airflow_checkmate.checkmate.identity import string_from_callable
from airflow_checkmate.checkmate.inspection import InspectionMixin
from airflow_checkmate.checkmate.models import BaseStageState, deep_copy_state
from airflow_checkmate.checkmate.stage import BaseStage
from airflow_checkmate.checkmate.status import STOPPED_STATUSES
from airflow_checkmate.checkmate.storable import unstorable
from airflow_checkmate.checkmate.store import to_json

log = logging.getLogger(__name__)

__all__ = ["CheckMateEngine", "string_from_callable"]


class CheckMateEngine(
    ControlMixin[STAGE, STAGE_RESULT], BindingMixin[STAGE, STAGE_RESULT], InspectionMixin[STAGE, STAGE_RESULT]
):
    """Multi-stage task execution framework with checkpoint and resume.

    Runs a series of stages sequentially until each is complete, canceled, out of retries or failed
    for good. Every status change is persisted through ``io``; a new engine bound to the same task id
    resumes at the first stage that is not COMPLETE, and completed stages never run again. Stage code
    is at-least-once: a stage interrupted mid-way (crash, kill) runs again, so it must be idempotent.
    Not thread-safe: one engine, one thread.

    :param io: storage for the task's objects (see :meth:`TaskIO.from_base_url`).
    :param task_id: the task's unique id; a random one when None (a new task).
    :param stage_templates: the stages, in order; never modified (the engine works on deep copies).
    :param retry_policy: RetryPolicy.NONE (default) or RetryPolicy.RETRY.
    :param max_attempts: attempts per stage, counted in the stage's stored ``attempts``.
    :param bind_lock_timeout: seconds to wait for another holder's lock; None fails at once.
    :param auto_cleanup: remove the task's stored objects at unbind once the task is COMPLETE.
    :param no_lock: skip the bind lock (read-only inspection, tests).
    :param force_create: this is a new task id; bind raises if objects are already stored for it.
    """

    def execute(self, strict_recovery: bool = False) -> None:
        """Run the task from the first stage that is not COMPLETE.

        :param strict_recovery: a stage found RUNNING means the process that ran it died mid-stage.
            False (default): raise TaskEngineException. True: log a warning and run it again as a new
            attempt (ERROR if no attempt is left).
        """
        self._require_bound()
        status = self.status
        if status is S.COMPLETE:
            return
        stages = self.task_state.stage_templates
        start = self.first_incomplete()
        if status in STOPPED_STATUSES:
            stage = stages[start]
            raise TaskEngineException(
                f"task {self.task_id!r} is {status}: stage {stage.stage_name!r} ended {stage.state.status} "
                f"after {stage.state.attempts} attempt(s). Call engine.reset() to run it again, or "
                f"engine.reset(stage_name=...) to restart from an earlier stage"
            )
        total = len(stages)
        try:
            for index in range(start, total):
                stage = stages[index]
                self._stage_boundary(poll=index == start)  # later ones: the stage before just polled
                previous = deep_copy_state(stages[index - 1].state) if index else stage.state
                self._run_stage(stage, index, total, previous, strict_recovery)
        except BaseException:
            self._flush_quietly()
            raise
        self.flush()  # the last stage's COMPLETE

    def _flush_quietly(self) -> None:
        """Commit a COMPLETE still queued when the run stops for another reason (that reason is what is raised)."""
        if not self._pending:
            return
        try:
            self.flush()
        except Exception:
            log.warning("task %s: could not checkpoint a completed stage while stopping", self.task_id, exc_info=True)

    def interrupt(self, reason: str) -> None:
        """Stop the run promptly: raise StageInterrupted into running stage code, or at the next boundary.

        From a signal handler in the thread that runs :meth:`execute` (Airflow calls ``on_kill`` from
        its SIGTERM handler) the exception is raised right here, so it surfaces inside the stage; from
        another thread (the lease keeper, when the lease was taken over) it is raised asynchronously
        in the stage's thread at its next Python instruction (a blocking C call finishes first). While
        the engine itself is writing, it is deferred to the next stage boundary so no write is torn.
        ``interrupted`` keeps the reason.
        """
        self.interrupted = reason or "interrupted"
        with self._interrupt_lock:
            if not self._in_stage_code:
                return
            self._in_stage_code = False
            if threading.get_ident() == self._stage_thread:
                raise StageInterrupted(self.interrupted)
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._stage_thread), ctypes.py_object(StageInterrupted)
            )

    def _lease_lost(self, new_holder: str) -> None:
        """The keeper saw the lease taken over: stop the stage now; fencing refuses every later write."""
        self.interrupt(self._lease_lost_message())

    def _stage_boundary(self, poll: bool) -> None:
        self._require_bound()
        if self.interrupted:
            raise StageInterrupted(self.interrupted)
        if (poll or self._cancel_event.is_set()) and self._cancel_pending():
            reason = self._cancel_reason()
            self._cancel_from(self.first_incomplete(), reason)
            raise TaskEngineException(f"task {self.task_id!r} was canceled ({reason})")

    def _cancel_reason(self) -> str:
        with contextlib.suppress(PersistenceDataNotFoundException):
            text = self.store.cancel_reason()
            if text is not None:
                return f"cancel requested: {text[:500]}"
        return "cancel requested"

    def _run_stage(
        self, stage: BaseStage[Any], index: int, total: int, previous: BaseStageState[Any], strict_recovery: bool
    ) -> None:
        state, name = stage.state, stage.stage_name
        begin = time.time()
        where = f"stage {index + 1}/{total} {name!r}"
        if state.status is S.RUNNING:
            if not strict_recovery:
                raise TaskEngineException(
                    f"{where} of task {self.task_id!r} was found RUNNING (attempt {state.attempts}): the "
                    "process running it died or lost its lock mid-stage. Call execute(strict_recovery=True) "
                    "to run it again as a new attempt, or reset it"
                )
            if not self.policy.attempts_left(state.attempts):
                stage.update_status(
                    f"found RUNNING after an interruption and no attempt is left "
                    f"({state.attempts}/{self.max_attempts})",
                    S.ERROR,
                    begin,
                    begin,
                )
                raise TaskEngineException(
                    f"{where} was interrupted on its last attempt ({state.attempts}/{self.max_attempts}) "
                    "and is now ERROR; reset it to run it again"
                )
            log.warning("%s was found RUNNING (interrupted); running it again", where)
            message = "recovered after an interruption: running again"
        else:
            message = "started"
        stage.inc_attempts()
        stage.update_status(message, S.RUNNING, begin)
        log.info("%s: attempt %d/%d started", where, state.attempts, self.max_attempts)
        try:
            with self._interrupt_lock:
                self._stage_thread, self._in_stage_code = threading.get_ident(), True
            try:
                stage.execute_stage(previous)
            finally:
                with self._interrupt_lock:
                    self._in_stage_code = False
        except BaseException as exc:
            self._stage_failed(stage, exc, where, begin)
            raise  # _stage_failed raises for Exceptions; others (KeyboardInterrupt...) propagate as is
        if self._cancel_pending():  # the stage returned, maybe early on seeing cancel_requested: not COMPLETE
            stage.state.result = None
            reason = f"{self._cancel_reason()} (while the stage ran; it returned, its result was discarded)"
            self._cancel_from(index, reason)
            raise TaskEngineException(f"task {self.task_id!r} was canceled while {where} ran ({reason})")
        end = time.time()
        produced = stage.state
        try:
            with self.deferred():  # committed with the next stage's RUNNING (or when the run ends): one checkpoint
                stage.update_status(f"completed in {end - begin:.3f} s", S.COMPLETE, begin, end)
        except PydanticSerializationError as exc:  # the stored state is re-read: the one from before this attempt
            self._stage_failed(stage, unstorable(produced, self._where(stage), exc), where, begin)
            raise
        log.info("%s: COMPLETE in %.3f s (attempt %d)", where, end - begin, state.attempts)

    def _where(self, stage: BaseStage[Any]) -> str:
        return f"task {self.task_id!r} stage {stage.stage_name!r}"

    def _stage_failed(self, stage: BaseStage[Any], exc: BaseException, where: str, begin: float) -> None:
        """Roll back, then move the stage to CANCELED, RETRY or ERROR and raise what the caller sees."""
        if self._keeper is not None and self._keeper.lost.is_set():
            # The new holder runs this task now: no rollback (it could undo the new holder's work), no write.
            raise LeaseLostException(self._lease_lost_message()) from exc
        try:
            to_json(stage.state)
        except PydanticSerializationError as cause:  # the attempt left a value that cannot be stored
            error_state = unstorable(stage.state, self._where(stage), cause)
            self._resync_stage(stage, cause)
            if isinstance(exc, Exception) and not isinstance(exc, StateNotStorable):  # an interruption stays one
                error_state.__cause__, exc = exc, error_state
        state = stage.state
        error = f"{type(exc).__name__}: {exc}"
        if self._cancel_pending():
            self._rollback(stage)
            self._cancel_from(self.first_incomplete(), f"canceled while running ({error})")
            raise TaskEngineException(f"task {self.task_id!r} was canceled while {where} ran") from exc
        rollback_error = self._rollback(stage)
        end = time.time()
        if rollback_error is None and self.policy.attempts_left(state.attempts):
            stage.update_status(
                f"{error} (attempt {state.attempts}/{self.max_attempts}; will retry)", S.RETRY, begin, end
            )
            log.warning(
                "%s failed on attempt %d/%d, can be retried: %s", where, state.attempts, self.max_attempts, error
            )
            if isinstance(exc, Exception):
                raise TaskEngineException(
                    f"{where} failed on attempt {state.attempts}/{self.max_attempts} and can be "
                    f"auto-recovered: call execute() again ({error})"
                ) from exc
            return
        if rollback_error is not None:
            error += f"; rollback_stage failed: {type(rollback_error).__name__}: {rollback_error}"
        stage.update_status(
            f"{error} (attempt {state.attempts}/{self.max_attempts}; no retry left)", S.ERROR, begin, end
        )
        log.error("%s failed for good on attempt %d: %s", where, state.attempts, error)
        if isinstance(exc, Exception):
            raise exc

    @staticmethod
    def _rollback(stage: BaseStage[Any]) -> Exception | None:
        try:
            stage.rollback_stage()
        except Exception as exc:
            log.exception("rollback_stage of stage %r failed", stage.stage_name)
            return exc
        return None
