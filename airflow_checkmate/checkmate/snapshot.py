"""Read a task's progress from storage without its stage templates and without the lock.

For watchers (the Airflow sensor and trigger, the CLI, the UI) that know only the task id: stage objects
are read as generic JSON records (status, attempts, result), never imported as their classes. The
:class:`~airflow_checkmate.checkmate.store.TaskStore` reads and checks them; this is the read model.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict

from airflow_checkmate.checkmate.exceptions import PersistenceDataNotFoundException, TaskEngineException
from airflow_checkmate.checkmate.io.base import TaskIO
from airflow_checkmate.checkmate.models import StageStateHistoryEntry
from airflow_checkmate.checkmate.status import StageStatus, check_sequence, overall_status
from airflow_checkmate.checkmate.store import TaskStore


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
    return snapshot_of(TaskStore(io, task_id))


def snapshot_of(store: TaskStore) -> TaskSnapshot | None:
    """The stored progress of the store's task (one pass over its objects), or None if nothing is stored."""
    stored = store.load()
    record = stored.record
    if record is None:
        return None
    views = [
        store.parse(store.stage_obj(n), StageView, stored.stages[n]) if n in stored.stages else StageView(stage_name=n)
        for n in record.stage_names
    ]
    statuses = [v.status for v in views]
    try:
        check_sequence(statuses, record.stage_names)
    except TaskEngineException as exc:
        raise PersistenceDataNotFoundException(f"stored task {store.task_id!r} is inconsistent: {exc}") from exc
    return TaskSnapshot(
        task_id=store.task_id,
        stages=views,
        status=overall_status(statuses),
        locked=store.lock_obj in stored.objects or store.io.lease_read(store.lock_obj) is not None,
        labels=record.labels,
    )
