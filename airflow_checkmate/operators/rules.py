"""The operator's rules: task ids from templates, a stopped task on a retry or a clear, results XCom takes,
the engine's retry policy by name, and a factory path that cannot be imported (a configuration error).

A ``checkmate_task_id`` is checked at DAG parse when it has no template, else once rendered; an invalid
one fails the task at once with the safe patterns below (Airflow run ids contain ':' and '+').

An automatic retry is not a clear. Airflow raises a task instance's ``max_tries`` when a person clears
it (to ``try_number + retries``) and leaves it alone on automatic retries. Every try records its run id,
try number and ``max_tries`` in the stored task (``TaskEngineState.last_try``) when it binds. A later try
of the same run that finds ``max_tries`` unchanged is an automatic retry; one that finds it raised
follows a clear. Without a record from this run, Airflow's own arithmetic decides: the first try since
the last clear (or ever) is ``max_tries - retries + 1``. A clear resets an ERROR or CANCELED task and
resumes it; an automatic retry fails at once, saying what stopped the task and how to resume it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from airflow_checkmate.checkmate import CheckMateEngine, RetryPolicy, StageStatus, TaskEngineException, names
from airflow_checkmate.checkmate.status import STOPPED_STATUSES
from airflow_checkmate.hooks.checkmate import CheckMateConfigError

SAFE_ID_HELP = (
    "A CheckMate task id allows letters, digits, '.', '_' and '-'. Airflow run ids contain ':' and '+' "
    "(manual__2026-01-01T00:00:00+00:00): write `{{ run_id | replace(':', '-') | replace('+', '-') }}`, use "
    "`{{ (dag_run.logical_date or dag_run.run_after) | ds_nodash }}` for a per-day id (`{{ ds_nodash }}` is "
    "undefined in runs without a logical date), or leave checkmate_task_id unset for the default id of the "
    "task instance"
)


def checked_task_id(task_id: str, rendered: bool = False) -> str:
    """``task_id`` if valid; a template is checked only once ``rendered``.

    :raises ValueError: at DAG parse, for an id without a template.
    :raises AirflowFailException: for a rendered id (retrying would not change it).
    """
    if not rendered and ("{{" in task_id or "{%" in task_id):
        return task_id
    try:
        return names.validate_task_id(task_id)
    except TaskEngineException as exc:
        if rendered:
            raise AirflowFailException(f"checkmate_task_id, rendered: {exc}. {SAFE_ID_HELP}") from exc
        raise ValueError(f"checkmate_task_id: {exc}. {SAFE_ID_HELP}") from None


def cleared_since_last_try(last_try: Mapping[str, str | int], ti: Any, retries: int) -> bool:
    """Whether a person cleared the task instance since the try recorded in ``last_try``.

    :param last_try: the stored record of the last try that bound the task (empty if none).
    :param ti: the running task instance (``run_id``, ``try_number``, ``max_tries``).
    :param retries: the task's ``retries``.
    """
    max_tries = int(ti.max_tries)
    recorded = last_try.get("max_tries")
    if last_try.get("run_id") == ti.run_id and isinstance(recorded, int):
        return max_tries > recorded
    return int(ti.try_number) <= max_tries - retries + 1


def stopped_message(engine: CheckMateEngine[Any, Any], status: StageStatus, ti: Any) -> str:
    """Why an automatic retry fails at once: which stage stopped, when and why, and how to resume."""
    stage = next(s for s in engine.stages if s.state.status in STOPPED_STATUSES)
    last = stage.state.history[-1] if stage.state.history else None
    when = (last.end_ts or last.begin_ts).isoformat(timespec="seconds") if last else "an unknown time"
    verb = "canceled" if status is StageStatus.CANCELED else "failed for good"
    return (
        f"CheckMate task {engine.task_id} is {status}: stage {stage.stage_name!r} was {verb} at {when} "
        f"({last.message if last else 'no history'}). An automatic retry (try {ti.try_number}) does not undo "
        f"that, so it fails at once. To resume at stage {stage.stage_name!r}, clear this Airflow task (UI, REST "
        f"API or `airflow tasks clear`): a clear resets the task and resumes it. `checkmate reset "
        f"{engine.task_id}` resets it from the command line (then clear the Airflow task to run it)."
    )


def xcom_refusal(task_id: str, result: Any) -> str:
    """Why Airflow's XCom cannot take ``result`` ('' if it can), with the way out.

    Checked with Airflow's serialiser before the try returns, so a COMPLETE task whose result XCom
    refuses fails once with this explanation, not on every retry with a bare TypeError.
    """
    if result is None:
        return ""
    from airflow.sdk.serde import serialize

    try:
        serialize(result)
    except (TypeError, ValueError, RecursionError) as exc:
        reason = str(exc).split(". ")[0]
        return (
            f"CheckMate task {task_id} is COMPLETE and its result is stored, but Airflow's XCom cannot take it "
            f"({type(result).__name__}: {reason}). Make the last stage's result JSON-friendly (str instead of a "
            f"Path, base64 text instead of bytes), then `checkmate reset {task_id} --stage <last stage>` and clear "
            "the task to compute it again; or set do_xcom_push=False and read the result with CheckMateSensor "
            f"or `checkmate show {task_id}`"
        )
    return ""


def engine_policy(policy: RetryPolicy | str | None) -> RetryPolicy | None:
    """``checkmate_retry_policy`` as a RetryPolicy; anything else is refused when the DAG is parsed."""
    if policy is None or isinstance(policy, RetryPolicy):
        return policy
    if isinstance(policy, str) and policy.upper() in RetryPolicy.__members__:
        return RetryPolicy[policy.upper()]
    raise ValueError(f"checkmate_retry_policy {policy!r} is not a CheckMate RetryPolicy (NONE or RETRY)")


def import_factory(path: str) -> Callable[..., Any]:
    """The factory a dotted path names; a path that cannot be imported fails the task at once (no retry)."""
    module, _, name = path.rpartition(".")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise CheckMateConfigError(
            f"checkmate_factory {path!r} cannot be imported ({type(exc).__name__}: {exc}); fix the path or install "
            "its package: retrying would not help"
        ) from exc
    if not callable(factory):
        raise CheckMateConfigError(f"checkmate_factory {path!r} is a {type(factory).__name__}, not a callable")
    return factory  # type: ignore[no-any-return]
