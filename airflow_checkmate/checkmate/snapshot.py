"""Read a task's progress from storage without its stage templates and without the lock.

For watchers (the Airflow sensor and trigger, the CLI) that know only the task id: stage objects are
read as generic JSON records (status, attempts, result), never imported as their classes.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from airflow_checkmate.checkmate import names
from airflow_checkmate.checkmate.exceptions import PersistenceDataNotFoundException, TaskEngineException
from airflow_checkmate.checkmate.io.base import TaskIO
from airflow_checkmate.checkmate.models import StageStateHistoryEntry, TaskEngineState
from airflow_checkmate.checkmate.status import StageStatus, check_sequence, overall_status


class StageView(BaseModel):
    """What a watcher may know of a stage: its status, attempts, last message and result."""

    model_config = ConfigDict(extra="ignore")

    stage_name: str
    status: StageStatus = StageStatus.CREATED
    attempts: int = 0
    history: list[StageStateHistoryEntry] = []
    result: Any = None

    @property
    def last_message(self) -> str:
        return self.history[-1].message if self.history else ""


class TaskSnapshot(BaseModel):
    """A task's stored progress at one moment."""

    task_id: str
    stages: list[StageView]
    status: StageStatus
    locked: bool
    labels: dict[str, str] = {}

    @property
    def done(self) -> int:
        return sum(1 for s in self.stages if s.status is StageStatus.COMPLETE)

    @property
    def current(self) -> StageView | None:
        """The first stage that is not COMPLETE."""
        return next((s for s in self.stages if s.status is not StageStatus.COMPLETE), None)

    @property
    def result(self) -> Any:
        """The result of the last COMPLETE stage (the task result once the task is COMPLETE)."""
        return next((s.result for s in reversed(self.stages) if s.status is StageStatus.COMPLETE), None)

    def progress(self) -> str:
        """One line for logs: ``2/5 stages complete; current 'load' RETRY (attempt 1)``."""
        line = f"task {self.task_id} {self.status}: {self.done}/{len(self.stages)} stages complete"
        current = self.current
        if current is not None:
            line += f"; current {current.stage_name!r} {current.status} (attempt {current.attempts})"
            if current.last_message:
                line += f": {current.last_message[:200]}"
        return line


def read_snapshot(io: TaskIO, task_id: str) -> TaskSnapshot | None:
    """The task's stored progress, or None if nothing is stored for ``task_id`` yet."""
    names.validate_task_id(task_id)
    stored = set(io.list(names.task_prefix(task_id)))
    task_obj = names.task_obj_name(task_id)
    if task_obj not in stored:
        return None
    record = _parse(io, task_obj, TaskEngineState)
    views = []
    for stage_name in record.stage_names:
        obj = names.stage_obj_name(task_id, stage_name)
        views.append(_parse(io, obj, StageView) if obj in stored else StageView(stage_name=stage_name))
    statuses = [v.status for v in views]
    try:
        check_sequence(statuses, record.stage_names)
    except TaskEngineException as exc:
        raise PersistenceDataNotFoundException(f"stored task {task_id!r} is inconsistent: {exc}") from exc
    return TaskSnapshot(
        task_id=task_id,
        stages=views,
        status=overall_status(statuses),
        locked=names.lock_obj_name(task_id) in stored,
        labels=record.labels,
    )


def _parse(io: TaskIO, obj: str, model: Any) -> Any:
    try:
        return model.model_validate_json(io.read_bytes(obj))
    except ValidationError as exc:
        raise PersistenceDataNotFoundException(
            f"stored object {io.build_url(obj)} does not parse ({exc.error_count()} error(s)); left in place"
        ) from exc
