"""What the ``checkmate`` command prints: aligned tables for people, ``--json`` for scripts."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from airflow_checkmate.checkmate.registry import TaskRecord
from airflow_checkmate.checkmate.service import Outcome, TaskDetails

EXIT_FAILED = 1


def _when(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def _json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def print_records(records: Sequence[TaskRecord], as_json: bool) -> None:
    """``checkmate list``: one line per task (times in UTC)."""
    if as_json:
        _json([record.model_dump(mode="json") for record in records])
        return
    if not records:
        print("no tasks match")
        return
    rows = [
        [
            r.task_id,
            str(r.status) + (" (cleaned)" if r.cleaned else ""),
            f"{r.stages_done}/{r.stages_total}",
            r.current_stage or "",
            r.queue,
            ",".join(r.tags),
            _when(r.updated_at),
            r.lock_holder or "",
        ]
        for r in records
    ]
    print(_table(["TASK_ID", "STATUS", "DONE", "CURRENT", "QUEUE", "TAGS", "UPDATED (UTC)", "LOCK HOLDER"], rows))


def print_details(details: TaskDetails, dump: str | None, as_json: bool) -> None:
    """``checkmate show``: the registry row, the lock holder, each stage's status, attempts and last message."""
    record, snapshot, lease = details.record, details.snapshot, details.lease
    if as_json:
        _json(
            {
                "record": record.model_dump(mode="json"),
                "stored": snapshot.model_dump(mode="json") if snapshot else None,
                "lease": lease.model_dump(mode="json") if lease else None,
                "holder_state": details.holder_state,
                "dump": dump,
            }
        )
        return
    fields = [
        ("task id", record.task_id),
        ("status", f"{snapshot.status} (stored)" if snapshot else f"{record.status} (registry; nothing stored)"),
        ("description", record.description or ""),
        ("queue", record.queue),
        ("tags", ", ".join(record.tags)),
        ("storage", record.base_url),
        ("factory", record.checkmate_factory or "(none: cannot be rebuilt)"),
        ("created", f"{_when(record.created_at)} UTC"),
        ("updated", f"{_when(record.updated_at)} UTC"),
        ("cleaned", "yes" if record.cleaned else "no"),
        ("lock", f"{lease.describe()} [{details.holder_state}]" if lease else "not locked"),
    ]
    print("\n".join(f"{name + ':':<13}{value}" for name, value in fields))
    if snapshot is not None:
        print()
        rows = [
            [f"{i}/{len(snapshot.stages)}", s.stage_name, str(s.status), str(s.attempts), s.last_message[:100]]
            for i, s in enumerate(snapshot.stages, 1)
        ]
        print(_table(["#", "STAGE", "STATUS", "ATTEMPTS", "LAST MESSAGE"], rows))
    if dump is not None:
        print()
        print(dump)


def print_outcomes(outcomes: Sequence[Outcome], as_json: bool) -> int:
    """One line per task acted on; the exit code is 1 if any of them failed."""
    if as_json:
        _json([dataclasses.asdict(outcome) for outcome in outcomes])
    elif not outcomes:
        print("no tasks match")
    else:
        print(_table(["TASK_ID", "ACTION", "RESULT"], [[o.task_id, o.action, o.message] for o in outcomes]))
    return EXIT_FAILED if any(outcome.failed for outcome in outcomes) else 0
