"""Validation of task ids and stage names, and the names of a task's stored objects.

Every id and name is checked here before any storage call, so no id can reach outside the base.
A task's objects live under ``<task_id>/``:

- ``task.json``: the task-level record (stage names, template classes, events);
- ``<stage_name>.stage.json``: one per stage that has been started;
- ``task.lock``: the bind lease;
- ``cancel.json``: a cancel request from outside, noticed by the running engine.
"""

import re
import uuid

from airflow_checkmate.checkmate.exceptions import TaskEngineException

STAGE_NAME_MAX_LENGTH = 150
TASK_ID_MAX_LENGTH = 200

TASK_OBJECT = "task.json"
LOCK_OBJECT = "task.lock"
CANCEL_OBJECT = "cancel.json"
STAGE_SUFFIX = ".stage.json"

_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")


def _check(kind: str, value: object, max_length: int) -> str:
    if not isinstance(value, str):
        raise TaskEngineException(f"{kind} must be a string, got {type(value).__name__}")
    problem = ""
    if not value:
        problem = "it is empty"
    elif len(value) > max_length:
        problem = f"it is {len(value)} characters long (at most {max_length})"
    elif not _NAME_RE.fullmatch(value):
        problem = "only letters, digits, '.', '_' and '-' are allowed"
    elif ".." in value:
        problem = "'..' is not allowed"
    elif value[0] in ".-":
        problem = "it may not start with '.' or '-'"
    if problem:
        raise TaskEngineException(f"invalid {kind} {value[:80]!r}: {problem}")
    return value


def validate_task_id(task_id: object) -> str:
    """Return ``task_id`` if it is a safe task id, else raise TaskEngineException saying why."""
    return _check("task id", task_id, TASK_ID_MAX_LENGTH)


def validate_stage_name(stage_name: object) -> str:
    """Return ``stage_name`` if it is a safe stage name, else raise TaskEngineException saying why."""
    return _check("stage name", stage_name, STAGE_NAME_MAX_LENGTH)


def new_task_id() -> str:
    """A fresh random task id."""
    return uuid.uuid4().hex


def task_prefix(task_id: str) -> str:
    """The prefix every stored object of the task starts with."""
    return f"{task_id}/"


def task_obj_name(task_id: str) -> str:
    return f"{task_id}/{TASK_OBJECT}"


def lock_obj_name(task_id: str) -> str:
    return f"{task_id}/{LOCK_OBJECT}"


def cancel_obj_name(task_id: str) -> str:
    return f"{task_id}/{CANCEL_OBJECT}"


def stage_obj_name(task_id: str, stage_name: str) -> str:
    return f"{task_id}/{stage_name}{STAGE_SUFFIX}"


def validate_obj_name(obj_name: str) -> list[str]:
    """Split an object name into its parts, refusing anything that could leave the storage base."""
    parts = obj_name.split("/") if isinstance(obj_name, str) else []
    if not parts or any(not p or p in (".", "..") or not _NAME_RE.fullmatch(p) for p in parts):
        raise TaskEngineException(f"invalid object name {str(obj_name)[:120]!r}")
    return parts
