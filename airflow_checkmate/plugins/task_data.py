"""The data behind the CheckMate routes: a task's view, a task instance's view, the list, and the actions.

Errors become HTTP errors a person can act on: an unknown connection or unreadable storage is 400, a task that
is not stored (or is stored for another DAG: access to one DAG never reveals another's tasks) is 404.
"""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import HTTPException

from airflow_checkmate.checkmate.exceptions import PersistenceDataNotFoundException, TaskEngineException
from airflow_checkmate.checkmate.io.base import TaskIO
from airflow_checkmate.checkmate.registry import TaskRecord, TaskRegistry
from airflow_checkmate.checkmate.service import ERRORS, CheckMateService, TaskNotFound
from airflow_checkmate.checkmate.snapshot import TaskSnapshot, read_snapshot
from airflow_checkmate.checkmate.status import StageStatus
from airflow_checkmate.plugins import access, view_model
from airflow_checkmate.plugins.airflow_side import TaskInstanceInfo, TaskInstanceNotFound, task_instance

ACTIONS = ("cancel", "reset", "unlock")


def storage(conn_id: str) -> tuple[TaskIO, TaskRegistry]:
    """The connection's storage and registry; 400 when the connection is unknown or unusable."""
    from airflow.sdk.exceptions import AirflowException

    from airflow_checkmate.hooks.checkmate import CheckMateHook

    hook = CheckMateHook(conn_id)
    try:
        return hook.io, hook.registry
    except (AirflowException, TaskEngineException, ValueError) as exc:
        raise HTTPException(400, f"CheckMate connection {conn_id!r} cannot be used: {exc}") from exc


def _snapshot(io: TaskIO, task_id: str, dag_id: str, user: Any, watched: bool = False) -> TaskSnapshot:
    """The stored task of ``dag_id``, else 404: access to one DAG never reveals another's tasks.

    ``watched``: a task instance of ``dag_id`` names the task (a sensor waiting on another DAG's task), so the
    task may belong to another DAG, shown when the user may also read that one.
    """
    try:
        snapshot = read_snapshot(io, task_id)
    except (TaskEngineException, PersistenceDataNotFoundException) as exc:
        raise HTTPException(400, f"CheckMate task {task_id!r} cannot be read: {exc}") from exc
    owner = snapshot.labels.get("airflow_dag_id") if snapshot else None
    if snapshot is None or (owner != dag_id and not (watched and owner and access.is_authorized(user, owner, "GET"))):
        raise HTTPException(404, f"no CheckMate task {task_id!r} is stored for DAG {dag_id!r}")
    return snapshot


def _record(registry: TaskRegistry, task_id: str) -> TaskRecord | None:
    with contextlib.suppress(*ERRORS):
        return registry.get(task_id)
    return None


def view(task_id: str, conn_id: str, dag_id: str, user: Any, info: TaskInstanceInfo | None = None) -> dict[str, Any]:
    """The task view of a stored CheckMate task of ``dag_id`` (or, given ``info``, named by a task of it)."""
    io, registry = storage(conn_id)
    snapshot = _snapshot(io, task_id, dag_id, user, watched=info is not None)
    dag_id = snapshot.labels.get("airflow_dag_id", dag_id)
    if info is None and snapshot.labels.get("airflow_run_id") and snapshot.labels.get("airflow_task_id"):
        with contextlib.suppress(TaskInstanceNotFound):
            info = task_instance(dag_id, snapshot.labels["airflow_run_id"], snapshot.labels["airflow_task_id"], -1)
    tries = info.tries if info else []
    data = view_model.task_view(io, snapshot, _record(registry, task_id), tries, info.as_json() if info else None)
    data.update(kind="task", conn_id=conn_id, dag_id=dag_id, labels=snapshot.labels)
    data["can_edit"] = access.is_authorized(user, dag_id, "PUT")
    return data


def ti_view(dag_id: str, run_id: str, task_id: str, map_index: int, user: Any) -> dict[str, Any]:
    """The view of a task instance: its CheckMate task, or why there is none (yet)."""
    try:
        info = task_instance(dag_id, run_id, task_id, map_index)
    except TaskInstanceNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    if not info.is_checkmate:
        return {"kind": "not_checkmate", "airflow": info.as_json(), "live": False}
    if info.checkmate is None:
        return {"kind": "not_started", "airflow": info.as_json(), "live": True}
    return view(info.checkmate[0], info.checkmate[1], dag_id, user, info)


def _dags(record: TaskRecord) -> list[str]:
    return [tag.removeprefix("dag:") for tag in record.tags if tag.startswith("dag:")]


def listing(
    user: Any, conn_id: str, status: str | None, dag_id: str | None, tag: str | None, queue: str | None, limit: int
) -> dict[str, Any]:
    """Registry rows matching the filters, of DAGs the user may read (tasks of no DAG: users who read all)."""
    _, registry = storage(conn_id)
    try:
        statuses = [StageStatus(status.upper())] if status else None
    except ValueError:
        raise HTTPException(
            400, f"unknown status {status!r}; use one of {', '.join(s.value for s in StageStatus)}"
        ) from None
    tags = [t for t in (tag, f"dag:{dag_id}" if dag_id else None) if t]
    try:
        records = registry.list_tasks(statuses=statuses, tags=tags, queue=queue or None, limit=limit)
    except ERRORS as exc:
        raise HTTPException(400, f"cannot list CheckMate tasks: {exc}") from exc
    readable = access.readable_dag_ids(user)
    all_dags = access.may_read_all(user)
    rows = []
    for record in records:
        dags = _dags(record)
        if (dags and set(dags) <= readable) or (not dags and all_dags):
            rows.append(view_model.list_row(record, dags[0] if dags else None))
    return {"tasks": rows, "conn_id": conn_id, "limit": limit}


def act(user: Any, task_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Cancel, reset (from a stage) or unlock, if Airflow lets the user edit the task's DAG; audited either way."""
    action, dag_id = body.get("action"), body.get("dag_id")
    conn_id = str(body.get("conn_id") or "checkmate_default")
    if action not in ACTIONS or not isinstance(dag_id, str):
        raise HTTPException(400, f"send action (one of {', '.join(ACTIONS)}), dag_id and conn_id")
    access.require(user, dag_id, "GET")
    io, registry = storage(conn_id)
    labels = _snapshot(io, task_id, dag_id, user, watched=True).labels
    dag_id = labels.get("airflow_dag_id", dag_id)  # the DAG that runs the task decides, not the request
    stage = body.get("stage") or None
    where = {"checkmate_task_id": task_id, "action": action, "stage": stage, "conn_id": conn_id}
    run_id, af_task = labels.get("airflow_run_id"), labels.get("airflow_task_id")
    if not access.is_authorized(user, dag_id, "PUT"):
        access.audit(user, f"checkmate.{action}.refused", dag_id, run_id, af_task, where)
        access.require(user, dag_id, "PUT")
    service = CheckMateService(registry, io)
    try:
        if action == "cancel":
            outcome = service.cancel(
                [task_id], dry_run=False, reason=f"canceled in the Airflow UI by {user.get_name()}"
            )[0]
        elif action == "reset":
            outcome = service.reset(task_id, stage)
        else:
            outcome = service.unlock(task_id, force=True)
    except TaskNotFound as exc:
        raise HTTPException(400, f"{exc}: actions need a managed task (managed=True)") from exc
    except ERRORS as exc:
        access.audit(user, f"checkmate.{action}", dag_id, run_id, af_task, {**where, "failed": str(exc)})
        raise HTTPException(400, f"{action} failed: {exc}") from exc
    access.audit(user, f"checkmate.{action}", dag_id, run_id, af_task, {**where, "outcome": outcome.message})
    return {"action": action, "done": outcome.done, "failed": outcome.failed, "message": outcome.message}
