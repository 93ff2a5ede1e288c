"""Service operations on one task that rebuild it from its factory (cancel, dump), and their outcome types.

A task is rebuilt only by its recorded factory, imported only when the allow-list admits it. Cancel:
a live holder is asked to stop at its next stage boundary; a task nobody holds is rebuilt and canceled
here, so its stage's ``cancel()`` cleanup runs; failing that, a request is left for whoever runs it next.
"""

import contextlib
import getpass
import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_checkmate.checkmate.engine import CheckMateEngine
from airflow_checkmate.checkmate.exceptions import (
    BindException,
    PersistenceDataNotFoundException,
    TaskEngineException,
    TaskIOException,
)
from airflow_checkmate.checkmate.factory import load_factory
from airflow_checkmate.checkmate.io.base import TaskIO
from airflow_checkmate.checkmate.lease import LeaseRecord
from airflow_checkmate.checkmate.managed import CheckMate
from airflow_checkmate.checkmate.registry import TaskRecord, TaskRegistry
from airflow_checkmate.checkmate.snapshot import TaskSnapshot
from airflow_checkmate.checkmate.stage import BaseStage
from airflow_checkmate.checkmate.status import TERMINAL_STATUSES

if TYPE_CHECKING:
    from airflow_checkmate.checkmate.service import CheckMateService

#: What an operation on one task may fail with, reported to the user as that task's outcome.
ERRORS = (TaskEngineException, TaskIOException, PersistenceDataNotFoundException, BindException)


class TaskNotFound(TaskEngineException):
    """The registry has no row for a task id."""


@dataclass
class Outcome:
    """What an operation did (or, in a dry run, would do) to one task."""

    task_id: str
    action: str
    done: bool
    message: str
    failed: bool = False


@dataclass
class TaskDetails:
    """A task's registry row, its stored progress and its lock holder (``holder_state``: live/expired/dead)."""

    record: TaskRecord
    snapshot: TaskSnapshot | None
    lease: LeaseRecord | None
    holder_state: str | None


def rebuild_task(
    record: TaskRecord, io: TaskIO, registry: TaskRegistry, allowed: Sequence[str] | None
) -> CheckMateEngine[Any, Any]:
    """The task built again by its recorded factory (allow-listed: only then is it imported), on ``io``."""
    if not record.checkmate_factory:
        raise TaskEngineException(
            f"task {record.task_id} has no importable checkmate_factory recorded, so it cannot be rebuilt"
        )
    factory = load_factory(record.checkmate_factory, allowed)
    kwargs = dict(record.factory_kwargs)
    params = inspect.signature(factory).parameters
    if "task_id" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs["task_id"] = record.task_id
    built = factory(**kwargs)
    if isinstance(built, CheckMateEngine):
        if built.task_id != record.task_id or built.io.base_url != io.base_url:
            raise TaskEngineException(
                f"checkmate_factory {record.checkmate_factory} built task {built.task_id} at "
                f"{built.io.base_url}, not {record.task_id} at {io.base_url}; accept a task_id argument"
            )
        return built
    if isinstance(built, Sequence) and built and all(isinstance(s, BaseStage) for s in built):
        return CheckMate(
            record.checkmate_factory,
            list(built),
            task_id=record.task_id,
            description=record.description,
            queue=record.queue,
            tags=record.tags,
            io=io,
            registry=registry,
            factory_kwargs=record.factory_kwargs,
        )
    raise TaskEngineException(
        f"checkmate_factory {record.checkmate_factory} returned {type(built).__name__}, not a CheckMate or stages"
    )


def cancel_task(service: "CheckMateService", record: TaskRecord, dry_run: bool, reason: str) -> Outcome:
    """Cancel one task: ask its live holder, else rebuild it and cancel it here, else leave a request."""
    details = service.details(record)
    status = details.snapshot.status if details.snapshot else None
    if status is None or status in TERMINAL_STATUSES:
        return Outcome(record.task_id, "cancel", False, f"skipped: it is {status or 'not stored'}")
    holder = details.lease.describe() if details.lease and details.holder_state == "live" else ""
    if dry_run:
        return Outcome(record.task_id, "cancel", False, f"dry run: would {cancel_plan(service, record, holder)}")
    io = service.io_for(record)
    if not holder:
        try:
            engine = service.rebuild(record)
        except Exception as exc:  # the factory is user code: whatever it raises, leave a request
            CheckMateEngine.request_cancel(io, record.task_id, reason)
            message = f"cancel requested; it takes effect, running cancel(), when the task next runs ({exc})"
            return Outcome(record.task_id, "cancel", True, message)
        engine.bind_lock_timeout, engine.owner = None, "checkmate cancel"
        try:
            with engine:
                if engine.status in TERMINAL_STATUSES:
                    return Outcome(record.task_id, "cancel", False, f"skipped: it is {engine.status}")
                stage = engine.stages[engine.first_incomplete()].stage_name
                engine.cancel(reason)
            return Outcome(record.task_id, "cancel", True, f"canceled at stage {stage!r}; its cancel() ran")
        except BindException as exc:  # a worker took it meanwhile
            holder = str(exc)
    CheckMateEngine.request_cancel(io, record.task_id, reason)
    return Outcome(
        record.task_id,
        "cancel",
        True,
        f"cancel requested; {holder or 'the holder'} stops at its next stage boundary and runs cancel()",
    )


def cancel_plan(service: "CheckMateService", record: TaskRecord, holder: str) -> str:
    """What ``cancel_task`` will do, in its words: the dry run imports the factory (allow-listed) but calls nothing."""
    if holder:
        return f"request a cancel; {holder} stops at its next stage boundary and runs cancel()"
    try:
        if not record.checkmate_factory:
            raise TaskEngineException("no importable checkmate_factory is recorded")
        load_factory(record.checkmate_factory, service.allowed_factories)
    except Exception as exc:  # importing a module is user code: report whatever it raises
        return f"request a cancel; it takes effect, running cancel(), when the task next runs ({exc})"
    return f"rebuild it with {record.checkmate_factory}, cancel it here and run its cancel()"


def user() -> str:
    """Who runs the command, recorded with a cancel (the uid where no name is known, as in some containers)."""
    with contextlib.suppress(KeyError, OSError):
        return getpass.getuser()
    return f"uid {os.getuid()}"
