"""What the CheckMate view reads from Airflow's metadata DB: the task instance, its tries, its CheckMate task.

Runs in the api-server only (it has the ORM); imports Airflow's server modules late. The CheckMate task of a
task instance comes from the operator's "CheckMate state" extra link, which the operator pushes as XCom at the
start of every try, so it names the exact task id and connection the try used.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from airflow_checkmate.links.checkmate import CheckMateStateLink
from airflow_checkmate.plugins.view_model import Tries


@dataclass
class TaskInstanceInfo:
    """A task instance as the view needs it; ``checkmate`` is (task id, conn id) once a try has started."""

    is_checkmate: bool
    operator: str
    state: str | None = None
    try_number: int = 0
    tries: list[tuple[int, dt.datetime, dt.datetime | None]] = field(default_factory=list)
    next_try_at: dt.datetime | None = None
    checkmate: tuple[str, str] | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "operator": self.operator,
            "state": self.state,
            "try_number": self.try_number,
            "next_try_at": self.next_try_at.isoformat() if self.next_try_at else None,
            "tries": [
                {"try_number": n, "start": s.isoformat(), "end": e.isoformat() if e else None} for n, s, e in self.tries
            ],
        }


class TaskInstanceNotFound(LookupError):
    """No such DAG, task or task instance."""


def parse_state_url(url: str) -> tuple[str, str]:
    """(checkmate task id, conn id) from a URL made by :func:`airflow_checkmate.links.checkmate.state_url`."""
    parts = urlsplit(url)
    task_id = unquote(parts.path.rstrip("/").rsplit("/", 1)[-1])
    conn_id = parse_qs(parts.query).get("conn_id", ["checkmate_default"])[0]
    return task_id, conn_id


def team_of(dag_id: str) -> str | None:
    """The DAG's team, as Airflow's own ``requires_access_dag`` passes it (None when teams are off)."""
    from airflow.models.dag import DagModel

    return DagModel.get_team_name(dag_id)


def task_instance(dag_id: str, run_id: str, task_id: str, map_index: int) -> TaskInstanceInfo:
    """The task instance's operator, state, tries (start/end), next retry time and CheckMate task."""
    from airflow.models.dagbag import DBDagBag
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if run is None:
            raise TaskInstanceNotFound(f"DAG {dag_id!r} has no run {run_id!r}")
        bag = DBDagBag()
        dag = bag.get_dag_for_run(run, session=session) or bag.get_latest_version_of_dag(dag_id, session=session)
        if dag is None or task_id not in dag.task_dict:
            raise TaskInstanceNotFound(f"DAG {dag_id!r} has no task {task_id!r}")
        task = dag.get_task(task_id)
        info = TaskInstanceInfo(
            is_checkmate=CheckMateStateLink.name in (task.extra_links or []), operator=str(task.task_type)
        )
        ti = session.scalar(
            select(TaskInstance).where(
                TaskInstance.dag_id == dag_id,
                TaskInstance.run_id == run_id,
                TaskInstance.task_id == task_id,
                TaskInstance.map_index == map_index,
            )
        )
        if ti is None:
            raise TaskInstanceNotFound(f"no task instance {dag_id}.{task_id} (map index {map_index}) in run {run_id!r}")
        past = session.scalars(
            select(TaskInstanceHistory)
            .where(
                TaskInstanceHistory.dag_id == dag_id,
                TaskInstanceHistory.run_id == run_id,
                TaskInstanceHistory.task_id == task_id,
                TaskInstanceHistory.map_index == map_index,
            )
            .order_by(TaskInstanceHistory.try_number)
        ).all()
        tries: Tries = [(t.try_number, t.start_date, t.end_date) for t in [*past, ti] if t.start_date is not None]
        info.tries = sorted({n: (n, s, e) for n, s, e in tries}.values())
        info.state = None if ti.state is None else str(getattr(ti.state, "value", ti.state))
        info.try_number = int(ti.try_number or 0)
        if ti.state == "up_for_retry":
            ti.task = task
            info.next_try_at = ti.next_retry_datetime()
        if info.is_checkmate:
            url = task.get_extra_links(ti, CheckMateStateLink.name)
            if url:
                info.checkmate = parse_state_url(url)
        session.expunge_all()  # read only: nothing set above (ti.task) is written back
    return info
