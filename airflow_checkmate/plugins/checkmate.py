"""Airflow plugin: a page on the api-server that shows a CheckMate task's stage state.

The operator's extra link ("CheckMate state") points here. The page needs an authenticated Airflow
user with read access to the task instances of the DAG named in the link; it reads stored state only
(no lock), so it is safe while the task runs.
"""

from __future__ import annotations

import html
from typing import Annotated, Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse

from airflow_checkmate.checkmate import TaskEngineException, TaskSnapshot, read_snapshot


def _require_dag_read(dag_id: str, user: Any) -> None:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    allowed = get_auth_manager().is_authorized_dag(
        method="GET", user=user, access_entity=DagAccessEntity.TASK_INSTANCE, details=DagDetails(id=dag_id)
    )
    if not allowed:
        raise HTTPException(status_code=403, detail=f"no read access to the task instances of DAG {dag_id!r}")


def _render(snapshot: TaskSnapshot) -> str:
    rows = "".join(
        f"<tr><td>{n}</td><td>{html.escape(s.stage_name)}</td><td>{s.status.value}</td><td>{s.attempts}</td>"
        f"<td>{html.escape(s.last_message)}</td></tr>"
        for n, s in enumerate(snapshot.stages, 1)
    )
    history = "".join(
        f"<h3>{html.escape(s.stage_name)}</h3><ol>"
        + "".join(
            f"<li>{h.begin_ts.isoformat()} {h.status.value} (attempt {h.attempt}): {html.escape(h.message)}</li>"
            for h in s.history
        )
        + "</ol>"
        for s in snapshot.stages
        if s.history
    )
    return (
        f"<!doctype html><title>CheckMate {html.escape(snapshot.task_id)}</title>"
        f"<h1>CheckMate task {html.escape(snapshot.task_id)}</h1>"
        f"<p>{html.escape(snapshot.progress())}{' (locked: running now)' if snapshot.locked else ''}</p>"
        f"<table border=1 cellpadding=4><tr><th>#</th><th>stage</th><th>status</th><th>attempts</th>"
        f"<th>last change</th></tr>{rows}</table><h2>History</h2>{history}"
    )


async def _current_user(request: Request) -> Any:
    """Airflow's authenticated user (bearer token or session cookie); imported late to keep workers light."""
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    return await get_user(request, None, await bearer_scheme(request))


def create_app() -> FastAPI:
    app = FastAPI(title="CheckMate", description="Stage state of CheckMate tasks")

    @app.get("/tasks/{checkmate_task_id}", response_class=HTMLResponse)
    def task_state(
        checkmate_task_id: str,
        user: Annotated[Any, Depends(_current_user)],
        dag_id: Annotated[str, Query(description="the DAG whose task ran the CheckMate task")],
        conn_id: Annotated[str, Query(description="the CheckMate connection id")] = "checkmate_default",
    ) -> str:
        _require_dag_read(dag_id, user)
        from airflow_checkmate.hooks.checkmate import CheckMateHook

        try:
            snapshot = read_snapshot(CheckMateHook(conn_id).io, checkmate_task_id)
        except TaskEngineException as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        if snapshot is None or snapshot.labels.get("airflow_dag_id") != dag_id:
            # Also for a task of another DAG: access to one DAG must not reveal another's state.
            raise HTTPException(
                status_code=404, detail=f"no CheckMate task {checkmate_task_id!r} is stored for DAG {dag_id!r}"
            )
        return _render(snapshot)

    return app


class CheckMatePlugin(AirflowPlugin):
    """Serves the CheckMate state page under ``/checkmate`` on the api-server."""

    name = "checkmate"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/checkmate", "name": "CheckMate state"}]
