"""Reset a task by rewriting its stored statuses: no stage classes, no user code, any task.

The way out of every stuck task (``checkmate reset``): a stopped stage becomes runnable again, or a
task restarts from a named stage. A stage reset to CREATED keeps only its history: its next bind
takes the template's state, so a stage whose stored state no longer parses (a field's type changed)
restarts too, while the COMPLETE stages before it are kept as stored. A reset from a stage also lets
the next bind adopt the (edited) definition from that stage on. Stages are written back to front and
the task record last, so a reset cut short by a crash can simply be made again.
"""

import json
from datetime import datetime, timezone
from typing import Any

from airflow_checkmate.checkmate import names
from airflow_checkmate.checkmate.exceptions import PersistenceDataNotFoundException, TaskEngineException
from airflow_checkmate.checkmate.io.base import Fence, TaskIO
from airflow_checkmate.checkmate.models import TaskEngineState, TaskEvent
from airflow_checkmate.checkmate.status import StageStatus, check_sequence, overall_status

S = StageStatus


def _read_stage(io: TaskIO, obj: str, stage_name: str) -> dict[str, Any] | None:
    """The stored stage as a JSON object, or None when nothing (or nothing readable) is stored."""
    if not io.exists(obj):
        return None
    try:
        doc = json.loads(io.read_bytes(obj))
    except (ValueError, PersistenceDataNotFoundException):
        return None
    if not isinstance(doc, dict) or doc.get("stage_name") != stage_name:
        return None
    return doc


def _status(doc: dict[str, Any] | None) -> StageStatus:
    try:
        return StageStatus(doc["status"]) if doc else S.CREATED
    except (KeyError, ValueError):
        return S.UNBOUND  # unreadable: only a reset from this stage (or before) can rewrite it


def _entry(status: StageStatus, message: str) -> dict[str, Any]:
    stamp = datetime.now(timezone.utc).isoformat()
    return {"status": status.value, "message": message, "begin_ts": stamp, "end_ts": stamp, "attempt": 0}


def reset_stored(io: TaskIO, task_id: str, stage_name: str | None, fence: Fence | None, by: str) -> tuple[str, str]:
    """Reset the stored task (the caller holds its lock); return (what was done, the new task status)."""
    task_obj = names.task_obj_name(task_id)
    if not io.exists(task_obj):
        raise TaskEngineException(f"no stored task {task_id!r} at {io.base_url}; nothing to reset")
    record = TaskEngineState[Any].model_validate_json(io.read_bytes(task_obj))
    stage_names = record.stage_names
    docs = [_read_stage(io, names.stage_obj_name(task_id, n), n) for n in stage_names]
    statuses = [_status(d) for d in docs]
    if stage_name is None:
        index = next((i for i, s in enumerate(statuses) if s in (S.ERROR, S.CANCELED)), None)
        if index is None:
            shown = ", ".join(f"{n}={s.value}" for n, s in zip(stage_names, statuses, strict=True))
            raise TaskEngineException(
                f"task {task_id!r} has no ERROR or CANCELED stage to reset ({shown}); restart it from a stage "
                f"with `checkmate reset {task_id} --stage NAME`"
            )
        plan = [(index, S.RETRY)] + [(i, S.CREATED) for i in range(index + 1, len(stage_names))]
        what = f"reset the stopped stage {stage_names[index]!r} (RETRY, its attempts back to 0)"
    else:
        if stage_name not in stage_names:
            raise TaskEngineException(f"task {task_id!r} has no stage {stage_name!r}; stages: {', '.join(stage_names)}")
        index = stage_names.index(stage_name)
        plan = [(i, S.CREATED) for i in range(index, len(stage_names))]
        what = f"reset from stage {stage_name!r} (it and every later stage restart from their templates)"
    new = list(statuses)
    for i, status in plan:
        new[i] = status
    check_sequence(new, stage_names)
    for i, status in reversed(plan):
        old, doc = statuses[i], docs[i]
        obj = names.stage_obj_name(task_id, stage_names[i])
        if doc is None and status is S.CREATED and not io.exists(obj):
            continue  # nothing stored: the template's state it is
        message = f"reset with {by} (was {old.value}, {(doc or {}).get('attempts', 0)} attempt(s))"
        history = [*list((doc or {}).get("history") or []), _entry(status, message)]
        if status is S.CREATED:
            doc = {"stage_name": stage_names[i], "status": status.value, "attempts": 0, "history": history}
        else:
            doc = {**(doc or {}), "status": status.value, "attempts": 0, "history": history}
        io.write(obj, json.dumps(doc).encode(), fence=fence)
    io.remove(names.cancel_obj_name(task_id), fence=fence)
    if stage_name is not None:
        record.redefine_from = min(index, record.redefine_from if record.redefine_from is not None else index)
        if index == 0:
            record.inputs_fingerprint = None  # nothing computed is kept: the next bind's inputs are adopted
    record.history.append(TaskEvent(event="reset", message=f"{what}, with {by}"))
    io.write(task_obj, record.__pydantic_serializer__.to_json(record), fence=fence)
    return what, overall_status(new).value
