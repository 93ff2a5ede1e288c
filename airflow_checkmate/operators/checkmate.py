"""CheckMateOperator: run a CheckMate task in Airflow so every try resumes where the last one stopped."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_checkmate.checkmate import (
    DEFAULT_QUEUE_NAME,
    BaseStage,
    BindException,
    CheckMate,
    CheckMateEngine,
    LeaseLostException,
    RetryPolicy,
    StageInterrupted,
    TaskEngineException,
)
from airflow_checkmate.checkmate.exceptions import TaskIdentityException
from airflow_checkmate.checkmate.status import STOPPED_STATUSES, StageStatus
from airflow_checkmate.hooks.checkmate import CheckMateHook
from airflow_checkmate.links.checkmate import CheckMateStateLink, derive_checkmate_task_id, state_url
from airflow_checkmate.operators.rules import (
    checked_task_id,
    cleared_since_last_try,
    engine_policy,
    import_factory,
    stopped_message,
    xcom_refusal,
)

__all__ = ["CheckMateOperator", "CheckMateStateLink", "airflow_instance_key", "derive_checkmate_task_id", "state_url"]

if TYPE_CHECKING:
    from airflow.sdk import Context


def airflow_instance_key(dag_id: str, task_id: str, run_id: str, map_index: int | None) -> str:
    """The lease claim of an Airflow task instance: tries of one instance share it, try numbers order them."""
    return json.dumps(["airflow", dag_id, task_id, run_id, -1 if map_index is None else map_index])


class CheckMateOperator(BaseOperator):
    """Run a CheckMate task: each Airflow try binds, executes from the first incomplete stage, unbinds.

    An engine RETRY becomes an Airflow retry (AirflowException), an engine ERROR fails the task without
    further tries (AirflowFailException), a lock held by a live process is retried later. A task in
    ERROR or CANCELED that a person clears resumes at the stopped stage; an automatic retry that finds
    it so fails at once (see ``operators.rules``). The task result goes to XCom.
    A stored task of another definition or another run is refused at bind with AirflowFailException
    naming the ``checkmate`` command that gets it out (see the README, "What is the same task?").

    :param stage_templates: the stages, in order (BaseStage instances). Or:
    :param checkmate_factory: a callable, or its dotted path, returning the stages or a CheckMateEngine;
        called with ``factory_kwargs``.
    :param factory_kwargs: keyword arguments for the factory (templated).
    :param checkmate_task_id: the CheckMate task id (templated); by default derived from the dag id,
        task id, run id and map index, so it is stable across tries and clears of one run.
    :param checkmate_conn_id: connection of type ``checkmate`` (the embedded default if not defined).
    :param checkmate_retry_policy: the engine's RetryPolicy (``airflow_checkmate.checkmate.RetryPolicy``,
        or its name); by default RETRY when ``max_attempts`` > 1. BaseOperator's own ``retry_policy`` is
        Airflow's and is left to it.
    :param max_attempts: attempts per stage; by default the Airflow task's ``retries + 1`` (1 under
        RetryPolicy.NONE).
    :param bind_lock_timeout: seconds to wait for another holder of the task's lock (None: fail at once,
        and Airflow retries later). An older try of the same task instance is never waited for: Airflow
        has ended it, so this try takes its lease over at once.
    :param strict_recovery: re-run a stage left RUNNING by a dead worker (default True).
    :param auto_cleanup: remove the task's stored state once it is COMPLETE (a failed try keeps it to resume).
    :param managed: run a managed ``CheckMate``, so the task has a registry row (``checkmate list``);
        False runs a plain engine with stage state only.
    :param checkmate_queue: the CheckMate queue the task is listed under (BaseOperator's ``queue`` is
        the executor's).
    :param checkmate_tags: tags to find the task by; ``dag:<dag_id>`` is always added.
    :param checkmate_share_across_runs: let another DAG run (or task, or map index) bind a task id this task
        instance did not create, e.g. a templated per-day id: a COMPLETE task then returns its stored
        result and its record keeps the run that computed it. By default such a bind fails the task.
    """

    template_fields: Sequence[str] = ("checkmate_task_id", "factory_kwargs")
    template_fields_renderers = {"factory_kwargs": "json"}
    ui_color = "#d8f3dc"
    operator_extra_links = (CheckMateStateLink(),)

    def __init__(
        self,
        *,
        stage_templates: Sequence[BaseStage[Any]] | None = None,
        checkmate_factory: Callable[..., Any] | str | None = None,
        factory_kwargs: dict[str, Any] | None = None,
        checkmate_task_id: str | None = None,
        checkmate_conn_id: str = CheckMateHook.default_conn_name,
        checkmate_retry_policy: RetryPolicy | str | None = None,
        max_attempts: int | None = None,
        bind_lock_timeout: float | None = None,
        strict_recovery: bool = True,
        auto_cleanup: bool = False,
        managed: bool = True,
        checkmate_queue: str = DEFAULT_QUEUE_NAME,
        checkmate_tags: Sequence[str] | None = None,
        checkmate_share_across_runs: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (stage_templates is None) == (checkmate_factory is None):
            raise ValueError(f"{self.task_id}: pass exactly one of stage_templates or checkmate_factory")
        self.stage_templates = list(stage_templates) if stage_templates is not None else None
        self.checkmate_factory = checkmate_factory
        self.factory_kwargs = factory_kwargs or {}
        self.checkmate_task_id = checkmate_task_id if not checkmate_task_id else checked_task_id(checkmate_task_id)
        self.checkmate_conn_id = checkmate_conn_id
        self.checkmate_retry_policy = engine_policy(checkmate_retry_policy)
        self.max_attempts = max_attempts
        self.bind_lock_timeout = bind_lock_timeout
        self.strict_recovery = strict_recovery
        self.auto_cleanup = auto_cleanup
        self.managed = managed
        self.checkmate_queue = checkmate_queue
        self.checkmate_tags = list(checkmate_tags or ())
        self.checkmate_share_across_runs = checkmate_share_across_runs
        self._engine: CheckMateEngine[Any, Any] | None = None
        self._killed = ""

    @cached_property
    def hook(self) -> CheckMateHook:
        return CheckMateHook(checkmate_conn_id=self.checkmate_conn_id)

    def resolve_task_id(self, context: Context) -> str:
        """The CheckMate task id for this task instance; a rendered id that is not valid fails the task."""
        if self.checkmate_task_id:
            return checked_task_id(self.checkmate_task_id, rendered=True)
        ti = context["ti"]
        return derive_checkmate_task_id(ti.dag_id, ti.task_id, ti.run_id, -1 if ti.map_index is None else ti.map_index)

    def build_engine(self, context: Context) -> CheckMateEngine[Any, Any]:
        """The engine for this try: from the templates, or from what the factory returns."""
        stages: Any = self.stage_templates
        if stages is None:
            factory = self.checkmate_factory
            if isinstance(factory, str):
                factory = import_factory(factory)
            stages = factory(**self.factory_kwargs)  # type: ignore[misc]
        if isinstance(stages, CheckMateEngine):
            return stages
        if self.max_attempts:
            attempts = self.max_attempts
        elif self.checkmate_retry_policy is RetryPolicy.NONE:
            attempts = 1
        else:
            attempts = int(self.retries or 0) + 1
        policy = self.checkmate_retry_policy or (RetryPolicy.RETRY if attempts > 1 else RetryPolicy.NONE)
        options: dict[str, Any] = {
            "retry_policy": policy,
            "max_attempts": attempts,
            "bind_lock_timeout": self.bind_lock_timeout,
            "auto_cleanup": self.auto_cleanup,
        }
        task_id = self.resolve_task_id(context)
        if not self.managed:
            return CheckMateEngine(self.hook.io, task_id, stages, **options)
        ti = context["ti"]
        return CheckMate(
            self._rebuildable_factory(),
            stages,
            task_id,
            description=f"Airflow task {ti.dag_id}.{ti.task_id}, run {ti.run_id}",
            queue=self.checkmate_queue,
            tags=[*self.checkmate_tags, f"dag:{ti.dag_id}"],
            io=self.hook.io,
            registry=self.hook.registry,
            factory_kwargs=self.factory_kwargs if self._rebuildable_factory() else None,
            **options,
        )

    def identify(self, engine: CheckMateEngine[Any, Any], context: Context) -> None:
        """Tell the engine who runs it: its owner (this task instance), labels, inputs and sharing."""
        ti = context["ti"]
        map_index = -1 if ti.map_index is None else ti.map_index
        engine.owner = f"airflow {ti.dag_id}.{ti.task_id} run {ti.run_id} try {ti.try_number}"
        engine.task_owner = {
            "airflow_dag_id": ti.dag_id,
            "airflow_task_id": ti.task_id,
            "airflow_run_id": ti.run_id,
            "airflow_map_index": str(map_index),
        }
        engine.labels = {"airflow_dag_id": ti.dag_id, "airflow_task_id": ti.task_id, "airflow_run_id": ti.run_id}
        engine.shared = self.checkmate_share_across_runs
        if self.checkmate_factory is not None:
            engine.inputs = {"factory_kwargs": self.factory_kwargs}

    def _rebuildable_factory(self) -> Callable[..., Any] | str | None:
        """The factory tools can rebuild the task with: only one whose (rendered) kwargs are JSON."""
        try:
            json.dumps(self.factory_kwargs)
        except (TypeError, ValueError):
            return None
        return self.checkmate_factory

    def execute(self, context: Context) -> Any:
        ti = context["ti"]
        engine = self.build_engine(context)
        ti.xcom_push(
            key=CheckMateStateLink().xcom_key, value=state_url(engine.task_id, self.checkmate_conn_id, ti.dag_id)
        )
        self.identify(engine, context)
        engine.instance_key = airflow_instance_key(ti.dag_id, ti.task_id, ti.run_id, ti.map_index)
        engine.try_number = int(ti.try_number)
        warning = self.hook.local_default_warning()
        if warning:
            self.log.warning(warning)
        engine.try_mark = {"run_id": ti.run_id, "try_number": ti.try_number, "max_tries": ti.max_tries}
        self.log.info("CheckMate task %s at %s", engine.task_id, engine.io.build_url(engine.task_id))
        try:
            engine.bind()
        except BindException as exc:
            raise AirflowException(
                f"CheckMate task {engine.task_id} is held by another process; retry later: {exc}"
            ) from exc
        except TaskIdentityException as exc:  # no retry can change it: do not burn the tries
            hint = (
                ""
                if self.checkmate_conn_id == CheckMateHook.default_conn_name
                else f" (with --conn-id {self.checkmate_conn_id})"
            )
            raise AirflowFailException(f"CheckMate task {engine.task_id} cannot be resumed{hint}: {exc}") from exc
        self._engine = engine
        try:
            return self._run(engine, ti)
        finally:
            self._engine = None
            engine.unbind()

    def _run(self, engine: CheckMateEngine[Any, Any], ti: Any) -> Any:
        if self._killed:  # on_kill came while binding, before the engine could be interrupted
            raise AirflowException(f"CheckMate task {engine.task_id} was not started: {self._killed}")
        status = engine.status
        if status in STOPPED_STATUSES:
            if not cleared_since_last_try(engine.previous_try, ti, int(self.retries or 0)):
                raise AirflowFailException(stopped_message(engine, status, ti))
            self.log.warning(
                "CheckMate task %s is %s and a person cleared this Airflow task: resetting", engine.task_id, status
            )
            engine.reset()
        done = sum(1 for s in engine.stages if s.state.status is StageStatus.COMPLETE)
        if done:
            self.log.info("Resuming at stage %d/%d: %d stage(s) already COMPLETE", done + 1, len(engine.stages), done)
        try:
            engine.execute(strict_recovery=self.strict_recovery)
        except StageInterrupted as exc:
            raise AirflowException(f"CheckMate task {engine.task_id} was interrupted: {exc}") from exc
        except LeaseLostException as exc:  # another holder runs the task now; this try writes nothing more
            raise AirflowException(f"CheckMate task {engine.task_id} stopped: {exc}") from exc
        except TaskEngineException as exc:
            self.log.info("Stages:\n%s", engine.stage_table())
            if engine.status is StageStatus.RETRY:
                raise AirflowException(f"CheckMate stage failed and will be retried: {exc}") from exc
            raise AirflowFailException(f"CheckMate task {engine.task_id} is {engine.status}: {exc}") from exc
        except Exception as exc:
            self.log.info("Stages:\n%s", engine.stage_table())
            raise AirflowFailException(
                f"CheckMate task {engine.task_id} is {engine.status}: {type(exc).__name__}: {exc}"
            ) from exc
        self.log.info("Stages:\n%s", engine.stage_table())
        if self._killed:
            raise AirflowException(f"CheckMate task {engine.task_id} finished but the try was killed: {self._killed}")
        result = engine.task_result
        refused = xcom_refusal(engine.task_id, result) if self.do_xcom_push else ""
        if refused:
            engine.auto_cleanup = False  # keep the stored result: it is all the user has
            raise AirflowFailException(refused)
        return result

    def on_kill(self) -> None:
        """Interrupt the running stage at once (Airflow calls this on SIGTERM); the try never succeeds."""
        self._killed = "Airflow stopped the task (SIGTERM: marked failed/success in the UI, timeout or shutdown)"
        engine = self._engine
        if engine is not None and engine.bound:
            self.log.warning("on_kill: interrupting CheckMate task %s", engine.task_id)
            engine.interrupt(self._killed)
