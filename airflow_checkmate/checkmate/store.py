"""TaskStore: the one owner of how a task is stored (object names, formats, parsing and its errors).

The engine, service, rendering, CLI and UI read and write a task only through it: the record
(``task.json``, with ``schema_version``), one object per started stage, the cancel request. Each write
is one ``TaskIO.commit``, ordered so that every prefix of it is a valid task. An object that does not
parse raises PersistenceDataNotFoundException naming it, and is left in place; nothing read is executed.
"""

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from airflow_checkmate.checkmate import names
from airflow_checkmate.checkmate.exceptions import PersistenceDataNotFoundException, TaskEngineException
from airflow_checkmate.checkmate.io.base import Fence, TaskIO
from airflow_checkmate.checkmate.models import (
    TASK_SCHEMA_VERSION,
    BaseStageState,
    StageStateHistoryEntry,
    TaskEngineState,
)
from airflow_checkmate.checkmate.status import StageStatus

MODEL = TypeVar("MODEL", bound=BaseModel)
STATE = TypeVar("STATE", bound=BaseStageState[Any])
#: One change of a checkpoint: an object's new bytes, or None to remove it.
Write = tuple[str, bytes | None]


def to_json(model: BaseModel) -> bytes:
    """The model as JSON bytes, serialised once (no intermediate str: a large state is not copied again)."""
    return model.__pydantic_serializer__.to_json(model)


def _stored_version(raw: bytes) -> object:
    """The ``schema_version`` a stored record claims (the current one if it claims none or is not JSON)."""
    try:
        return json.loads(raw).get("schema_version", TASK_SCHEMA_VERSION)
    except (ValueError, AttributeError):
        return TASK_SCHEMA_VERSION


class StageHeader(BaseModel):
    """What a stored stage says of itself whatever its state class: name, status, history."""

    model_config = ConfigDict(extra="ignore")

    stage_name: str
    status: StageStatus
    history: list[StageStateHistoryEntry] = []


@dataclass
class StoredTask:
    """A task's objects as one ``read_prefix`` found them: the parsed record and the raw stage objects."""

    record: TaskEngineState[Any] | None
    stages: dict[str, bytes] = field(default_factory=dict)
    objects: frozenset[str] = frozenset()
    #: Stage objects found without a task record (a task is never stored that way: they are refused).
    orphans: list[str] = field(default_factory=list)


class TaskStore:
    """A task's stored objects under ``<task_id>/`` in ``io``."""

    def __init__(self, io: TaskIO, task_id: str) -> None:
        self.io = io
        self.task_id = names.validate_task_id(task_id)
        self.prefix = names.task_prefix(task_id)
        self.task_obj = names.task_obj_name(task_id)
        self.lock_obj = names.lock_obj_name(task_id)
        self.cancel_obj = names.cancel_obj_name(task_id)

    def stage_obj(self, stage_name: str) -> str:
        """The object that holds a stage's state."""
        return names.stage_obj_name(self.task_id, stage_name)

    def url(self, obj: str) -> str:
        return self.io.build_url(obj)

    # ----------------------------------------------------------------- parsing

    def parse(self, obj: str, model: type[MODEL], raw: bytes) -> MODEL:
        """``raw`` as ``model``; raise PersistenceDataNotFoundException naming the object if it does not parse."""
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "(document)"
            raise PersistenceDataNotFoundException(
                f"stored object {self.url(obj)} does not parse as {model.__name__} ({exc.error_count()} "
                f"error(s); first at {where}: {first.get('msg')}); it was left in place. Restore it, or "
                "clean the task to start over"
            ) from exc

    def parse_record(self, raw: bytes) -> TaskEngineState[Any]:
        """The task record; one of another ``schema_version`` is refused as such, whatever else it holds."""
        try:
            record = self.parse(self.task_obj, TaskEngineState, raw)
            version: object = record.schema_version
        except PersistenceDataNotFoundException:
            version = _stored_version(raw)
            if version == TASK_SCHEMA_VERSION:
                raise
        if version != TASK_SCHEMA_VERSION:
            raise PersistenceDataNotFoundException(
                f"stored object {self.url(self.task_obj)} has format (schema) version {version!r}; this version "
                f"of CheckMate reads version {TASK_SCHEMA_VERSION}. It was left in place: use the CheckMate "
                "version that wrote it, or clean the task to start over"
            )
        return record

    def parse_json(self, obj: str, raw: bytes) -> dict[str, Any]:
        """A stored object as a plain JSON object (for views that have no state class at hand)."""
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise PersistenceDataNotFoundException(
                f"stored object {self.url(obj)} is not JSON ({exc}); it was left in place"
            ) from exc
        if not isinstance(doc, dict):
            raise PersistenceDataNotFoundException(f"stored object {self.url(obj)} is not a JSON object")
        return doc

    def parse_stage(
        self, stage_name: str, model: type[STATE], raw: bytes, fresh: Callable[[str], BaseStageState[Any]]
    ) -> BaseStageState[Any]:
        """A stored stage as ``model``; ``fresh(stage_name)`` gives the template state a CREATED stage takes.

        A CREATED stage (never started, or reset) holds only its history: it takes its template's state,
        even when the stored fields no longer parse as ``model``. A stage stored under another name (or
        UNBOUND) is refused.
        """
        obj = self.stage_obj(stage_name)
        try:
            state: BaseStageState[Any] = self.parse(obj, model, raw)
        except PersistenceDataNotFoundException:
            try:
                header = StageHeader.model_validate_json(raw)
            except ValidationError:
                header = None
            if header is None or header.status is not StageStatus.CREATED or header.stage_name != stage_name:
                raise
            state = fresh(stage_name)
            state.history = header.history
            return state
        if state.stage_name != stage_name or state.status is StageStatus.UNBOUND:
            raise PersistenceDataNotFoundException(
                f"stored object {self.url(obj)} holds stage {state.stage_name!r} with status {state.status}, "
                f"not stage {stage_name!r}; it was left in place"
            )
        if state.status is StageStatus.CREATED:
            created = fresh(stage_name)
            created.history = state.history
            return created
        return state

    # ----------------------------------------------------------------- reading

    def load(self) -> StoredTask:
        """Every object of the task in one ``read_prefix`` pass, the record parsed (None if absent)."""
        found = self.io.read_prefix(self.prefix)
        raw_record = found.get(self.task_obj)
        record = self.parse_record(raw_record) if raw_record is not None else None
        by_obj = {self.stage_obj(n): n for n in record.stage_names} if record is not None else {}
        stages = {by_obj[obj]: raw for obj, raw in found.items() if obj in by_obj}
        orphans = [] if record is not None else sorted(o for o in found if o.endswith(names.STAGE_SUFFIX))
        return StoredTask(record, stages, frozenset(found), orphans)

    def read(self, obj: str) -> bytes | None:
        """An object's bytes, or None if it is not stored."""
        try:
            return self.io.read_bytes(obj)
        except PersistenceDataNotFoundException:
            if self.io.exists(obj):
                raise
            return None

    def read_record(self) -> TaskEngineState[Any] | None:
        raw = self.read(self.task_obj)
        return None if raw is None else self.parse_record(raw)

    def read_stage(self, stage_name: str) -> bytes | None:
        return self.read(self.stage_obj(stage_name))

    def exists(self) -> bool:
        return self.io.exists(self.task_obj)

    def objects(self) -> list[str]:
        """The names of every stored object of the task, sorted."""
        return self.io.list(self.prefix)

    # ----------------------------------------------------------------- cancel requests

    def cancel_requested(self) -> bool:
        return self.io.exists(self.cancel_obj)

    def cancel_reason(self) -> str | None:
        """The stored cancel request's text, or None if there is none."""
        raw = self.read(self.cancel_obj)
        return None if raw is None else raw.decode("utf-8", errors="replace")

    def request_cancel(self, reason: str) -> None:
        """Store a cancel request (needs no lock: the holder acts on it at its next stage boundary)."""
        if not self.exists():
            raise TaskEngineException(f"no stored task {self.task_id!r} at {self.io.base_url}; nothing to cancel")
        self.io.commit([(self.cancel_obj, (reason or "requested").encode())])

    def cancel_removal(self) -> Write:
        """The checkpoint entry that withdraws a cancel request (a no-op when there is none)."""
        return (self.cancel_obj, None)

    # ----------------------------------------------------------------- writing

    def record_write(self, record: TaskEngineState[Any]) -> Write:
        return (self.task_obj, to_json(record))

    def stage_write(self, stage_name: str, state: BaseModel) -> Write:
        return (self.stage_obj(stage_name), to_json(state))

    def commit(self, writes: Sequence[Write], fence: Fence | None) -> None:
        """One checkpoint (see the module docstring)."""
        self.io.commit(writes, fence=fence)

    def remove(self, record: TaskEngineState[Any] | None, fence: Fence | None) -> int:
        """Remove the task's objects but its lease; return how many. ``cleaning`` is stored first, so a
        crash mid-way is finished by the next bind."""
        stored = set(self.objects()) - {self.lock_obj}
        if self.task_obj in stored and record is not None:
            record.cleaning = True
            self.commit([self.record_write(record)], fence)
        others = [(obj, None) for obj in sorted(stored - {self.task_obj})]
        self.commit([*others, (self.task_obj, None)], fence)
        return len(stored)

    def prune(self) -> None:
        self.io.prune(self.prefix)

    def compact(self, fence: Fence | None) -> None:
        self.io.compact(self.prefix, fence=fence)
