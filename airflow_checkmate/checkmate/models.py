"""Pydantic models of what is checkpointed: stage state, its history, and the task-level record."""

import copy
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from airflow_checkmate.checkmate.exceptions import MissingStateException
from airflow_checkmate.checkmate.names import STAGE_NAME_MAX_LENGTH
from airflow_checkmate.checkmate.status import StageStatus

STAGE_RESULT = TypeVar("STAGE_RESULT")
STATE_T = TypeVar("STATE_T", bound="BaseStageState[Any]")
STAGE = TypeVar("STAGE")

TASK_SCHEMA_VERSION = 1


def render_ts(ts: float, tz: str) -> datetime:
    """A POSIX timestamp as an aware datetime in the named timezone."""
    return datetime.fromtimestamp(ts, ZoneInfo(tz))


class StageStateHistoryEntry(BaseModel):
    """One status change of a stage: what, when (in the stage's timezone), which attempt, and why."""

    model_config = ConfigDict(extra="forbid")

    status: StageStatus = Field(..., title="Status the stage changed to")
    message: str = Field(default="", title="Why the status changed")
    begin_ts: datetime = Field(..., title="When the step that led to this status began")
    end_ts: datetime | None = Field(default=None, title="When it ended, if it has")
    attempt: int = Field(default=0, ge=0, title="The stage's attempt count at the change")


class BaseStageState(BaseModel, Generic[STAGE_RESULT]):
    """Base class for stage state data; subclass it to add the fields a task needs.

    All stages of a task share the same state class, so the running stage can see the state of every
    stage before it. Fields added by subclasses should have defaults. Unknown fields are refused when
    a stored object is loaded, so an object of another schema is never silently read as defaults.

    What is stored comes back as it went in: NaN and +/-infinity are written as the JSON constants
    ``NaN``/``Infinity`` (not null), ``bytes`` fields as base64. Fields typed ``Any`` or ``dict`` come
    back as JSON types (tuples and sets as lists, datetimes and bytes as strings).
    """

    model_config = ConfigDict(
        extra="forbid", ser_json_inf_nan="constants", ser_json_bytes="base64", val_json_bytes="base64"
    )

    stage_name: str = Field(
        "",
        max_length=STAGE_NAME_MAX_LENGTH,
        title="Stage Name",
        description="Unique stage name / identifier, set by the engine at bind",
    )
    status: StageStatus = Field(
        default=StageStatus.UNBOUND,
        title="Stage Status",
        description="Stage execution status, used by the engine to decide whether to run or skip it",
    )
    attempts: int = Field(
        default=0,
        ge=0,
        title="Run attempts",
        description="Number of times the stage has been run; 0 means it has not been run yet",
    )
    history: list[StageStateHistoryEntry] = Field(
        default_factory=list, title="History", description="Stage state history"
    )
    result: STAGE_RESULT | None = Field(
        default=None,
        title="Result",
        description="The stage's result; the final stage's result is the task's result. None until the "
        "stage completes successfully",
    )

    def require(self, *field_names: str) -> None:
        """Raise MissingStateException naming every listed field that is None."""
        missing = [f for f in field_names if getattr(self, f, None) is None]
        if missing:
            raise MissingStateException(
                f"stage {self.stage_name!r} needs state field(s) {', '.join(missing)} to be set; "
                "an earlier stage should have set them"
            )


def deep_copy_state(state: STATE_T) -> STATE_T:
    """A deep copy of a stage state, its history copied entry by entry: a third of a generic deep copy's cost.

    Entries hold only immutable values, so a shallow copy of each is a deep one; immutable values
    elsewhere (a large str) are shared, as ``copy.deepcopy`` shares them.
    """
    memo: dict[int, Any] = {id(state.history): [entry.model_copy() for entry in state.history]}
    return copy.deepcopy(state, memo)


class TaskEvent(BaseModel):
    """A task-level event: creation, lock takeover, cancel, reset, cleanup."""

    model_config = ConfigDict(extra="forbid")

    ts: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    event: str
    message: str = ""


class TaskEngineState(BaseModel, Generic[STAGE]):
    """The task-level object: which stages, of which classes, make up the task.

    Stored as ``<task_id>/task.json`` without the templates. Stored class paths are compared with the
    templates' classes, never imported.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    schema_version: int = TASK_SCHEMA_VERSION
    task_id: str = ""
    stage_names: list[str] = Field(default_factory=list)
    stage_template_classes: list[str] = Field(default_factory=list)
    stage_fingerprints: list[dict[str, str]] = Field(
        default_factory=list, title="Per stage: a digest of each template field and initial state field"
    )
    inputs_fingerprint: dict[str, str] | None = Field(
        default=None, title="Digests of what the task was built from (factory kwargs); None: not recorded yet"
    )
    owner: dict[str, str] = Field(
        default_factory=dict,
        title="Who created the task (the operator: dag id, task id, run id, map index); others are refused",
    )
    redefine_from: int | None = Field(
        default=None, title="Set by a reset: stages from this index on take the next bind's definition"
    )
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    cleaning: bool = Field(default=False, title="Set while the task's objects are being removed")
    labels: dict[str, str] = Field(
        default_factory=dict, title="Who runs the task, e.g. the Airflow DAG, task and run ids; checked by viewers"
    )
    last_try: dict[str, str | int] = Field(
        default_factory=dict,
        title="The caller's last try that bound the task (Airflow: run id, try number, max tries); the operator "
        "tells an automatic retry (same max tries) from a person's clear (Airflow raises max tries) by it",
    )
    history: list[TaskEvent] = Field(default_factory=list)
    stage_templates: list[Any] = Field(default_factory=list, exclude=True)
