"""Binding: take the task's lock, load its stored state (or create it), check it matches; and unbind."""

import logging
from types import TracebackType
from typing import Any, Literal

from pydantic import ValidationError
from typing_extensions import Self

from airflow_checkmate.checkmate import names
from airflow_checkmate.checkmate.checkpoint import CheckpointMixin
from airflow_checkmate.checkmate.core import STAGE, STAGE_RESULT, S
from airflow_checkmate.checkmate.exceptions import (
    PersistenceDataNotFoundException,
    TaskEngineException,
    UnparsableStageState,
)
from airflow_checkmate.checkmate.identity import (
    check_definition,
    check_owner,
    comparable_class_path,
    inputs_fingerprint,
    way_out,
)
from airflow_checkmate.checkmate.lease import LeaseRecord, acquire
from airflow_checkmate.checkmate.models import TaskEngineState, TaskEvent
from airflow_checkmate.checkmate.store import StoredTask

log = logging.getLogger("airflow_checkmate.checkmate.engine")


class BindingMixin(CheckpointMixin[STAGE, STAGE_RESULT]):
    """bind/unbind and ``with engine:``; loading, checking and removing the task's stored objects."""

    # ----------------------------------------------------------------- bind / unbind

    def __enter__(self) -> Self:
        self.bind()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]:
        if self._bound:
            self.unbind()
        return False

    def bind(self) -> None:
        """Bind to the task: take the lock, load the stored state (or create it), check it matches."""
        if self._bound:
            raise TaskEngineException(f"engine for task {self.task_id!r} is already bound")
        stage_names = self.task_state.stage_names
        for name in stage_names:
            names.validate_stage_name(name)
        if len(set(stage_names)) != len(stage_names):
            dupes = sorted({n for n in stage_names if stage_names.count(n) > 1})
            raise TaskEngineException(f"stage names must be unique; repeated: {', '.join(dupes)}")
        if self.force_create and self.store.exists():
            raise self._exists_error()
        taken_over: LeaseRecord | None = None
        if not self.no_lock:
            self._keeper, taken_over = acquire(
                self.io, self.lock_obj_name, self.bind_lock_timeout, self.owner, self.instance_key, self.try_number
            )
        try:
            self._cancel_event.clear()
            stored = self.store.load()  # one pass over the task's objects
            stored = self._load_task_state(stored, taken_over)
            self._load_stages(stored)
            status = self.status  # validates the loaded sequence
        except BaseException:
            self._restore_templates()
            if self._keeper is not None:
                self._keeper.release()
                self._keeper = None
            raise
        self._bound = True
        if self._keeper is not None:
            self._keeper.start(on_tick=self._poll_cancel, on_lost=self._lease_lost)
        log.info("bound task %s (%d stages, status %s)", self.task_id, len(stage_names), status)

    def _exists_error(self) -> TaskEngineException:
        return TaskEngineException(
            f"force_create: task {self.task_id!r} already has stored state at "
            f"{self.store.url(self.store.task_obj)}; nothing was changed. Use a new task "
            "id, or bind without force_create to resume it"
        )

    def _load_task_state(self, stored: StoredTask, taken_over: LeaseRecord | None) -> StoredTask:
        """Adopt the stored record (or create one); return what is stored once a dead cleaning is finished."""
        fresh = self.task_state  # pristine: built by __init__, or restored by the last unbind or failed bind
        fresh.owner = dict(self.task_owner)
        # A binder that declares no inputs (a tool rebuilding the task, a plain engine) is not compared on them
        fresh.inputs_fingerprint = inputs_fingerprint(self.inputs) if self.inputs else None
        sharing = False
        record = stored.record
        if record is not None:
            if self.force_create:
                raise self._exists_error()
            if record.cleaning:
                log.warning("task %s was being cleaned when its last holder died; finishing that", self.task_id)
                self.store.remove(record, self._fence)
                stored = StoredTask(None)
            else:
                sharing = self._check_same_task(record, fresh)
                record.stage_templates = fresh.stage_templates
                self.task_state = record
        elif stored.orphans:
            raise PersistenceDataNotFoundException(
                f"task {self.task_id!r} has stage objects but no task record: {stored.orphans[:5]}; they were "
                "left in place. Inspect and remove them, or use another task id"
            )
        task_stored = stored.record is not None
        changed = self._adopt_definition(fresh) if task_stored else True
        changed = changed or taken_over is not None
        if not task_stored:
            self.task_state = fresh
            self.task_state.history.append(TaskEvent(event="created", message=f"{len(fresh.stage_names)} stages"))
        if sharing:  # the record keeps the owner (and labels) of the run that created it
            who = ", ".join(f"{k}={v}" for k, v in sorted(self.task_owner.items()))
            self.task_state.history.append(TaskEvent(event="shared", message=f"bound by {who}"))
            changed = True
        elif self.labels and {**self.task_state.labels, **self.labels} != self.task_state.labels:
            self.task_state.labels = {**self.task_state.labels, **self.labels}
            changed = True
        self.previous_try = dict(self.task_state.last_try)
        if self.try_mark and self.try_mark != self.task_state.last_try:
            self.task_state.last_try = dict(self.try_mark)
            changed = True
        if taken_over is not None:
            newer = taken_over.superseded_by(self.instance_key, self.try_number)
            how = f"try {self.try_number} took over at once from try {taken_over.try_number}: " if newer else ""
            self.task_state.history.append(
                TaskEvent(event="lock takeover", message=f"{how}took over from {taken_over.describe()}")
            )
        if changed:
            self._write_task_state()
        return stored

    def _check_same_task(self, record: TaskEngineState[Any], fresh: TaskEngineState[Any]) -> bool:
        """Refuse another owner (unless shared) or another definition; True when sharing another's task."""
        if record.task_id != self.task_id:
            raise TaskEngineException(
                f"stored object {self.store.url(self.store.task_obj)} names task "
                f"{record.task_id!r}, not {self.task_id!r}; it was left in place"
            )
        sharing = check_owner(record, fresh.owner, self.shared)
        check_definition(record, fresh, comparable_class_path)
        return sharing

    def _adopt_definition(self, fresh: TaskEngineState[Any]) -> bool:
        """Record what a stored task lacks: its owner, fingerprints, inputs, or the definition after a reset."""
        record = self.task_state
        if record is fresh:
            return False
        changed = False
        start = record.redefine_from
        if start is not None or len(record.stage_fingerprints) != len(record.stage_names):
            keep = start if start is not None else 0
            if start is None:  # written before fingerprints were recorded: the checked names/classes match
                record.stage_fingerprints = fresh.stage_fingerprints[: len(record.stage_names)]
                keep = len(record.stage_names)
            record.stage_names = record.stage_names[:keep] + fresh.stage_names[keep:]
            record.stage_template_classes = record.stage_template_classes[:keep] + fresh.stage_template_classes[keep:]
            record.stage_fingerprints = record.stage_fingerprints[:keep] + fresh.stage_fingerprints[keep:]
            record.redefine_from = None
            changed = True
        if record.inputs_fingerprint is None and fresh.inputs_fingerprint is not None:
            record.inputs_fingerprint = fresh.inputs_fingerprint
            changed = True
        if not record.owner and fresh.owner:
            record.owner = dict(fresh.owner)
            changed = True
        return changed

    def _load_stages(self, stored: StoredTask) -> None:
        for stage in self.task_state.stage_templates:
            stage.bind_to_engine(self)
            raw = stored.stages.get(stage.stage_name)
            try:
                state = self.parse_stage(stage, raw) if raw is not None else None
            except PersistenceDataNotFoundException as exc:
                if not isinstance(exc.__cause__, ValidationError):
                    raise
                raise UnparsableStageState(f"{exc}.\n{way_out(self.task_id, stage.stage_name)}") from exc
            if state is None:
                stage.state.stage_name = stage.stage_name
                stage.state.status = S.CREATED
            else:
                stage.state = state

    def unbind(self, clean: bool = False) -> None:
        """Release the bind lock and restore the pristine templates.

        :param clean: also remove the task's stored objects, whatever the status. ``auto_cleanup``
            removes them only once the task is COMPLETE: a failed or canceled try keeps its
            checkpoints, so the next try resumes instead of running every stage again.
        """
        if not self._bound:
            raise TaskEngineException(f"engine for task {self.task_id!r} is not bound")
        keeper = self._keeper
        clean = clean or self.cleans_at_unbind
        try:
            if keeper is not None:
                keeper.stop()
            if clean:
                self.store.remove(self.task_state, self._fence)
            elif keeper is not None and not keeper.lost.is_set() and not self._desynced:  # only under the lease
                self._compact()
        finally:
            self._bound = False
            self._keeper = None
            self._restore_templates()
            if keeper is not None:
                keeper.release()
            if clean:
                self.store.prune()
        log.info("unbound task %s%s", self.task_id, " and removed its stored state" if clean else "")

    @property
    def cleans_at_unbind(self) -> bool:
        """Whether ``auto_cleanup`` removes the stored state at the next unbind: only a COMPLETE task's."""
        if not self.auto_cleanup or not self._bound or self._desynced:
            return False
        try:
            return self.status is S.COMPLETE
        except TaskEngineException:
            return False

    def _restore_templates(self) -> None:
        self.task_state = self._fresh_task_state()
        self._desynced = ""

    def _compact(self) -> None:
        """Shrink the task's stored checkpoints to its live objects while the lease is still held."""
        try:
            self.store.compact(self._fence)
        except Exception:  # the journal is compacted again at the next unbind, or when it grows past its bound
            log.warning("could not compact the stored state of task %s", self.task_id, exc_info=True)
