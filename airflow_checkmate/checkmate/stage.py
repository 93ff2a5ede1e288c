"""BaseStage: one checkpointed step of a task."""

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from typing_extensions import Self

from airflow_checkmate.checkmate.exceptions import StateNotStorable, TaskEngineException
from airflow_checkmate.checkmate.models import BaseStageState, StageStateHistoryEntry, render_ts
from airflow_checkmate.checkmate.names import STAGE_NAME_MAX_LENGTH, validate_stage_name
from airflow_checkmate.checkmate.status import StageStatus, check_transition
from airflow_checkmate.checkmate.storable import check_template_state

if TYPE_CHECKING:
    from airflow_checkmate.checkmate.checkpoint import CheckpointMixin

STAGE_STATE = TypeVar("STAGE_STATE", bound=BaseStageState[Any])


class BaseStage(BaseModel, ABC, Generic[STAGE_STATE]):
    """Base task stage implementation.

    Subclasses implement :meth:`execute_stage`; state lives in ``state`` and is checkpointed by the
    engine at every status change. Stage code runs at least once per completed stage and may run
    again after a crash mid-stage, so it must be idempotent.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    stage_name: str = Field(
        ...,
        min_length=1,
        max_length=STAGE_NAME_MAX_LENGTH,
        title="Stage Name",
        description="Unique stage name / identifier; names the stage's stored state object",
    )
    description: str = Field(
        default="",
        title="Stage Description",
        description="Human readable stage description intended for short, inline documentation",
    )
    state: STAGE_STATE = Field(..., title="Stage State", description="Stage state data")
    timezone: str = Field(default="UTC", title="Timezone", description="Timezone to use in history entries")
    volatile_engine_ref: Any = Field(
        default=None,
        title="Task",
        description="Task object reference (volatile), set by the task execution engine",
        exclude=True,
    )

    @field_validator("stage_name")
    @classmethod
    def _valid_stage_name(cls, value: str) -> str:
        try:
            return validate_stage_name(value)
        except TaskEngineException as exc:
            raise ValueError(str(exc)) from None

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r}; use an IANA name such as 'UTC'") from None
        return value

    @model_validator(mode="after")
    def _storable_state(self) -> Self:
        """Refuse, when the stage is built (at DAG parse in Airflow), a state that could not be checkpointed."""
        state: Any = self.state
        if not isinstance(state, BaseStageState):
            raise ValueError(
                f"stage {self.stage_name!r}: state must be a BaseStageState (a pydantic model), got "
                f"{type(state).__module__}.{type(state).__qualname__}; declare it as "
                "`class MyState(BaseStageState[ResultType])` with pydantic fields"
            )
        try:
            check_template_state(state, f"stage {self.stage_name!r}")
        except StateNotStorable as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def engine(self) -> "CheckpointMixin[Any, Any]":
        """The engine this stage is bound to; raises TaskEngineException when unbound."""
        if self.volatile_engine_ref is None:
            raise TaskEngineException(f"stage {self.stage_name!r} is not bound to a task engine")
        return self.volatile_engine_ref  # type: ignore[no-any-return]

    @property
    def obj_name(self) -> str:
        """Return the object name for the current stage (the stage must be bound)."""
        return self.gen_obj_name()

    @property
    def url(self) -> str:
        """Return the URL for the current stage's stored state."""
        return self.engine.store.url(self.obj_name)

    @property
    def cancel_requested(self) -> bool:
        """True once a cancel of the task was requested; long stages may poll it and stop early.

        Whether the stage then raises or returns, it ends CANCELED and its result is discarded.
        """
        return self.volatile_engine_ref is not None and self.engine.cancel_requested

    def gen_obj_name(self, engine: "CheckpointMixin[Any, Any] | None" = None) -> str:
        """Generate the object name for this stage, for ``engine`` or the bound one."""
        return (engine or self.engine).store.stage_obj(self.stage_name)

    def bind_to_engine(self, task_engine: "CheckpointMixin[Any, Any]") -> "BaseStage[STAGE_STATE]":
        """Bind the stage to a TaskEngine; raises TaskEngineException if it is already bound."""
        if self.volatile_engine_ref is not None:
            raise TaskEngineException(f"stage {self.stage_name!r} is already bound to a task engine")
        self.volatile_engine_ref = task_engine
        return self

    def persistence_file_exists(self) -> bool:
        """Check whether the stage's state exists in the task's storage."""
        return self.engine.io.exists(self.obj_name)

    def inc_attempts(self) -> int:
        """Increment ``state.attempts`` by 1 and return the new count."""
        self.state.attempts += 1
        return self.state.attempts

    def update_status(
        self, message: str, status: StageStatus, begin_ts: float, end_ts: float | None = None, *, reset: bool = False
    ) -> None:
        """Set the stage's status, append a history entry and persist the state.

        The transition is checked against the state machine first (``reset``: also the transitions only
        an explicit reset may make); nothing changes if it is invalid.
        """
        check_transition(self.state.status, status, reset=reset, stage=self.stage_name)
        entry = StageStateHistoryEntry(
            status=status,
            message=message,
            begin_ts=render_ts(begin_ts, self.timezone),
            end_ts=None if end_ts is None else render_ts(end_ts, self.timezone),
            attempt=self.state.attempts,
        )
        self.state.status = status
        self.state.history.append(entry)
        self.engine.persist_stage(self)

    @abstractmethod
    def execute_stage(self, previous_state_copy: STAGE_STATE) -> None:
        """Execute the stage: return on success, raise on failure.

        Do not update the status here; the engine does. ``previous_state_copy`` is a deep copy of the
        previous stage's state (the first stage receives its own ``state``); do not modify it.
        """

    def rollback_stage(self) -> None:
        """Called when execute_stage raised, before the stage goes to RETRY or ERROR; undo partial work."""

    def cancel(self) -> None:
        """Called once on the first incomplete stage when the task is canceled, to clean up."""


def check_template(template: object) -> None:
    """Refuse what cannot be a stage template: not a BaseStage, an unknown timezone, or run state in it."""
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
    if state.status is not StageStatus.UNBOUND or state.attempts or state.history:
        raise TaskEngineException(
            f"stage template {template.stage_name!r} carries run state (status {state.status}, "
            f"{state.attempts} attempts); pass a fresh template"
        )
