"""The CheckMate FastAPI app mounted on the api-server at ``/checkmate``: pages, JSON endpoints and actions.

Pages: ``/`` (the task list, the "CheckMate" navigation entry), ``/ti`` (the task instance tab),
``/tasks/{id}`` (the "CheckMate state" extra link). JSON: ``/api/tasks``, ``/api/ti``, ``/api/tasks/{id}`` and
``POST /api/tasks/{id}/actions``. Every route, the static files included, needs an Airflow login: pages
redirect to the login page, JSON answers 401. FastAPI's docs and OpenAPI routes are off.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from airflow_checkmate.plugins import access, pages, task_data
from airflow_checkmate.plugins.access import NotAuthenticated, current_user

_JS = "text/javascript"
_STATIC = {"checkmate.css": "text/css", "common.js": _JS, "task.js": _JS, "list.js": _JS}
User = Annotated[Any, Depends(current_user)]
ConnId = Annotated[str, Query(description="the CheckMate connection id")]


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _map_index(value: str) -> int:
    """The UI leaves ``{MAP_INDEX}`` unreplaced for a task that is not mapped."""
    try:
        return int(value)
    except ValueError:
        return -1


def _is_api(request: Request) -> bool:
    return request.url.path.removeprefix(_root(request)).startswith("/api/")


def create_app() -> FastAPI:
    app = FastAPI(title="CheckMate", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(NotAuthenticated)
    async def _login(request: Request, exc: NotAuthenticated) -> Response:
        if _is_api(request) or "/static/" in request.url.path:
            return JSONResponse({"detail": f"log in to Airflow first ({exc})"}, status_code=401)
        return RedirectResponse(access.login_url(request), status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def _error(request: Request, exc: StarletteHTTPException) -> Response:
        if _is_api(request):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
        titles = {400: "Bad request", 403: "Not allowed", 404: "Not found"}
        return pages.error_page(_root(request), exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail))

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str, user: User) -> Response:
        if name not in _STATIC:
            raise HTTPException(404, f"no static file {name!r}")
        content = resources.files("airflow_checkmate.plugins").joinpath("static").joinpath(name).read_bytes()
        return Response(content, media_type=_STATIC[name], headers={"Cache-Control": "no-cache"})

    @app.get("/")
    def list_page(request: Request, user: User, conn_id: ConnId = "checkmate_default") -> Response:
        api = f"{_root(request)}/api/tasks"
        return pages.list_page(_root(request), api, conn_id)

    @app.get("/ti")
    def ti_page(
        request: Request, user: User, dag_id: str, run_id: str, task_id: str, map_index: str = "-1"
    ) -> Response:
        access.require(user, dag_id, "GET")
        index = _map_index(map_index)
        query = urlencode({"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": index})
        root = _root(request)
        title = f"CheckMate · {task_id}" + (f" [{index}]" if index >= 0 else "")
        return pages.task_page(root, title, f"{root}/api/ti?{query}", f"{root}/api/tasks", dag_id, run_id)

    @app.get("/tasks/{checkmate_task_id}")
    def task_page(
        request: Request, user: User, checkmate_task_id: str, dag_id: str, conn_id: ConnId = "checkmate_default"
    ) -> Response:
        access.require(user, dag_id, "GET")
        task_data.view(checkmate_task_id, conn_id, dag_id, user)  # 404 / 400 as a page, before any script runs
        root = _root(request)
        query = urlencode({"dag_id": dag_id, "conn_id": conn_id})
        api = f"{root}/api/tasks/{checkmate_task_id}?{query}"
        return pages.task_page(root, f"CheckMate · {checkmate_task_id}", api, f"{root}/api/tasks", dag_id, None)

    @app.get("/api/ti")
    def ti_json(user: User, dag_id: str, run_id: str, task_id: str, map_index: str = "-1") -> dict[str, Any]:
        access.require(user, dag_id, "GET")
        return task_data.ti_view(dag_id, run_id, task_id, _map_index(map_index), user)

    @app.get("/api/tasks/{checkmate_task_id}")
    def task_json(
        user: User, checkmate_task_id: str, dag_id: str, conn_id: ConnId = "checkmate_default"
    ) -> dict[str, Any]:
        access.require(user, dag_id, "GET")
        return task_data.view(checkmate_task_id, conn_id, dag_id, user)

    @app.get("/api/tasks")
    def list_json(
        user: User,
        conn_id: ConnId = "checkmate_default",
        status: str | None = None,
        dag_id: str | None = None,
        tag: str | None = None,
        queue: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> dict[str, Any]:
        return task_data.listing(user, conn_id, status, dag_id, tag, queue, limit)

    @app.post("/api/tasks/{checkmate_task_id}/actions")
    async def action(request: Request, user: User, checkmate_task_id: str) -> dict[str, Any]:
        if "application/json" not in request.headers.get("content-type", ""):
            # A cross-site form cannot send JSON without CORS allowing it: this keeps actions same-origin.
            raise HTTPException(415, "send the action as JSON (content-type application/json)")
        body = await request.json()
        if not isinstance(body, dict):
            raise HTTPException(400, 'send a JSON object: {"action": ..., "dag_id": ..., "conn_id": ...}')
        return task_data.act(user, checkmate_task_id, body)

    return app
