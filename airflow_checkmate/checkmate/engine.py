"""CheckMateEngine: binds a task to its stored state, runs stages in order, resumes where it stopped."""

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from colorama import Fore
from pydantic import BaseModel, ValidationError

from airflow_checkmate.checkmate import names
from airflow_checkmate.checkmate.exceptions import (
    LeaseLostException,
    PersistenceDataNotFoundException,
    StageInterrupted,
    TaskEngineException,
)
from airflow_checkmate.checkmate.io.base import Fence, TaskIO
from airflow_checkmate.checkmate.lease import LeaseKeeper, LeaseRecord, acquire
from airflow_checkmate.checkmate.models import TASK_SCHEMA_VERSION, BaseStageState, TaskEngineState, TaskEvent
from airflow_checkmate.checkmate.policy import AttemptPolicy, RetryPolicy
from airflow_checkmate.checkmate.render import render_stages, render_table
from airflow_checkmate.checkmate.stage import BaseStage
from airflow_checkmate.checkmate.status import StageStatus, check_sequence, overall_status

log = logging.getLogger(__name__)

STAGE = TypeVar("STAGE", bound=BaseStage[Any])
STAGE_RESULT = TypeVar("STAGE_RESULT")

S = StageStatus


def string_from_callable(obj: object) -> str:
    """``module.QualName`` of a class (or of an instance's class)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _json(model: BaseModel) -> bytes:
    """The model as JSON bytes, serialised once (no intermediate str: a large state is not copied again)."""
    return model.__pydantic_serializer__.to_json(model)


def _comparable_class_path(path: str) -> str:
    """Drop the per-path prefix Airflow gives modules of DAG files, so a moved DAG file still matches."""
    if path.startswith("unusual_prefix_"):
        _, _, rest = path[len("unusual_prefix_") :].partition("_")
        return rest
    return path


class CheckMateEngine(Generic[STAGE, STAGE_RESULT]):
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
    :param auto_cleanup: remove the task's stored objects at unbind, whatever the outcome.
    :param no_lock: skip the bind lock (read-only inspection, tests).
    :param force_create: this is a new task id; bind raises if objects are already stored for it.
    """

    def __init__(
        self,
        io: TaskIO,
        task_id: str | None = None,
        stage_templates: Sequence[STAGE] | None = None,
        retry_policy: RetryPolicy = RetryPolicy.NONE,
        max_attempts: int = 1,
        bind_lock_timeout: float | None = None,
        auto_cleanup: bool = False,
        no_lock: bool = False,
        force_create: bool = False,
    ) -> None:
        if not isinstance(io, TaskIO):
            raise TaskEngineException(f"io must be a TaskIO (e.g. TaskIO.from_base_url(url)), got {io!r}")
        if not stage_templates:
            raise TaskEngineException("a task needs at least one stage template")
        for template in stage_templates:
            self._check_template(template)
        if bind_lock_timeout is not None and bind_lock_timeout < 0:
            raise TaskEngineException(f"bind_lock_timeout must be None or >= 0, got {bind_lock_timeout}")
        self.io = io
        self.task_id = names.validate_task_id(task_id) if task_id is not None else names.new_task_id()
        self.policy = AttemptPolicy(retry_policy, max_attempts)
        self.bind_lock_timeout = bind_lock_timeout
        self.auto_cleanup = auto_cleanup
        self.no_lock = no_lock
        self.force_create = force_create
        self._templates: tuple[STAGE, ...] = tuple(stage_templates)
        self._stage_index = {t.stage_name: i for i, t in enumerate(self._templates)}
        self.task_state: TaskEngineState[STAGE] = self._fresh_task_state()
        self._keeper: LeaseKeeper | None = None
        self._bound = False
        self._desynced = ""
        self._cancel_event = threading.Event()
        self.owner = ""
        self.labels: dict[str, str] = {}
        self._in_stage_code = False
        self.interrupted: str = ""

    @staticmethod
    def _check_template(template: object) -> None:
        if not isinstance(template, BaseStage):
            raise TaskEngineException(f"stage templates must be BaseStage instances, got {template!r}")
        try:
            ZoneInfo(template.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise TaskEngineException(
                f"stage template {template.stage_name!r} has unknown timezone {template.timezone!r}; use an IANA "
                "name such as 'UTC'"
            ) from None
        state = template.state
        if state.status is not S.UNBOUND or state.attempts or state.history:
            raise TaskEngineException(
                f"stage template {template.stage_name!r} carries run state (status {state.status}, "
                f"{state.attempts} attempts); pass a fresh template"
            )

    def _fresh_task_state(self) -> TaskEngineState[STAGE]:
        return TaskEngineState(
            task_id=self.task_id,
            stage_names=[t.stage_name for t in self._templates],
            stage_template_classes=[string_from_callable(t) for t in self._templates],
            stage_templates=[t.model_copy(deep=True) for t in self._templates],
        )

    # ----------------------------------------------------------------- read-only views

    @property
    def retry_policy(self) -> RetryPolicy:
        return self.policy.retry_policy

    @property
    def max_attempts(self) -> int:
        return self.policy.max_attempts

    @property
    def stages(self) -> tuple[STAGE, ...]:
        """The engine's working stages (deep copies of the templates), read-only."""
        return tuple(self.task_state.stage_templates)

    @property
    def bound(self) -> bool:
        return self._bound

    @property
    def lock_obj_name(self) -> str:
        """The name of the task's lock object (``<task_id>/task.lock``)."""
        return names.lock_obj_name(self.task_id)

    @property
    def has_lockfile(self) -> bool:
        """Whether a lock object exists, bound or not; it does not prove a process is still running."""
        return self.io.exists(self.lock_obj_name)

    @property
    def lease(self) -> LeaseRecord | None:
        """The lease this engine holds while bound with a lock."""
        return self._keeper.record if self._keeper else None

    @property
    def status(self) -> StageStatus:
        """The overall task status; raises TaskEngineException if the stage sequence is invalid."""
        stages = self.task_state.stage_templates
        statuses = [s.state.status for s in stages]
        check_sequence(statuses, [s.stage_name for s in stages])
        return overall_status(statuses)

    @property
    def task_result(self) -> STAGE_RESULT | None:
        """The result of the most recently completed stage, or None if no stage is complete."""
        for stage in reversed(self.task_state.stage_templates):
            if stage.state.status is S.COMPLETE:
                return stage.state.result  # type: ignore[no-any-return]
        return None

    @property
    def cumulative_attempts(self) -> int:
        """The number of attempts over all stages."""
        return sum(s.state.attempts for s in self.task_state.stage_templates)

    @property
    def cancel_requested(self) -> bool:
        """True once a cancel was requested from outside; cheap enough to poll from stage code."""
        if not self._cancel_event.is_set() and self._bound and self._keeper is None:
            self._poll_cancel()
        return self._cancel_event.is_set()

    def _poll_cancel(self) -> None:
        if self.io.exists(names.cancel_obj_name(self.task_id)):
            self._cancel_event.set()

    # ----------------------------------------------------------------- bind / unbind

    def __enter__(self) -> "CheckMateEngine[STAGE, STAGE_RESULT]":
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
        task_obj = names.task_obj_name(self.task_id)
        if self.force_create and self.io.exists(task_obj):
            raise self._exists_error()
        taken_over: LeaseRecord | None = None
        if not self.no_lock:
            self._keeper, taken_over = acquire(self.io, self.lock_obj_name, self.bind_lock_timeout, self.owner)
        try:
            self._cancel_event.clear()
            stored = set(self.io.list(names.task_prefix(self.task_id)))
            self._load_task_state(stored, taken_over)
            self._load_stages(stored)
            self.status  # noqa: B018 - validates the loaded sequence
        except BaseException:
            self._restore_templates()
            if self._keeper is not None:
                self._keeper.release()
                self._keeper = None
            raise
        self._bound = True
        if self._keeper is not None:
            self._keeper.start(on_tick=self._poll_cancel)
        log.info("bound task %s (%d stages, status %s)", self.task_id, len(stage_names), self.status)

    def _exists_error(self) -> TaskEngineException:
        return TaskEngineException(
            f"force_create: task {self.task_id!r} already has stored state at "
            f"{self.io.build_url(names.task_obj_name(self.task_id))}; nothing was changed. Use a new task "
            "id, or bind without force_create to resume it"
        )

    def _load_task_state(self, stored: set[str], taken_over: LeaseRecord | None) -> None:
        task_obj = names.task_obj_name(self.task_id)
        fresh = self._fresh_task_state()
        if task_obj in stored:
            if self.force_create:
                raise self._exists_error()
            record = self._parse(task_obj, TaskEngineState, self.io.read_bytes(task_obj))
            if record.schema_version != TASK_SCHEMA_VERSION:
                raise PersistenceDataNotFoundException(
                    f"stored object {self.io.build_url(task_obj)} has schema version {record.schema_version}; "
                    f"this version of CheckMate reads version {TASK_SCHEMA_VERSION}. It was left in place: use "
                    "the CheckMate version that wrote it"
                )
            if record.cleaning:
                log.warning("task %s was being cleaned when its last holder died; finishing that", self.task_id)
                self._remove_stored(record, stored)
                stored.clear()
            else:
                self._check_same_task(record)
                record.stage_templates = fresh.stage_templates
                self.task_state = record
        else:
            leftovers = sorted(n for n in stored if n.endswith(names.STAGE_SUFFIX))
            if leftovers:
                raise PersistenceDataNotFoundException(
                    f"task {self.task_id!r} has stage objects but no {names.TASK_OBJECT}: {leftovers[:5]}; "
                    "they were left in place. Inspect and remove them, or use another task id"
                )
        changed = task_obj not in stored or taken_over is not None
        if task_obj not in stored:
            self.task_state = fresh
            self.task_state.history.append(TaskEvent(event="created", message=f"{len(fresh.stage_names)} stages"))
        if self.labels and {**self.task_state.labels, **self.labels} != self.task_state.labels:
            self.task_state.labels = {**self.task_state.labels, **self.labels}
            changed = True
        if taken_over is not None:
            self.task_state.history.append(
                TaskEvent(event="lock takeover", message=f"took over from {taken_over.describe()}")
            )
        if changed:
            self._write_task_state()

    def _check_same_task(self, record: TaskEngineState[Any]) -> None:
        mine = self.task_state
        same_names = record.stage_names == mine.stage_names
        same_classes = [_comparable_class_path(c) for c in record.stage_template_classes] == [
            _comparable_class_path(c) for c in mine.stage_template_classes
        ]
        if record.task_id == self.task_id and same_names and same_classes:
            return
        stored = ", ".join(f"{n}({c})" for n, c in zip(record.stage_names, record.stage_template_classes, strict=False))
        given = ", ".join(f"{n}({c})" for n, c in zip(mine.stage_names, mine.stage_template_classes, strict=True))
        raise TaskEngineException(
            f"task {self.task_id!r} is stored with other stages than the templates, so it would mix two "
            f"task definitions; nothing was changed.\n  stored: [{stored}]\n  given:  [{given}]\n"
            "Use a new task id for the new definition, or clean the old task (unbind(clean=True))"
        )

    def _load_stages(self, stored: set[str]) -> None:
        for stage in self.task_state.stage_templates:
            stage.bind_to_engine(self)
            state = self.read_stored_state(stage) if stage.obj_name in stored else None
            if state is None:
                stage.state.stage_name = stage.stage_name
                stage.state.status = S.CREATED
            else:
                stage.state = state

    def fresh_state(self, stage_name: str) -> BaseStageState[Any]:
        """A copy of the stage's template state, as a stage that was never started has it (CREATED)."""
        state: BaseStageState[Any] = self._templates[self._stage_index[stage_name]].state.model_copy(deep=True)
        state.stage_name, state.status = stage_name, S.CREATED
        return state

    def read_stored_state(self, stage: BaseStage[Any]) -> BaseStageState[Any] | None:
        """The stage's state as stored, or None if nothing is stored for it yet.

        Raises PersistenceDataNotFoundException (leaving the object in place) if it does not parse or
        belongs to another stage.
        """
        obj = stage.gen_obj_name(self)
        try:
            raw = self.io.read_bytes(obj)
        except PersistenceDataNotFoundException:
            if not self.io.exists(obj):
                return None
            raise
        state: BaseStageState[Any] = self._parse(obj, type(stage.state), raw)
        if state.stage_name != stage.stage_name or state.status is S.UNBOUND:
            raise PersistenceDataNotFoundException(
                f"stored object {self.io.build_url(obj)} holds stage {state.stage_name!r} with "
                f"status {state.status}, not stage {stage.stage_name!r}; it was left in place"
            )
        return state

    def _parse(self, obj: str, model: Any, raw: bytes) -> Any:
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "(document)"
            raise PersistenceDataNotFoundException(
                f"stored object {self.io.build_url(obj)} does not parse as {model.__name__} "
                f"({exc.error_count()} error(s); first at {where}: {first.get('msg')}); it was left in "
                "place. Restore it, or clean the task to start over"
            ) from exc

    def unbind(self, clean: bool = False) -> None:
        """Release the bind lock and restore the pristine templates.

        :param clean: also remove the task's stored objects (as ``auto_cleanup`` does).
        """
        if not self._bound:
            raise TaskEngineException(f"engine for task {self.task_id!r} is not bound")
        keeper = self._keeper
        try:
            if keeper is not None:
                keeper.stop()
            if clean or self.auto_cleanup:
                self._remove_stored(self.task_state, set(self.io.list(names.task_prefix(self.task_id))))
        finally:
            self._bound = False
            self._keeper = None
            self._restore_templates()
            if keeper is not None:
                keeper.release()
            if clean or self.auto_cleanup:
                self.io.prune(names.task_prefix(self.task_id))
        log.info("unbound task %s%s", self.task_id, " and removed its stored state" if clean else "")

    def _restore_templates(self) -> None:
        self.task_state = self._fresh_task_state()
        self._desynced = ""

    def _remove_stored(self, record: TaskEngineState[Any], stored: set[str]) -> None:
        """Remove the task's objects; ``cleaning`` is persisted first so a crash mid-way is finished later."""
        task_obj, lock_obj = names.task_obj_name(self.task_id), self.lock_obj_name
        if task_obj in stored:
            record.cleaning = True
            self.io.write(task_obj, _json(record), fence=self._fence)
        for obj in sorted(stored - {task_obj, lock_obj}):
            self.io.remove(obj, fence=self._fence)
        self.io.remove(task_obj, fence=self._fence)

    # ----------------------------------------------------------------- persistence

    @property
    def _fence(self) -> Fence | None:
        return self._keeper.fence if self._keeper is not None else None

    def _require_bound(self) -> None:
        if not self._bound:
            raise TaskEngineException(f"engine for task {self.task_id!r} is not bound; call bind() first")
        if self._desynced:
            raise TaskEngineException(self._desynced)
        if self._keeper is not None and self._keeper.lost.is_set():
            raise LeaseLostException(
                f"the bind lease of task {self.task_id!r} was taken over by another process; this engine "
                "must stop (unbind it)"
            )

    def _write_task_state(self) -> None:
        self.io.write(names.task_obj_name(self.task_id), _json(self.task_state), fence=self._fence)

    def _record_event(self, event: str, message: str) -> None:
        self.task_state.history.append(TaskEvent(event=event, message=message))
        self._write_task_state()

    def _persist_stage(self, stage: BaseStage[Any]) -> None:
        """Write one stage's state; on failure reload it so memory never claims what storage lacks."""
        try:
            self.io.write(stage.obj_name, _json(stage.state), fence=self._fence)
        except BaseException as exc:
            self._resync_stage(stage, exc)
            raise
        self.state_update_hook()

    def _resync_stage(self, stage: BaseStage[Any], cause: BaseException) -> None:
        try:
            state = self.read_stored_state(stage)
        except Exception:
            self._desynced = (
                f"task {self.task_id!r}: persisting stage {stage.stage_name!r} failed ({cause!r}) and its "
                "stored state could not be re-read; unbind and bind again"
            )
            return
        if state is None:
            stage.state = self.fresh_state(stage.stage_name)
        else:
            stage.state = state

    def state_update_hook(self) -> None:
        """Called after every persisted stage update; subclasses override it (the managed task does)."""

    # ----------------------------------------------------------------- execution

    def _first_incomplete(self) -> int:
        for index, stage in enumerate(self.task_state.stage_templates):
            if stage.state.status is not S.COMPLETE:
                return index
        return len(self.task_state.stage_templates)

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
        start = self._first_incomplete()
        if status in (S.ERROR, S.CANCELED):
            stage = stages[start]
            raise TaskEngineException(
                f"task {self.task_id!r} is {status}: stage {stage.stage_name!r} ended {stage.state.status} "
                f"after {stage.state.attempts} attempt(s). Call engine.reset() to run it again, or "
                f"engine.reset(stage_name=...) to restart from an earlier stage"
            )
        total = len(stages)
        for index in range(start, total):
            stage = stages[index]
            self._stage_boundary()
            previous = stages[index - 1].state.model_copy(deep=True) if index else stage.state
            self._run_stage(stage, index, total, previous, strict_recovery)

    def _cancel_pending(self) -> bool:
        """A cancel request stands: flagged (by the lease thread or a poll) and still stored.

        Checking the object too means a flag raised just before a cancel removed it is not honoured twice.
        """
        self._poll_cancel()
        if self._cancel_event.is_set() and not self.io.exists(names.cancel_obj_name(self.task_id)):
            self._cancel_event.clear()
        return self._cancel_event.is_set()

    def interrupt(self, reason: str) -> None:
        """Stop the run promptly: raise StageInterrupted into running stage code, or at the next boundary.

        Meant for a signal handler in the thread that runs :meth:`execute` (Airflow calls ``on_kill``
        from its SIGTERM handler): when stage code is running, the exception is raised right here and
        so surfaces inside the stage; while the engine itself is writing, it is deferred to the next
        stage boundary so no write is torn. ``interrupted`` keeps the reason.
        """
        self.interrupted = reason or "interrupted"
        if self._in_stage_code and threading.current_thread() is threading.main_thread():
            self._in_stage_code = False
            raise StageInterrupted(self.interrupted)

    def _stage_boundary(self) -> None:
        self._require_bound()
        if self.interrupted:
            raise StageInterrupted(self.interrupted)
        if self._cancel_pending():
            reason = "cancel requested"
            with contextlib.suppress(PersistenceDataNotFoundException):
                reason = f"cancel requested: {self.io.read(names.cancel_obj_name(self.task_id))[:500]}"
            self._cancel_from(self._first_incomplete(), reason)
            raise TaskEngineException(f"task {self.task_id!r} was canceled ({reason})")

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
            self._in_stage_code = True
            try:
                stage.execute_stage(previous)
            finally:
                self._in_stage_code = False
        except BaseException as exc:
            self._stage_failed(stage, exc, where, begin)
            raise  # _stage_failed raises for Exceptions; others (KeyboardInterrupt...) propagate as is
        end = time.time()
        stage.update_status(f"completed in {end - begin:.3f} s", S.COMPLETE, begin, end)
        log.info("%s: COMPLETE in %.3f s (attempt %d)", where, end - begin, state.attempts)

    def _stage_failed(self, stage: BaseStage[Any], exc: BaseException, where: str, begin: float) -> None:
        """Roll back, then move the stage to CANCELED, RETRY or ERROR and raise what the caller sees."""
        state = stage.state
        error = f"{type(exc).__name__}: {exc}"
        if self._cancel_pending():
            self._rollback(stage)
            self._cancel_from(self._first_incomplete(), f"canceled while running ({error})")
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

    # ----------------------------------------------------------------- cancel and reset

    def cancel(self) -> None:
        """Cancel the task: the first incomplete stage and all after it become CANCELED.

        That stage's ``cancel()`` runs once for cleanup. Raises TaskEngineException if the task is
        already COMPLETE, ERROR or CANCELED.
        """
        self._require_bound()
        status = self.status
        if status in (S.COMPLETE, S.ERROR, S.CANCELED):
            raise TaskEngineException(f"cannot cancel task {self.task_id!r}: it is already {status}")
        self._cancel_from(self._first_incomplete(), "canceled")

    def _cancel_from(self, index: int, message: str) -> None:
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
        first.update_status(message + note, S.CANCELED, begin, time.time())
        for stage in stages[index + 1 :]:
            stage.update_status(f"canceled with the task ({message})", S.CANCELED, begin, time.time())
        self.io.remove(names.cancel_obj_name(self.task_id), fence=self._fence)
        self._cancel_event.clear()
        self._record_event("canceled", f"at stage {first.stage_name!r}: {message}{note}")
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
        frontier = self._first_incomplete()
        now = time.time()
        if stage_name is None:
            index = next((i for i, s in enumerate(stages) if s.state.status in (S.ERROR, S.CANCELED)), None)
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
        for stage, status, message in reversed(plan):
            self._reset_stage(stage, status, message, now, keep_state=stage_name is None)
        self.io.remove(names.cancel_obj_name(self.task_id), fence=self._fence)
        self._cancel_event.clear()
        self._record_event("reset", f"from stage {stages[index].stage_name!r}")
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
        stage._change(f"{message} (was {old.status}, {old.attempts} attempt(s))", status, now, now, reset=True)

    # ----------------------------------------------------------------- inspection

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
            elif stored.model_dump() != stage.state.model_dump():
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

    @staticmethod
    def request_cancel(io: TaskIO, task_id: str, reason: str = "") -> None:
        """Ask whichever process runs ``task_id`` to cancel it at its next stage boundary.

        Needs no lock: it only writes the task's cancel request; the holder does the cancel and runs
        the stage's ``cancel()`` cleanup.
        """
        names.validate_task_id(task_id)
        if not io.exists(names.task_obj_name(task_id)):
            raise TaskEngineException(f"no stored task {task_id!r} at {io.base_url}; nothing to cancel")
        io.write(names.cancel_obj_name(task_id), reason or "requested")
