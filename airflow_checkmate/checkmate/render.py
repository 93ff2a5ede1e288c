"""Markdown rendering of a task's stages, from memory or from storage, for logs, tests and people."""

import json
from typing import TYPE_CHECKING, Any, Literal

from colorama import Style

from airflow_checkmate.checkmate.exceptions import PersistenceDataNotFoundException, TaskEngineException
from airflow_checkmate.checkmate.models import BaseStageState
from airflow_checkmate.checkmate.store import TaskStore

if TYPE_CHECKING:
    from airflow_checkmate.checkmate.checkpoint import CheckpointMixin
    from airflow_checkmate.checkmate.io.base import TaskIO


def _paint(text: str, color: str | None) -> str:
    return f"{color}{text}{Style.RESET_ALL}" if color else text


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _stored_state(engine: "CheckpointMixin[Any, Any]", index: int) -> BaseStageState[Any]:
    stage = engine.task_state.stage_templates[index]
    return engine.read_stored_state(stage) or engine.fresh_state(stage.stage_name)


def render_stages(
    engine: "CheckpointMixin[Any, Any]",
    source: Literal["memory", "persistence"],
    color: str | None,
    basenames_only: bool,
    source_in_heading: bool,
) -> str:
    """Render every stage (status, attempts, history, state as JSON) and the task's stored objects."""
    if source not in ("memory", "persistence"):
        raise TaskEngineException(f"source must be 'memory' or 'persistence', got {source!r}")
    stages = engine.task_state.stage_templates
    total = len(stages)

    store = engine.store

    def show(obj: str) -> str:
        url = store.url(obj)
        return url.rsplit("/", 1)[-1] if basenames_only else url

    heading = f"# Task `{engine.task_id}`"
    if source_in_heading:
        heading += f" ({source})"
    lines = [_paint(heading, color), ""]
    for index, stage in enumerate(stages):
        state = stage.state if source == "memory" else _stored_state(engine, index)
        lines += [
            _paint(f"## Stage {index + 1}/{total}: {stage.stage_name} — {state.status}", color),
            "",
        ]
        if stage.description:
            lines.append(f"- description: {stage.description}")
        lines += [
            f"- status: {state.status}",
            f"- attempts: {state.attempts}",
            f"- object: {show(store.stage_obj(stage.stage_name))}",
            "",
        ]
        if state.history:
            lines += ["| # | status | attempt | begin | end | message |", "|---|---|---|---|---|---|"]
            for n, entry in enumerate(state.history, 1):
                end = entry.end_ts.isoformat() if entry.end_ts else ""
                lines.append(
                    f"| {n} | {entry.status} | {entry.attempt} | {entry.begin_ts.isoformat()} | {end} | "
                    f"{_cell(entry.message)} |"
                )
            lines.append("")
        payload = state.model_dump(mode="json", exclude={"history", "stage_name", "status", "attempts"})
        lines += ["```json", json.dumps(payload, indent=2, sort_keys=True), "```", ""]
    lines += [_paint("## Stored objects", color), ""]
    stored = store.objects()
    lines += [f"- {show(obj)}" for obj in stored] or ["- (none)"]
    return "\n".join(lines) + "\n"


def render_table(engine: "CheckpointMixin[Any, Any]") -> str:
    """A compact Markdown table of the stages (no state): what a log needs after every run."""
    rows = ["| # | stage | status | attempts | last change |", "|---|---|---|---|---|"]
    stages = engine.task_state.stage_templates
    for index, stage in enumerate(stages, 1):
        state = stage.state
        last = _cell(state.history[-1].message[:160]) if state.history else ""
        rows.append(f"| {index}/{len(stages)} | {stage.stage_name} | {state.status} | {state.attempts} | {last} |")
    return "\n".join(rows) + "\n"


def render_stored(io: "TaskIO", task_id: str, note: str = "") -> str:
    """The task's stored stages as Markdown, read as plain JSON: for a task whose stage classes are not at hand."""
    store = TaskStore(io, task_id)
    raw = store.read(store.task_obj)
    if raw is None:
        raise TaskEngineException(f"no stored task {task_id!r} at {io.base_url}")
    stage_names = store.parse_json(store.task_obj, raw).get("stage_names", [])
    lines = [f"# Task `{task_id}` (stored JSON)", ""] + ([note, ""] if note else [])
    for index, name in enumerate(stage_names):
        doc: Any
        try:
            stage_raw = store.read_stage(name)
            doc = None if stage_raw is None else store.parse_json(store.stage_obj(name), stage_raw)
        except PersistenceDataNotFoundException as exc:
            doc = {"unreadable": str(exc)}
        status = doc.get("status", "?") if isinstance(doc, dict) else "CREATED (nothing stored)"
        lines += [f"## Stage {index + 1}/{len(stage_names)}: {name} — {status}", ""]
        lines += ["```json", json.dumps(doc, indent=2, sort_keys=True), "```", ""]
    lines += ["## Stored objects", ""]
    lines += [f"- {store.url(obj)}" for obj in store.objects()] or ["- (none)"]
    return "\n".join(lines) + "\n"
