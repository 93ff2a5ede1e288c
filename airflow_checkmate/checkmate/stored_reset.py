"""Reset a task by rewriting its stored statuses: no stage classes, no user code, any task.

The way out of every stuck task (``checkmate reset``): a stopped stage becomes runnable again, or a
task restarts from a named stage. A stage reset to CREATED keeps only its history: its next bind
takes the template's state, so a stage whose stored state no longer parses (a field's type changed)
restarts too, while the COMPLETE stages before it are kept as stored. A reset from a stage also lets
the next bind adopt the (edited) definition from that stage on. The reset is one checkpoint, its stages
back to front and the task record last, so a reset cut short by a crash can simply be made again.
"""

import json
from datetime import datetime, timezone
from typing import Any

from airflow_checkmate.checkmate.exceptions import PersistenceDataNotFoundException, TaskEngineException
from airflow_checkmate.checkmate.io.base import Fence, TaskIO
from airflow_checkmate.checkmate.models import TaskEvent
from airflow_checkmate.checkmate.status import STOPPED_STATUSES, StageStatus, check_sequence, overall_status
from airflow_checkmate.checkmate.store import TaskStore, Write

S = StageStatus


def _read_stage(store: TaskStore, stage_name: str, raw: bytes | None) -> dict[str, Any] | None:
    """The stored stage as a JSON object, or None when nothing (or nothing readable) is stored."""
    if raw is None:
        return None
    try:
        doc = store.parse_json(store.stage_obj(stage_name), raw)
    except PersistenceDataNotFoundException:
        return None
    return doc if doc.get("stage_name") == stage_name else None


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
    store = TaskStore(io, task_id)
    stored = store.load()
    record = stored.record
    if record is None:
        raise TaskEngineException(f"no stored task {task_id!r} at {io.base_url}; nothing to reset")
    stage_names = record.stage_names
    docs = [_read_stage(store, n, stored.stages.get(n)) for n in stage_names]
    statuses = [_status(d) for d in docs]
    if stage_name is None:
        index = next((i for i, s in enumerate(statuses) if s in STOPPED_STATUSES), None)
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
    writes: list[Write] = []  # back to front, the record last: every prefix of the checkpoint is a valid task
    for i, status in reversed(plan):
        old, doc = statuses[i], docs[i]
        if doc is None and status is S.CREATED and stage_names[i] not in stored.stages:
            continue  # nothing stored: the template's state it is
        message = f"reset with {by} (was {old.value}, {(doc or {}).get('attempts', 0)} attempt(s))"
        history = [*list((doc or {}).get("history") or []), _entry(status, message)]
        if status is S.CREATED:
            doc = {"stage_name": stage_names[i], "status": status.value, "attempts": 0, "history": history}
        else:
            doc = {**(doc or {}), "status": status.value, "attempts": 0, "history": history}
        writes.append((store.stage_obj(stage_names[i]), json.dumps(doc).encode()))
    writes.append(store.cancel_removal())
    if stage_name is not None:
        record.redefine_from = min(index, record.redefine_from if record.redefine_from is not None else index)
        if index == 0:
            record.inputs_fingerprint = None  # nothing computed is kept: the next bind's inputs are adopted
    record.history.append(TaskEvent(event="reset", message=f"{what}, with {by}"))
    store.commit([*writes, store.record_write(record)], fence)
    return what, overall_status(new).value
