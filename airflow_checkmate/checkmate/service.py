"""CheckMateService: the operations the registry enables (list, show, cancel, reset, clean, unlock).

The registry finds tasks; their storage is the truth, so every operation reads the stored state
before acting. Operations that run stage code (``cancel()``) or need the templates (``reset``) rebuild
the task from its stored ``checkmate_factory``, imported only when the allow-list admits it.
Destructive batch operations default to a dry run that reports what would happen.
"""

from collections.abc import Callable, Sequence
from typing import Any

from airflow_checkmate.checkmate.engine import CheckMateEngine
from airflow_checkmate.checkmate.exceptions import (
    BindException,
    PersistenceDataNotFoundException,
    TaskEngineException,
)
from airflow_checkmate.checkmate.io.base import TaskIO
from airflow_checkmate.checkmate.lease import HOST, acquire, parse_lease
from airflow_checkmate.checkmate.models import TaskEngineState
from airflow_checkmate.checkmate.registry import TaskRecord, TaskRegistry
from airflow_checkmate.checkmate.render import render_stored
from airflow_checkmate.checkmate.service_tasks import (
    ERRORS,
    Outcome,
    TaskDetails,
    TaskNotFound,
    cancel_task,
    rebuild_task,
    user,
)
from airflow_checkmate.checkmate.snapshot import snapshot_of
from airflow_checkmate.checkmate.status import FINISHED_STATUSES, StageStatus
from airflow_checkmate.checkmate.store import TaskStore
from airflow_checkmate.checkmate.stored_reset import reset_stored

__all__ = ["ERRORS", "FINISHED", "CheckMateService", "Outcome", "TaskDetails", "TaskNotFound"]

S = StageStatus
FINISHED = tuple(sorted(FINISHED_STATUSES))


class CheckMateService:
    """Operations on managed tasks.

    :param registry: the task registry.
    :param io: the configured storage; tasks whose row names another base URL get their own backend.
    :param allowed_factories: allow-list patterns for rebuilding tasks (default: the setting).
    """

    def __init__(
        self, registry: TaskRegistry, io: TaskIO | None = None, allowed_factories: Sequence[str] | None = None
    ) -> None:
        self.registry = registry
        self.io = io
        self.allowed_factories = allowed_factories
        self._ios: dict[str, TaskIO] = {}

    def record(self, task_id: str) -> TaskRecord:
        found = self.registry.get(task_id)
        if found is None:
            raise TaskNotFound(f"no task {task_id!r} in the registry {self.registry.url}; see `checkmate list`")
        return found

    def io_for(self, record: TaskRecord) -> TaskIO:
        """The storage holding the task's state."""
        if self.io is not None and self.io.base_url == record.base_url:
            return self.io
        if record.base_url not in self._ios:
            if ":***@" in record.base_url:
                raise TaskEngineException(
                    f"task {record.task_id} is stored at {record.base_url}, which needs a password: point the "
                    "configuration (connection or CHECKMATE_BASE_URL) at that storage"
                )
            self._ios[record.base_url] = TaskIO.from_base_url(record.base_url)
        return self._ios[record.base_url]

    def show(self, task_id: str) -> TaskDetails:
        return self.details(self.record(task_id))

    def details(self, record: TaskRecord) -> TaskDetails:
        """The task's row, stored progress and lock holder."""
        store = self.store(record)
        raw = store.io.lease_read(store.lock_obj)
        lease = parse_lease(raw, store.lock_obj) if raw else None
        return TaskDetails(record, snapshot_of(store), lease, lease.holder_state() if lease else None)

    def store(self, record: TaskRecord) -> TaskStore:
        """The task's stored objects, on the storage its row names."""
        return TaskStore(self.io_for(record), record.task_id)

    def dump(self, task_id: str) -> str:
        """``dump_stages`` of the stored state (takes no lock).

        A task with an allow-listed factory is rebuilt for its templates; any other is shown as stored JSON.
        """
        record = self.record(task_id)
        if not record.checkmate_factory:
            return render_stored(self.io_for(record), task_id)
        try:
            built = self.rebuild(record)
        except ERRORS as exc:
            return render_stored(self.io_for(record), task_id, f"(shown as stored JSON: {exc})")
        engine: CheckMateEngine[Any, Any] = CheckMateEngine(built.io, task_id, built.templates, no_lock=True)
        with engine:
            return engine.dump_stages(source="persistence", color=None)

    def rebuild(self, record: TaskRecord) -> CheckMateEngine[Any, Any]:
        """The task built again by its factory (allow-listed), on the storage its row names."""
        return rebuild_task(record, self.io_for(record), self.registry, self.allowed_factories)

    def cancel(self, task_ids: Sequence[str], dry_run: bool = True, reason: str = "") -> list[Outcome]:
        """Cancel tasks: a live holder is asked to stop at its next stage boundary; others are canceled here."""
        who = f"`checkmate cancel` by {user()}@{HOST}"
        reason = f"{reason} ({who})" if reason else f"canceled with {who}"
        return [
            self._each(
                task_id, "cancel", lambda task_id=task_id: cancel_task(self, self.record(task_id), dry_run, reason)
            )
            for task_id in task_ids
        ]

    @staticmethod
    def _each(task_id: str, action: str, run: Callable[..., Outcome]) -> Outcome:
        """One task of a batch: its failure is reported as an outcome, not raised, so the batch goes on."""
        try:
            return run()
        except ERRORS as exc:
            return Outcome(task_id, action, False, f"failed: {exc}", failed=True)

    def reset(self, task_id: str, stage_name: str | None = None) -> Outcome:
        """Make an ERROR/CANCELED task runnable again, or restart it from ``stage_name``, whatever its status.

        Only stored statuses are rewritten (see :func:`reset_stored`): no factory, no stage class is needed.
        """
        record = self.record(task_id)
        io = self.io_for(record)
        try:
            keeper, _ = acquire(io, TaskStore(io, task_id).lock_obj, None, "checkmate reset")
        except BindException as exc:
            raise TaskEngineException(
                f"task {task_id} is held by a running process, so it was not reset ({exc}); cancel it first "
                f"(`checkmate cancel {task_id} --no-dry-run`) or wait for it to stop"
            ) from exc
        try:
            what, status = reset_stored(io, task_id, stage_name, keeper.fence, "`checkmate reset`")
        finally:
            keeper.release()
        self._sync_row(task_id, io)
        return Outcome(task_id, "reset", True, f"{what}; the task is {status} and resumes when it next runs")

    def _sync_row(self, task_id: str, io: TaskIO) -> None:
        snapshot = snapshot_of(TaskStore(io, task_id))
        if snapshot is not None:
            current = snapshot.current
            self.registry.update(
                task_id,
                status=str(snapshot.status),
                stages_done=snapshot.done,
                stages_total=len(snapshot.stages),
                current_stage=current.stage_name if current else None,
                lock_holder=None,
            )

    def clean(
        self,
        records: Sequence[TaskRecord],
        dry_run: bool = True,
        statuses: Sequence[S] = FINISHED,
        force: bool = False,
    ) -> list[Outcome]:
        """Remove the stored state of tasks whose stored status is one of ``statuses``; rows are marked cleaned.

        ``force``: whatever the status (RETRY, ERROR, RUNNING left by a dead process) and even if the stored
        objects no longer parse; a task held by a live process is still skipped.
        """
        return [self._each(r.task_id, "clean", lambda r=r: self._clean(r, dry_run, statuses, force)) for r in records]

    def _clean(self, record: TaskRecord, dry_run: bool, statuses: Sequence[S], force: bool = False) -> Outcome:
        task_id, store = record.task_id, self.store(record)
        snapshot = None if force else snapshot_of(store)
        if snapshot is not None and snapshot.status not in statuses:
            return Outcome(task_id, "clean", False, f"skipped: it is {snapshot.status}")
        if dry_run:
            return Outcome(task_id, "clean", False, f"dry run: would remove {len(store.objects())} stored object(s)")
        try:
            keeper, _ = acquire(store.io, store.lock_obj, None, "checkmate clean")
        except BindException as exc:
            return Outcome(task_id, "clean", False, f"skipped: {exc}")
        try:
            snapshot = None if force else snapshot_of(store)  # again, under the lock
            if snapshot is not None and snapshot.status not in statuses:
                return Outcome(task_id, "clean", False, f"skipped: it became {snapshot.status}")
            state: TaskEngineState[Any] | None = None
            try:
                state = store.read_record()
            except PersistenceDataNotFoundException:
                if not force:
                    raise
            removed = store.remove(state, keeper.fence)
        finally:
            keeper.release()
        store.prune()
        self.registry.update(task_id, cleaned=True, lock_holder=None)
        return Outcome(task_id, "clean", True, f"removed {removed} stored object(s); row marked cleaned")

    def unlock(self, task_id: str, force: bool = False) -> Outcome:
        """Break a task's lock; without ``force`` only report its holder."""
        details = self.show(task_id)
        if details.lease is None:
            return Outcome(task_id, "unlock", False, "not locked")
        holder = f"held by {details.lease.describe()} ({details.holder_state})"
        if not force:
            return Outcome(task_id, "unlock", False, f"{holder}; pass --force to break the lock")
        store = self.store(details.record)
        io, lock = store.io, store.lock_obj
        raw = io.lease_read(lock)
        if raw is None or parse_lease(raw, lock).token != details.lease.token or not io.lease_swap(lock, raw, None):
            return Outcome(task_id, "unlock", False, "the lock changed hands meanwhile; look again")
        self.registry.update(task_id, lock_holder=None)
        note = "; that process is alive: its next write will be refused" if details.holder_state == "live" else ""
        return Outcome(task_id, "unlock", True, f"lock broken ({holder}){note}")
