"""Ready-made Airflow callbacks for CheckMate tasks."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from airflow_checkmate.checkmate import BindException, CheckMateEngine, StageStatus, TaskEngineException
from airflow_checkmate.checkmate.identity import stored_owner
from airflow_checkmate.checkmate.status import FINISHED_STATUSES

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)


def cancel_checkmate_task(context: Context) -> None:
    """``on_failure_callback`` for a CheckMateOperator: cancel its CheckMate task and run the cleanup.

    The first incomplete stage's ``cancel()`` runs once and the task becomes CANCELED, so stored state
    shows it was given up on; clearing the Airflow task later resets and resumes it. A task in ERROR
    (the usual case: its last attempt failed) is reset first, as the state machine allows no
    ERROR -> CANCELED, so its history reads ERROR, RETRY (reset), CANCELED. A task already COMPLETE or
    CANCELED is left as it is. If another process still holds the task, a cancel request is left for
    it to honour at its next stage boundary. A task another run owns (a shared or templated id) is
    never canceled nor asked to cancel: only its owner's failure may give it up.
    """
    from airflow_checkmate.operators.checkmate import CheckMateOperator

    operator = context["task"]
    if not isinstance(operator, CheckMateOperator):
        log.warning("cancel_checkmate_task is meant for a CheckMateOperator, not %s", type(operator).__name__)
        return
    engine: CheckMateEngine[Any, Any] = operator.build_engine(context)
    operator.identify(engine, context)
    engine.shared = False  # never act on a task another run owns, even one it shares
    owner = stored_owner(engine.io, engine.task_id)
    if owner is None:
        log.info("CheckMate task %s has nothing stored: nothing to cancel", engine.task_id)
        return
    if owner and owner != engine.task_owner:
        log.warning(
            "CheckMate task %s belongs to %s, not to this task instance: it is neither canceled nor asked to cancel",
            engine.task_id,
            owner,
        )
        return
    try:
        engine.bind()
    except BindException:
        log.warning("CheckMate task %s is held by a live process: leaving it a cancel request", engine.task_id)
        CheckMateEngine.request_cancel(engine.io, engine.task_id, "the Airflow task failed")
        return
    except TaskEngineException as exc:  # another definition: nothing of it is ours to clean up
        log.warning("CheckMate task %s was not canceled: %s", engine.task_id, exc)
        return
    try:
        if engine.status in FINISHED_STATUSES:
            log.info("CheckMate task %s is %s: nothing to cancel", engine.task_id, engine.status)
            return
        if engine.status is StageStatus.ERROR:
            engine.reset()
        engine.cancel()
        log.warning(
            "CheckMate task %s canceled after the Airflow task failed:\n%s", engine.task_id, engine.stage_table()
        )
    finally:
        engine.unbind()
