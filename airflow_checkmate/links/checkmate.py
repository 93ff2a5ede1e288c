"""The CheckMate task id of an Airflow task instance, and the extra link to its stage state."""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from airflow.sdk import BaseOperator, BaseOperatorLink

from airflow_checkmate.checkmate.settings import DEFAULT_CONN_ID

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def derive_checkmate_task_id(dag_id: str, task_id: str, run_id: str, map_index: int = -1) -> str:
    """The default CheckMate task id of an Airflow task instance: the same for every try and clear of a run.

    Readable (dag, task, run) where the engine's character set allows, plus a hash of the exact key so
    two runs whose ids differ only in other characters never share a task.
    """
    key = f"{dag_id}\n{task_id}\n{run_id}\n{map_index}"
    readable = _UNSAFE.sub("_", f"{dag_id}.{task_id}.{run_id}" + (f".{map_index}" if map_index >= 0 else ""))
    readable = re.sub(r"\.{2,}", ".", readable).strip(".-_")[:160]
    return f"{readable or 'task'}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def state_url(checkmate_task_id: str, checkmate_conn_id: str, dag_id: str) -> str:
    """Where the provider's plugin shows a task's stage state, relative to the Airflow UI."""
    query = urlencode({"dag_id": dag_id, "conn_id": checkmate_conn_id})
    return f"/checkmate/tasks/{checkmate_task_id}?{query}"


class CheckMateStateLink(BaseOperatorLink):
    """Extra link to the CheckMate task's stage state (served by the provider's plugin)."""

    name = "CheckMate state"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        task_id = getattr(operator, "checkmate_task_id", None) or derive_checkmate_task_id(
            ti_key.dag_id, ti_key.task_id, ti_key.run_id, ti_key.map_index
        )
        conn_id = getattr(operator, "checkmate_conn_id", DEFAULT_CONN_ID)
        return state_url(task_id, conn_id, ti_key.dag_id)
