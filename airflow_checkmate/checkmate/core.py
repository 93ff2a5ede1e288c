"""The engine's core: its settings, read-only views of the task, and the persistence of stage state.

The engine class is assembled from this core, checkpoints (persisting stage state), binding
(bind/unbind and loading stored state), control (cancel and reset) and execution; each module holds
one of those concerns. How a task is stored is the TaskStore's business (``self.store``).
"""

import logging
import threading
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from airflow_checkmate.checkmate import names
from airflow_checkmate.checkmate.exceptions import (
    LeaseLostException,
    TaskEngineException,
)
from airflow_checkmate.checkmate.identity import stage_fingerprint, string_from_callable
from airflow_checkmate.checkmate.io.base import Fence, TaskIO
from airflow_checkmate.checkmate.lease import LeaseKeeper, LeaseRecord
from airflow_checkmate.checkmate.models import TaskEngineState
from airflow_checkmate.checkmate.policy import AttemptPolicy, RetryPolicy
from airflow_checkmate.checkmate.stage import BaseStage, check_template
from airflow_checkmate.checkmate.status import StageStatus, check_sequence, overall_status
from airflow_checkmate.checkmate.store import TaskStore, Write

log = logging.getLogger("airflow_checkmate.checkmate.engine")

STAGE = TypeVar("STAGE", bound=BaseStage[Any])
STAGE_RESULT = TypeVar("STAGE_RESULT")

S = StageStatus


class EngineCore(Generic[STAGE, STAGE_RESULT]):
    """Settings, views and persistence shared by the engine's parts (see :class:`CheckMateEngine`)."""

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
            check_template(template)
        if bind_lock_timeout is not None and bind_lock_timeout < 0:
            raise TaskEngineException(f"bind_lock_timeout must be None or >= 0, got {bind_lock_timeout}")
        self.io = io
        self.task_id = names.validate_task_id(task_id) if task_id is not None else names.new_task_id()
        self.store = TaskStore(io, self.task_id)
        self.policy = AttemptPolicy(retry_policy, max_attempts)
        self.bind_lock_timeout = bind_lock_timeout
        self.auto_cleanup = auto_cleanup
        self.no_lock = no_lock
        self.force_create = force_create
        self._templates: tuple[STAGE, ...] = tuple(stage_templates)
        self._stage_index = {t.stage_name: i for i, t in enumerate(self._templates)}
        self._fingerprints = [stage_fingerprint(t) for t in self._templates]
        self.task_state: TaskEngineState[STAGE] = self._fresh_task_state()
        self._keeper: LeaseKeeper | None = None
        #: Stage writes not yet committed, and whether ``persist_stage`` queues instead of committing.
        self._pending: list[tuple[BaseStage[Any], Write]] = []
        self._defer = False
        self._frontier = 0  # where first_incomplete() last found the first incomplete stage
        self._bound = False
        self._desynced = ""
        self._cancel_event = threading.Event()
        self.owner = ""
        self.instance_key = ""  # with try_number: a newer try of the same instance takes the lease over at once
        self.try_number = 0
        self.labels: dict[str, str] = {}
        self.try_mark: dict[str, str | int] = {}  # recorded as the task's last_try at bind (see TaskEngineState)
        self.previous_try: dict[str, str | int] = {}  # the stored last_try this bind replaced
        #: Who runs the task (generic; the operator: dag id, task id, run id, map index). Recorded at the
        #: first bind; a bind by another owner is refused unless ``shared``. Empty: a tool, never refused.
        self.task_owner: dict[str, str] = {}
        self.shared = False
        #: What the task was built from besides its templates (e.g. ``{"factory_kwargs": {...}}``).
        self.inputs: dict[str, Any] = {}
        self._in_stage_code = False
        self._stage_thread = 0
        self._interrupt_lock = threading.RLock()  # re-entrant: a signal handler may interrupt its own thread
        self.interrupted: str = ""

    def _fresh_task_state(self) -> TaskEngineState[STAGE]:
        return TaskEngineState(
            task_id=self.task_id,
            stage_names=[t.stage_name for t in self._templates],
            stage_template_classes=[string_from_callable(t) for t in self._templates],
            stage_fingerprints=[dict(f) for f in self._fingerprints],
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
    def templates(self) -> tuple[STAGE, ...]:
        """The pristine stage templates the engine was built with (never modified)."""
        return self._templates

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
        return self.store.lock_obj

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
        if self.store.cancel_requested():
            self._cancel_event.set()

    # ----------------------------------------------------------------- binding state

    @property
    def _fence(self) -> Fence | None:
        return self._keeper.fence if self._keeper is not None else None

    def _require_bound(self) -> None:
        if not self._bound:
            raise TaskEngineException(f"engine for task {self.task_id!r} is not bound; call bind() first")
        if self._desynced:
            raise TaskEngineException(self._desynced)
        if self._keeper is not None and self._keeper.lost.is_set():
            raise LeaseLostException(self._lease_lost_message())

    def _lease_lost(self, new_holder: str) -> None:
        """Called from the keeper's thread when the lease was taken over (the engine also stops its stage)."""
        self.interrupted = self._lease_lost_message()

    def _lease_lost_message(self) -> str:
        new_holder = self._keeper.lost_to if self._keeper is not None else ""
        return (
            f"the bind lease of task {self.task_id!r} was taken over by {new_holder or 'another process'}; "
            "this engine stopped and wrote nothing more (unbind it)"
        )

    def first_incomplete(self) -> int:
        """The index of the first stage that is not COMPLETE (the number of stages when all are).

        COMPLETE stages are a prefix (bind checks it, transitions keep it), so the search resumes from
        the last answer while the stage before it is still COMPLETE: a run does not rescan every stage.
        """
        stages = self.task_state.stage_templates
        index = self._frontier
        if index > len(stages) or (index and stages[index - 1].state.status is not S.COMPLETE):
            index = 0
        while index < len(stages) and stages[index].state.status is S.COMPLETE:
            index += 1
        self._frontier = index
        return index

    def current_status(self) -> StageStatus:
        """The overall status without re-checking the sequence (as :attr:`status`, which checks it, for the
        sequences bind admits): the first incomplete stage's, or COMPLETE."""
        stages = self.task_state.stage_templates
        index = self.first_incomplete()
        return stages[index].state.status if index < len(stages) else S.COMPLETE
