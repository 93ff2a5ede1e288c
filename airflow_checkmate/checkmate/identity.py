"""What makes a stored task the same task: its definition and its owner.

At the first bind the task record keeps, per stage, the name, the class path and a fingerprint of the
template's own fields and initial state, plus a fingerprint of the inputs the task was built from
(a factory's kwargs) and its owner (a generic mapping; the Airflow operator passes the dag id, task
id, run id and map index). Every later bind compares them, so a stored result is never returned for
another definition or another owner's run. Fingerprints are short digests of canonical JSON: they
name the differing field without storing (possibly large or secret) values twice.
"""

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from pydantic_core import to_jsonable_python

from airflow_checkmate.checkmate.exceptions import TaskIdentityException
from airflow_checkmate.checkmate.io.base import TaskIO
from airflow_checkmate.checkmate.models import TaskEngineState
from airflow_checkmate.checkmate.store import TaskStore

#: Stage fields that describe how a stage is shown, not what it computes; they may change freely.
PRESENTATION_FIELDS = frozenset({"stage_name", "description", "timezone", "volatile_engine_ref", "state"})
#: State fields the engine owns (run state), not part of what a template is built from.
RUN_STATE_FIELDS = frozenset({"stage_name", "status", "attempts", "history", "result"})


def string_from_callable(obj: object) -> str:
    """``module.QualName`` of a class (or of an instance's class).

    A class of the script being run (``__main__``, e.g. ``python dag.py`` calling ``dag.test()``) is
    named by the script's module name, as Airflow's own runs of the same file name it.
    """
    cls = obj if isinstance(obj, type) else type(obj)
    module = cls.__module__
    if module == "__main__":
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        file = getattr(main, "__file__", None)
        if spec is not None and spec.name and spec.name != "__main__":
            module = spec.name
        elif file:
            module = Path(file).stem
    return f"{module}.{cls.__qualname__}"


def comparable_class_path(path: str) -> str:
    """Drop the per-path prefix Airflow gives modules of DAG files, so a moved DAG file still matches."""
    if path.startswith("unusual_prefix_"):
        _, _, rest = path[len("unusual_prefix_") :].partition("_")
        return rest
    return path


def _opaque(value: object) -> str:
    """A value JSON cannot hold is identified by its type only (never by a repr with an address)."""
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def digest(value: object) -> str:
    """A short digest of ``value`` as canonical JSON (sorted keys; NaN and infinities as such)."""
    plain = to_jsonable_python(value, fallback=_opaque, inf_nan_mode="constants")
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_fingerprint(template: Any) -> dict[str, str]:
    """``{field: digest}`` of a stage template's own fields and of its initial state (``state.<field>``).

    A stage class may list fields that do not change what it computes (a timeout, a poll interval)
    in a ``checkmate_identity_exclude`` class variable; they may then change between tries.
    """
    exclude = PRESENTATION_FIELDS | frozenset(getattr(type(template), "checkmate_identity_exclude", ()))
    prints = {name: digest(getattr(template, name)) for name in type(template).model_fields if name not in exclude}
    state = template.state
    prints.update(
        {
            f"state.{name}": digest(getattr(state, name))
            for name in type(state).model_fields
            if name not in RUN_STATE_FIELDS
        }
    )
    return prints


def inputs_fingerprint(inputs: dict[str, Any]) -> dict[str, str]:
    """``{key: digest}`` of what the task was built from besides its templates (e.g. ``factory_kwargs``)."""
    prints: dict[str, str] = {}
    for key, value in inputs.items():
        if isinstance(value, dict):
            prints.update({f"{key}.{k}": digest(v) for k, v in value.items()})
            prints.setdefault(key, digest({}))
        else:
            prints[key] = digest(value)
    return prints


def _field_changes(stored: dict[str, str], given: dict[str, str]) -> list[str]:
    changes = [f"{f} changed" for f in sorted(stored.keys() & given.keys()) if stored[f] != given[f]]
    changes += [f"{f} removed" for f in sorted(stored.keys() - given.keys())]
    changes += [f"{f} added" for f in sorted(given.keys() - stored.keys())]
    return changes


def definition_differences(
    record: TaskEngineState[Any], mine: TaskEngineState[Any], comparable: Any
) -> list[tuple[int, str]]:
    """(stage index, what differs) for every difference between the stored and the given definition.

    Stages from ``record.redefine_from`` on are not compared (a reset restarted them: the given
    definition is adopted for them). Index -1 is the task's inputs.
    """
    diffs: list[tuple[int, str]] = []
    stored_names, given_names = record.stage_names, mine.stage_names
    limit = record.redefine_from if record.redefine_from is not None else max(len(stored_names), len(given_names))
    for i in range(min(limit, max(len(stored_names), len(given_names)))):
        if i >= len(stored_names):
            diffs.append((i, f"stage {given_names[i]!r} was added (stage {i + 1})"))
            break
        name = stored_names[i]
        if i >= len(given_names):
            diffs.append((i, f"stage {name!r} was removed (stage {i + 1})"))
            break
        if name != given_names[i]:
            diffs.append((i, f"stage {i + 1} is {given_names[i]!r}, stored as {name!r}"))
            continue
        if comparable(record.stage_template_classes[i]) != comparable(mine.stage_template_classes[i]):
            given, was = mine.stage_template_classes[i], record.stage_template_classes[i]
            diffs.append((i, f"stage {name!r} class is {given}, stored as {was}"))
        if i < len(record.stage_fingerprints):
            for change in _field_changes(record.stage_fingerprints[i], mine.stage_fingerprints[i]):
                diffs.append((i, f"stage {name!r}: template field {change}"))
    if record.inputs_fingerprint is not None and mine.inputs_fingerprint is not None:
        for change in _field_changes(record.inputs_fingerprint, mine.inputs_fingerprint):
            diffs.append((-1, f"input {change}"))
    return diffs


def way_out(task_id: str, stage_name: str | None) -> str:
    """The CLI commands that get a task out of a refused bind; they need no stage classes."""
    reset = f"`checkmate reset {task_id} --stage {stage_name}`" if stage_name else ""
    clean = f"`checkmate clean --force --no-dry-run {task_id}`"
    if reset:
        return (
            f"To run the new definition from stage {stage_name!r} on, keeping the COMPLETE stages before "
            f"it: {reset}. To start over: {clean}"
        )
    return f"To start over: {clean}"


def _stages(state: TaskEngineState[Any]) -> str:
    return ", ".join(f"{n}({c})" for n, c in zip(state.stage_names, state.stage_template_classes, strict=False))


def check_definition(record: TaskEngineState[Any], mine: TaskEngineState[Any], comparable: Any) -> None:
    """Raise TaskIdentityException naming each difference, the stage to restart from, and the commands."""
    diffs = definition_differences(record, mine, comparable)
    if not diffs:
        return
    first = min((i for i, _ in diffs if i >= 0), default=0)
    if any(i < 0 for i, _ in diffs):
        first = 0  # every stored result was computed from the other inputs
    restart = record.stage_names[first] if first < len(record.stage_names) else None
    shown = "\n".join(f"  - {what}" for _, what in diffs[:10])
    more = f"\n  - ... and {len(diffs) - 10} more" if len(diffs) > 10 else ""
    if record.stage_names != mine.stage_names or [comparable(c) for c in record.stage_template_classes] != [
        comparable(c) for c in mine.stage_template_classes
    ]:
        more += f"\n  stored: [{_stages(record)}]\n  given:  [{_stages(mine)}]"
    raise TaskIdentityException(
        f"task {mine.task_id!r} is stored with another definition than the one given, so resuming it could "
        f"return results computed from other inputs; nothing was changed.\n{shown}{more}\n"
        f"{way_out(mine.task_id, restart)}. Or give the new definition a new task id"
    )


def _describe(owner: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(owner.items())) or "(no owner)"


def check_owner(record: TaskEngineState[Any], mine: dict[str, str], shared: bool) -> bool:
    """Whether the binder is another owner that may share the task; raise if it may not.

    An empty ``mine`` is a tool (CLI, inspection), never refused. A record without an owner (written
    before owners were recorded) is adopted by its next owner.
    """
    if not mine or not record.owner or record.owner == mine:
        return False
    if shared:
        return True
    raise TaskIdentityException(
        f"task {record.task_id!r} belongs to {_describe(record.owner)}, not to {_describe(mine)}; it was "
        "not touched. Give each run its own task id (the operator's default id does), or let runs share "
        "it explicitly (the operator's checkmate_share_across_runs=True: a COMPLETE task then returns its stored "
        f"result). {way_out(record.task_id, None)}"
    )


def stored_owner(io: TaskIO, task_id: str) -> dict[str, str] | None:
    """The owner recorded for a stored task (empty: none recorded), or None when nothing is stored."""
    record = TaskStore(io, task_id).read_record()
    return None if record is None else dict(record.owner)
