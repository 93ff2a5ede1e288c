"""The hostile inputs, defined once: ``tests/checkmate/test_bad_input.py`` asserts on them, the campaign tables them.

Each table is a list of bad values with what the message must say; each ``*_action`` / helper below is
the one way a bad value is thrown at the engine or its storage. The test parametrizes over the tables
and calls the actions inside ``pytest.raises``; :mod:`reliability.hostile_catalogue` turns the same
tables and actions into the campaign's cases. Nothing here catches what the engine raises.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow_checkmate.checkmate import (
    STAGE_NAME_MAX_LENGTH,
    TASK_ID_MAX_LENGTH,
    CheckMateEngine,
    RetryPolicy,
    TaskIO,
)
from reliability.hostile_store import (
    TASK,
    OtherStage,
    OtherState,
    S,
    Store,
    engine_for,
    stored_doc,
)
from support.stages import CounterState, JournalStage, make_stages
from support.stored_objects import get_object, put_object


class Accepted(Exception):
    """A hostile input one of several calls accepted: never an expected outcome."""


def refuse_all(
    calls: dict[str, Callable[[], object]], expect: type[BaseException] | tuple[type[BaseException], ...]
) -> None:
    """Run every call; each must raise ``expect``. Re-raises the first such error, or Accepted naming a call
    that did not raise (an error of another type propagates as it is)."""
    first: BaseException | None = None
    for name, call in calls.items():
        try:
            call()
        except expect as exc:
            first = first or exc
        else:
            raise Accepted(f"{name} accepted it")
    assert first is not None
    raise first


# ------------------------------------------------------------------------- ids and stage names

# (bad value, a word of the message that says what is wrong)
BAD_NAMES: list[tuple[str, str]] = [
    ("../x", "letters"),
    ("../../x", "letters"),
    ("../../../secret.txt", "letters"),
    ("a/b", "letters"),
    ("/abs", "letters"),
    ("..", "'..'"),
    (".", "start"),
    (".hidden", "start"),
    ("-x", "start"),
    ("a..b", "'..'"),
    ("", "empty"),
    ("tâche", "letters"),
    ("ταξ", "letters"),
    ("a\x00b", "letters"),
    ("a b", "letters"),
    (" x", "letters"),
    ("x\n", "letters"),
    ("%2e%2e", "letters"),
    ("%2e%2e%2fx", "letters"),
    ("..\\x", "letters"),
    ("a\\b", "letters"),
]
BAD_TASK_IDS = [*BAD_NAMES, ("x" * (TASK_ID_MAX_LENGTH + 1), str(TASK_ID_MAX_LENGTH))]
BAD_STAGE_NAMES = [*BAD_NAMES, ("x" * (STAGE_NAME_MAX_LENGTH + 1), str(STAGE_NAME_MAX_LENGTH))]


def value_ids(cases: list[tuple[str, str]]) -> list[str]:
    """Short printable ids of bad values (for pytest ids and table rows)."""
    return [ascii(value[:12]) + (f"..len{len(value)}" if len(value) > 12 else "") for value, _ in cases]


def task_id_calls(st: Store, task_id: str) -> dict[str, Callable[[], object]]:
    """Every public way a task id reaches the engine before a task is bound."""
    return {
        "CheckMateEngine()": lambda: CheckMateEngine(st.io, task_id, make_stages(2, str(st.journal))),
        "request_cancel()": lambda: CheckMateEngine.request_cancel(st.io, task_id, "bad id"),
    }


def stage_name_lists(st: Store, name: str) -> list[list[JournalStage]]:
    """Stage lists carrying a bad name that slipped past pydantic: model_construct, or assigned later."""
    stages = make_stages(3, str(st.journal))
    constructed = JournalStage.model_construct(stage_name=name, state=CounterState(), journal_path=str(st.journal))
    assigned = stages[2]
    assigned.stage_name = name
    return [[stages[0], constructed], [stages[0], stages[1], assigned]]


def bind_engines(st: Store, stage_lists: list[list[JournalStage]]) -> list[CheckMateEngine[Any, Any]]:
    return [CheckMateEngine(st.io, TASK, stages, RetryPolicy.RETRY, 3) for stages in stage_lists]


def duplicate_names(st: Store) -> list[JournalStage]:
    stages = make_stages(3, str(st.journal))
    stages[2].stage_name = "s1"
    return stages


# --------------------------------------------------------------------------------- storage URLs

UNKNOWN_URLS = ["hdfs://namenode/prefix", "webdav://bucket", "http://example.com/x", "ftp://host/x", "weird+file://x"]

ESCAPING_OBJECT_NAMES = [
    "a/../../etc/passwd",
    f"{TASK}/../../../../secret.txt",
    "../../../secret.txt",
    "../x",
    "..",
    ".",
    "a/./b",
    "/abs",
    "/etc/passwd",
    "a//b",
    "a/",
    "",
    "..\\..\\..\\secret.txt",
    "a/\x00",
    "%2e%2e/%2e%2e/secret.txt",
    "tâche/x",
]
ESCAPING_PREFIXES = ["../", "../x", "../../../", "a/../../", "/etc/", "t/../../", "./"]
ODD_PREFIXES = ["/", "..", "...", "%2e%2e"]  # harmless: matched against names inside the base only


def object_operations(io: TaskIO, obj: str) -> dict[str, Callable[[], object]]:
    """Every TaskIO operation that takes an object name."""
    return {
        "read": lambda: io.read(obj),
        "write": lambda: io.write(obj, "overwritten"),
        "exists": lambda: io.exists(obj),
        "remove": lambda: io.remove(obj),
        "build_url": lambda: io.build_url(obj),
        "lease_read": lambda: io.lease_read(obj),
        "lease_create": lambda: io.lease_create(obj, "{}"),
        "lease_swap": lambda: io.lease_swap(obj, "x", None),
    }


# ----------------------------------------------------------------------- corrupt stored objects


def _truncate(at: Callable[[int], int]) -> Callable[[bytes], bytes]:
    return lambda raw: raw[: at(len(raw))]


def _bad_utf8(raw: bytes) -> bytes:
    cut = raw.index(b'":"') + 3  # inside the first string value: still JSON, no longer UTF-8
    return raw[:cut] + b"\xff\xfe" + raw[cut:]


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda raw: b"",
    "truncated-1": _truncate(lambda n: 1),
    "truncated-third": _truncate(lambda n: n // 3),
    "truncated-half": _truncate(lambda n: n // 2),
    "truncated-last-byte": _truncate(lambda n: n - 1),
    "garbage": lambda raw: b"\x00\x01\x02garbage\xff\xfe\x80" * 10,
    "invalid-utf8": _bad_utf8,
    "nul-bytes": lambda raw: b"\x00" * len(raw),
    "json-list": lambda raw: b"[]",
    "json-list-of-object": lambda raw: b"[" + raw + b"]",
    "json-string": lambda raw: b'"COMPLETE"',
    "json-null": lambda raw: b"null",
    "json-number": lambda raw: b"42",
    "two-documents": lambda raw: raw + raw,
}
CORRUPTIBLE_OBJECTS = ["s1.stage.json", "s2.stage.json", "task.json"]


def _with(raw: bytes, **fields: Any) -> bytes:
    return json.dumps({**json.loads(raw), **fields}).encode()


#: name -> (object of the stored task, what is written in its place given the store and its bytes)
FOREIGN_OBJECTS: dict[str, tuple[str, Callable[[Store, bytes], bytes]]] = {
    "truncated-lock": ("task.lock", lambda st, raw: b'{"token": "trunc'),
    "other-state-class": (
        "s1.stage.json",
        lambda st, raw: OtherState.model_validate({**json.loads(raw), "priority": 3}).model_dump_json().encode(),
    ),
    "other-stage": ("s1.stage.json", lambda st, raw: get_object(st.base, f"{TASK}/s2.stage.json") or b""),
    "unbound-stage": ("s2.stage.json", lambda st, raw: b"{}"),
    "unknown-field": ("task.json", lambda st, raw: _with(raw, storage_layout="v2")),
    "schema-version-2": ("task.json", lambda st, raw: _with(raw, schema_version=2)),
    "other-task": ("task.json", lambda st, raw: _with(raw, task_id="other-task")),
    # s3 stored COMPLETE while s2 is RETRY: each object parses, the sequence is impossible
    "impossible-sequence": (
        "s3.stage.json",
        lambda st, raw: json.dumps({**stored_doc(st, "s1.stage.json"), "stage_name": "s3"}).encode(),
    ),
}


def plant(st: Store, obj: str, make: Callable[[Store, bytes], bytes]) -> Callable[[], None]:
    """Replace (or create) one object of the stored task; returns what puts the original back."""
    name = f"{TASK}/{obj}"
    original = get_object(st.base, name)
    put_object(st.base, name, make(st, original or b""))

    def restore() -> None:
        put_object(st.base, name, original)

    return restore


# -------------------------------------------------------------------------- changed definition


def stage_of(name: str, cls: type[JournalStage], journal: Path) -> JournalStage:
    return cls(stage_name=name, state=CounterState(), journal_path=str(journal))


CHANGED_DEFINITIONS: dict[str, list[tuple[str, type[JournalStage]]]] = {
    "renamed": [("s1", JournalStage), ("s2", JournalStage), ("s3-renamed", JournalStage)],
    "extra": [("s1", JournalStage), ("s2", JournalStage), ("s3", JournalStage), ("s4", JournalStage)],
    "removed": [("s1", JournalStage), ("s2", JournalStage)],
    "removed-first": [("s2", JournalStage), ("s3", JournalStage)],
    "reordered": [("s2", JournalStage), ("s1", JournalStage), ("s3", JournalStage)],
    "other-class": [("s1", JournalStage), ("s2", OtherStage), ("s3", JournalStage)],
}


def changed_engine(st: Store, change: str) -> CheckMateEngine[Any, Any]:
    return engine_for(st.io, st.journal, [stage_of(n, c, st.journal) for n, c in CHANGED_DEFINITIONS[change]])


# ------------------------------------------------------------------------- constructor arguments


def engine_with(io: TaskIO, **kwargs: Any) -> CheckMateEngine[Any, Any]:
    kwargs.setdefault("stage_templates", make_stages(2))
    return CheckMateEngine(io, TASK, **kwargs)


def _used_template() -> list[JournalStage]:
    stages = make_stages(2)
    stages[1].state.status = S.COMPLETE
    stages[1].state.attempts = 1
    return stages


BAD_CONSTRUCTOR_ARGS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "none-policy-3-attempts": ({"retry_policy": RetryPolicy.NONE, "max_attempts": 3}, ["RetryPolicy.NONE", "RETRY"]),
    "zero-attempts": ({"retry_policy": RetryPolicy.RETRY, "max_attempts": 0}, ["max_attempts", "at least 1"]),
    "negative-attempts": ({"retry_policy": RetryPolicy.RETRY, "max_attempts": -1}, ["max_attempts"]),
    "float-attempts": ({"retry_policy": RetryPolicy.RETRY, "max_attempts": 2.5}, ["max_attempts", "int"]),
    "bool-attempts": ({"max_attempts": True}, ["max_attempts", "int"]),
    "policy-as-string": ({"retry_policy": "RETRY", "max_attempts": 2}, ["retry_policy", "RetryPolicy"]),
    "no-templates-list": ({"stage_templates": []}, ["at least one stage"]),
    "no-templates-none": ({"stage_templates": None}, ["at least one stage"]),
    "not-a-stage": ({"stage_templates": [object()]}, ["BaseStage"]),
    "a-stage-class-not-instance": ({"stage_templates": [JournalStage]}, ["BaseStage"]),
    "template-with-run-state": ({"stage_templates": _used_template()}, ["'s2'", "fresh template"]),
    "negative-lock-timeout": ({"bind_lock_timeout": -1.0}, ["bind_lock_timeout", "-1.0"]),
}
BAD_IOS: dict[str, Any] = {"None": None, "path-string": "/tmp/store", "object": object()}
BAD_LEASE_SECONDS = [0, -5.0]
BAD_TIMEZONE = "Mars/Olympus"
