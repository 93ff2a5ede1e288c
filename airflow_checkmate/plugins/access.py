"""Who may see and act on a CheckMate task: Airflow's user, auth manager and audit log, as Airflow's endpoints use them.

Reading a task needs what reading the DAG's task instances needs (``GET``); cancel, reset and unlock need what
editing them needs (``PUT``, like ``PATCH .../taskInstances/...``). Both pass the DAG's team, as Airflow's
``requires_access_dag`` does. Every action, allowed or refused, is written to Airflow's audit log.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import HTTPException, Request

from airflow_checkmate.plugins.airflow_side import team_of

Method = Literal["GET", "PUT"]


class NotAuthenticated(Exception):
    """No valid Airflow login on the request: pages redirect to the login page, JSON answers 401."""


async def current_user(request: Request) -> Any:
    """Airflow's authenticated user (bearer token or the UI's session cookie)."""
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    try:
        return await get_user(request, None, await bearer_scheme(request))
    except HTTPException as exc:
        if exc.status_code in (401, 403):
            raise NotAuthenticated(str(exc.detail)) from exc
        raise


def is_authorized(user: Any, dag_id: str, method: Method) -> bool:
    """Whether Airflow lets ``user`` read (GET) or edit (PUT) the task instances of ``dag_id``."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    return bool(
        get_auth_manager().is_authorized_dag(
            method=method,
            user=user,
            access_entity=DagAccessEntity.TASK_INSTANCE,
            details=DagDetails(id=dag_id, team_name=team_of(dag_id)),
        )
    )


def may_read_all(user: Any) -> bool:
    """Whether the user may read the task instances of every DAG (needed for tasks that name no DAG)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity

    return bool(
        get_auth_manager().is_authorized_dag(method="GET", user=user, access_entity=DagAccessEntity.TASK_INSTANCE)
    )


def readable_dag_ids(user: Any) -> set[str]:
    """The DAGs whose task instances the user may read."""
    from airflow.api_fastapi.app import get_auth_manager

    return set(get_auth_manager().get_authorized_dag_ids(user=user, method="GET"))


def require(user: Any, dag_id: str, method: Method) -> None:
    if not is_authorized(user, dag_id, method):
        what = "read" if method == "GET" else "edit (cancel, reset, unlock)"
        raise HTTPException(
            status_code=403,
            detail=f"Airflow does not allow you to {what} the task instances of DAG {dag_id!r}; ask an admin for "
            "a role that can",
        )


def audit(user: Any, event: str, dag_id: str, run_id: str | None, task_id: str | None, extra: dict[str, Any]) -> None:
    """One row in Airflow's audit log (Browse > Audit Log), as Airflow's own ``action_logging`` writes it."""
    from airflow.models import Log
    from airflow.utils.session import create_session

    with create_session() as session:
        session.add(
            Log(
                event=event,
                task_instance=None,
                owner=user.get_name() if user else "anonymous",
                owner_display_name=user.get_name() if user else "",
                extra=json.dumps(extra, default=str),
                dag_id=dag_id,
                task_id=task_id,
                run_id=run_id,
            )
        )


def login_url(request: Request) -> str:
    """Airflow's login page, coming back to this page afterwards."""
    from airflow.api_fastapi.app import get_auth_manager

    return str(get_auth_manager().get_url_login(next_url=str(request.url)))
