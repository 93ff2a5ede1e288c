"""The JSON the CheckMate view shows: stages, attempts as timeline bars, stored state, lock and registry details.

Built from storage only (no stage classes imported, no lock taken), so it is safe while the task runs.
Times are ISO 8601 in UTC; the browser renders them in the UI's timezone. Stored state and results pass
through Airflow's secrets masker and are cut at :data:`STATE_LIMIT` characters.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Sequence
from typing import Any

from airflow_checkmate.checkmate.io.base import TaskIO
from airflow_checkmate.checkmate.lease import parse_lease
from airflow_checkmate.checkmate.models import StageStateHistoryEntry
from airflow_checkmate.checkmate.registry import TaskRecord
from airflow_checkmate.checkmate.snapshot import TaskSnapshot
from airflow_checkmate.checkmate.status import TERMINAL_STATUSES, StageStatus
from airflow_checkmate.checkmate.store import TaskStore

S = StageStatus
#: Characters of a stage's state or result shown before it is cut (the rest is left in storage).
STATE_LIMIT = 20_000
_ENDS = {S.COMPLETE: "complete", S.RETRY: "failed", S.ERROR: "failed", S.CANCELED: "canceled"}
_BOOKKEEPING = {"stage_name", "status", "attempts", "history", "result"}

#: (try_number, start, end or None) of the Airflow task instance's tries, oldest first.
Tries = Sequence[tuple[int, dt.datetime, dt.datetime | None]]


def _iso(ts: dt.datetime | None) -> str | None:
    return None if ts is None else ts.astimezone(dt.timezone.utc).isoformat()


def airflow_try(tries: Tries, start: dt.datetime) -> int | None:
    """The Airflow try whose run contains ``start`` (one second of slack for clock rounding)."""
    slack = dt.timedelta(seconds=1)
    for number, begin, end in reversed(tries):
        if begin - slack <= start and (end is None or start <= end + slack):
            return number
    return None


def attempts(history: Sequence[StageStateHistoryEntry], tries: Tries = ()) -> list[dict[str, Any]]:
    """Each attempt of a stage, from its RUNNING entry to the entry that ended it.

    ``outcome`` is complete/failed/canceled, ``running`` for the attempt in progress, or
    ``interrupted`` when the process died mid-stage (the next attempt's start closes the bar;
    the real end is unknown, so ``end_known`` is False).
    """
    found: list[dict[str, Any]] = []
    open_: dict[str, Any] | None = None
    for entry in history:
        if entry.status is S.RUNNING:
            if open_ is not None:
                open_.update(end=_iso(entry.begin_ts), outcome="interrupted", end_known=False)
            open_ = {
                "attempt": entry.attempt,
                "start": _iso(entry.begin_ts),
                "end": None,
                "end_known": False,
                "outcome": "running",
                "message": entry.message,
                "airflow_try": airflow_try(tries, entry.begin_ts),
            }
            found.append(open_)
        elif open_ is not None and entry.status in _ENDS:
            end = entry.end_ts or entry.begin_ts
            open_.update(end=_iso(end), end_known=True, outcome=_ENDS[entry.status], message=entry.message)
            open_ = None
    return found


def _cut(value: Any) -> dict[str, Any]:
    """Masked and size-limited JSON of a stored value: ``{"json": ...}`` or ``{"preview": ..., "size": n}``."""
    from airflow._shared.secrets_masker import secrets_masker

    masked = secrets_masker.redact(value)
    text = json.dumps(masked, indent=2, sort_keys=True, default=str)
    if len(text) <= STATE_LIMIT:
        return {"json": text, "size": len(text), "truncated": False}
    return {"json": text[:STATE_LIMIT], "size": len(text), "truncated": True}


def _raw_stage(store: TaskStore, stage_name: str) -> dict[str, Any]:
    raw = store.read_stage(stage_name)
    return {} if raw is None else store.parse_json(store.stage_obj(stage_name), raw)


def stages(io: TaskIO, snapshot: TaskSnapshot, tries: Tries = ()) -> list[dict[str, Any]]:
    """One row per stage: status, attempts, first start, last end, duration, last message, state, result."""
    rows = []
    store = TaskStore(io, snapshot.task_id)
    for index, view in enumerate(snapshot.stages):
        bars = attempts(view.history, tries)
        raw = _raw_stage(store, view.stage_name)
        state = {k: v for k, v in raw.items() if k not in _BOOKKEEPING}
        start = bars[0]["start"] if bars else None
        end = bars[-1]["end"] if bars and bars[-1]["end_known"] else None
        duration = None
        if start and end:
            duration = (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()
        rows.append(
            {
                "index": index + 1,
                "name": view.stage_name,
                "status": view.status.value,
                "attempts": view.attempts,
                "start": start,
                "end": end,
                "duration_s": duration,
                "last_message": view.last_message,
                "timeline": bars,
                "history": [
                    {
                        "status": h.status.value,
                        "attempt": h.attempt,
                        "begin": _iso(h.begin_ts),
                        "end": _iso(h.end_ts),
                        "message": h.message,
                    }
                    for h in view.history
                ],
                "state": _cut(state),
                "result": _cut(view.result),
            }
        )
    return rows


def lock_holder(io: TaskIO, task_id: str, tries: Tries = ()) -> dict[str, Any] | None:
    """Who holds the task's lock: host, pid, owner (with its Airflow try), heartbeat age, live/expired/dead."""
    lock = TaskStore(io, task_id).lock_obj
    raw = io.lease_read(lock)
    if not raw:
        return None
    lease = parse_lease(raw, lock)
    acquired = dt.datetime.fromtimestamp(lease.acquired_at, dt.timezone.utc)
    return {
        "host": lease.host,
        "pid": lease.pid,
        "owner": lease.owner,
        "airflow_try": airflow_try(tries, acquired),
        "acquired": _iso(acquired),
        "heartbeat_age_s": round(time.time() - lease.heartbeat_at, 1),
        "lease_s": lease.lease_seconds,
        "state": lease.holder_state(),
    }


def registry_details(record: TaskRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "description": record.description,
        "queue": record.queue,
        "tags": record.tags,
        "created": _iso(record.created_at),
        "updated": _iso(record.updated_at),
        "status": record.status.value,
        "cleaned": record.cleaned,
    }


def task_view(
    io: TaskIO,
    snapshot: TaskSnapshot,
    record: TaskRecord | None,
    tries: Tries = (),
    airflow: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything the task view shows, as JSON; ``live`` tells the page whether to keep refreshing."""
    holder = lock_holder(io, snapshot.task_id, tries)
    airflow = airflow or {}
    waiting = airflow.get("state") in ("up_for_retry", "queued", "scheduled", "running", "up_for_reschedule")
    current = snapshot.current
    return {
        "task_id": snapshot.task_id,
        "status": snapshot.status.value,
        "locked": snapshot.locked,
        "progress": {"done": snapshot.done, "total": len(snapshot.stages)},
        "current_stage": current.stage_name if current else None,
        "stages": stages(io, snapshot, tries),
        "lock": holder,
        "registry": registry_details(record),
        "airflow": airflow,
        "live": snapshot.locked or snapshot.status not in TERMINAL_STATUSES or waiting,
        "now": _iso(dt.datetime.now(dt.timezone.utc)),
    }


def list_row(record: TaskRecord, dag_id: str | None) -> dict[str, Any]:
    """One row of the task list."""
    return {
        "task_id": record.task_id,
        "dag_id": dag_id,
        "status": record.status.value,
        "queue": record.queue,
        "tags": record.tags,
        "progress": {"done": record.stages_done, "total": record.stages_total},
        "current_stage": record.current_stage,
        "lock_holder": record.lock_holder,
        "updated": _iso(record.updated_at),
        "description": record.description,
    }
