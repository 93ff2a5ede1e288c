"""CheckMate: the engine plus a relational task registry kept current by its bind, unbind and update hooks."""

import logging
from collections.abc import Callable, Sequence
from typing import Any

from airflow_checkmate.checkmate import settings
from airflow_checkmate.checkmate.core import STAGE, STAGE_RESULT
from airflow_checkmate.checkmate.engine import CheckMateEngine
from airflow_checkmate.checkmate.exceptions import TaskEngineException
from airflow_checkmate.checkmate.factory import factory_path
from airflow_checkmate.checkmate.io.base import TaskIO
from airflow_checkmate.checkmate.policy import RetryPolicy
from airflow_checkmate.checkmate.registry import DEFAULT_QUEUE_NAME, TaskRecord, TaskRegistry, now, validate_label

log = logging.getLogger(__name__)


class CheckMate(CheckMateEngine[STAGE, STAGE_RESULT]):
    """ManagedTask extends TaskEngine to add RDBMS persistence via bind/unbind hooks.

    Each bind writes the row from this instance (description, queue, tags and factory included), so
    the last binder's definition is what ``checkmate list`` shows.

    Every bind, unbind and change of the task's status keeps its registry row current (status, lock
    holder, progress), so ``checkmate list`` and the service operations see every task. Storage and
    registry come from ``io=`` / ``registry=``, else the Airflow connection ``checkmate_default``, else
    CHECKMATE_BASE_URL / CHECKMATE_DATABASE_URL, else files and SQLite under ``$AIRFLOW_HOME/checkmate``.

    :param checkmate_factory: the callable (or its dotted path) that builds this task; stored so tools
        can rebuild it, called as ``checkmate_factory(task_id=..., **factory_kwargs)``. None: not rebuildable.
    :param stage_templates: the stages, in order.
    :param task_id: the task's unique id; a random one when None.
    :param description: free text shown by ``checkmate list`` and ``show``.
    :param no_lock: skip the bind lock (read-only inspection).
    :param retry_policy: RetryPolicy (default NONE, or RETRY when ``max_attempts`` > 1).
    :param max_attempts: attempts per stage (default 1).
    :param bind_lock_timeout: seconds to wait for another holder's lock; None fails at once.
    :param auto_cleanup: remove the stored state at unbind once the task is COMPLETE (the row is kept,
        marked cleaned); a failed try keeps its checkpoints so the next one resumes.
    :param force_create: this is a new task id; bind raises if state is already stored for it.
    :param queue: the queue name the task is listed under.
    :param tags: labels to find the task by (``checkmate list --tag``).
    :param io: storage for stage state (overrides the configuration).
    :param registry: a TaskRegistry or its database URL (overrides the configuration).
    :param factory_kwargs: JSON-serialisable keyword arguments the factory is rebuilt with.
    """

    def __init__(
        self,
        checkmate_factory: Callable[..., Any] | str | None,
        stage_templates: Sequence[STAGE] | None = None,
        task_id: str | None = None,
        description: str | None = None,
        no_lock: bool = False,
        retry_policy: RetryPolicy | None = None,
        max_attempts: int | None = None,
        bind_lock_timeout: float | None = None,
        auto_cleanup: bool | None = None,
        force_create: bool = False,
        queue: str = DEFAULT_QUEUE_NAME,
        tags: list[str] | None = None,
        *,
        io: TaskIO | None = None,
        registry: TaskRegistry | str | None = None,
        factory_kwargs: dict[str, Any] | None = None,
    ) -> None:
        attempts = 1 if max_attempts is None else max_attempts
        if retry_policy is None:
            retry_policy = RetryPolicy.RETRY if isinstance(attempts, int) and attempts > 1 else RetryPolicy.NONE
        resolved = settings.resolve() if io is None or registry is None else None
        if io is None:
            assert resolved is not None
            io = TaskIO.from_base_url(resolved.base_url, **resolved.options)
        super().__init__(
            io,
            task_id,
            stage_templates,
            retry_policy,
            attempts,
            bind_lock_timeout,
            bool(auto_cleanup),
            no_lock,
            force_create,
        )
        if isinstance(registry, str):
            registry = TaskRegistry(registry)
        elif registry is None:
            assert resolved is not None
            registry = TaskRegistry(resolved.database_url)
        if not isinstance(registry, TaskRegistry):
            raise TaskEngineException(f"registry must be a TaskRegistry or a database URL, got {registry!r}")
        self.registry = registry
        self.checkmate_factory = factory_path(checkmate_factory)
        self.factory_kwargs = dict(factory_kwargs or {})
        self.description = description
        self.queue = validate_label("queue", queue)
        self.tags = sorted({validate_label("tag", tag) for tag in tags or ()})
        self._reported: tuple[Any, ...] = ()

    def _progress(self) -> dict[str, Any]:
        stages = self.task_state.stage_templates
        done = self.first_incomplete()  # COMPLETE stages are always a prefix (the status check enforces it)
        return {
            "status": str(self.status),
            "stages_done": done,
            "stages_total": len(stages),
            "current_stage": stages[done].stage_name if done < len(stages) else None,
        }

    def _holder(self) -> str | None:
        lease = self.lease
        if lease is None:
            return None
        return f"host {lease.host} pid {lease.pid}" + (f" ({lease.owner})" if lease.owner else "")

    def bind(self) -> None:
        """Bind the task to the current process and persist its row in the registry (created if absent)."""
        super().bind()
        try:
            progress = self._progress()
            stamp = now()
            self.registry.register(
                TaskRecord(
                    task_id=self.task_id,
                    base_url=self.io.base_url,
                    checkmate_factory=self.checkmate_factory,
                    factory_kwargs=self.factory_kwargs,
                    queue=self.queue,
                    tags=self.tags,
                    description=self.description,
                    cleaned=False,
                    created_at=stamp,
                    updated_at=stamp,
                    lock_holder=self._holder(),
                    **progress,
                )
            )
            self._reported = tuple(progress.values())
        except BaseException:
            super().unbind()
            raise

    def state_update_hook(self) -> None:
        """Update the row when the task's status changes; a registry failure is logged, never fails the stage.

        Progress within a status (stages done, current stage) is written with the next status change and at
        unbind, not at every stage boundary: a boundary costs one durable write, on the state store, and
        ``checkmate show`` (the task's snapshot) has the live progress.
        """
        try:
            status = str(self.current_status())  # a stage boundary must not cost a pass over every stage
            if not self._reported or status != self._reported[0]:
                progress = self._progress()
                self.registry.update(self.task_id, **progress)
                self._reported = tuple(progress.values())
        except Exception:
            log.warning("could not update task %s in the registry; it catches up later", self.task_id, exc_info=True)

    def unbind(self, clean: bool = False) -> None:
        """Unbind the task from the current process and update its row (``clean``: mark it cleaned)."""
        try:
            progress = self._progress() if self.bound else {}
        except TaskEngineException:  # a desynced engine still unbinds; the row catches up at the next bind
            progress = {}
        cleaned = clean or self.cleans_at_unbind
        super().unbind(clean)
        try:
            if not self.registry.update(self.task_id, lock_holder=None, cleaned=cleaned, **progress):
                log.warning("task %s is not in the registry %s", self.task_id, self.registry.url)
        except Exception:
            log.warning("could not update task %s in the registry at unbind", self.task_id, exc_info=True)
