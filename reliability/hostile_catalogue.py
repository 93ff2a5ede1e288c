"""The hostile-input campaign's cases, built from the tables and actions of :mod:`reliability.hostile_cases`.

One :class:`HostileCase` per bad input: the category it belongs to, the hostile call, the exception
types the contract allows for it, whether a stored task is in place first (and must resume intact
afterwards), what is planted in storage before the call, and whether the contract says it is refused
before any storage call. The positive checks of ``test_bad_input.py`` (longest valid ids, private
file modes, random ids and names by hypothesis) and its simulated-full-disk tests are not listed here:
they are not "bad input gets an exception", and the fault campaign covers full disks in depth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from pydantic import ValidationError

from airflow_checkmate.checkmate import (
    CheckMateEngine,
    MissingStateException,
    PersistenceDataNotFoundException,
    TaskEngineException,
    TaskIO,
    TaskIOException,
    TaskIOFile,
)
from reliability import hostile_cases as hc
from reliability.hostile_store import TASK, NeedsState, Store, engine_for
from support.stages import CounterState, JournalStage, make_stages

Expect = tuple[type[BaseException], ...]
TEE: Expect = (TaskEngineException,)
PDNF: Expect = (PersistenceDataNotFoundException,)
#: What the test accepts for these two: either names the object and the problem.
FOREIGN_EXPECT: dict[str, Expect] = {
    "schema-version-2": (PersistenceDataNotFoundException, TaskEngineException),
    "other-task": (PersistenceDataNotFoundException, TaskEngineException),
    "impossible-sequence": TEE,
}


@dataclass(frozen=True)
class HostileCase:
    category: str
    case_id: str
    action: Callable[[Store], object]
    expect: Expect
    stored: bool = True
    plant: Callable[[Store], Callable[[], None]] | None = None
    before_storage: bool = False


Action = Callable[[Store], object]


# The hostile calls, one function each; ``partial`` binds the bad value (a loop's lambda would not).


def _task_id(st: Store, task_id: str) -> None:
    hc.refuse_all(hc.task_id_calls(st, task_id), TaskEngineException)


def _construct_stage(st: Store, name: str) -> object:
    return JournalStage(stage_name=name, state=CounterState())


def _bind_stage_name(st: Store, name: str) -> None:
    engines = hc.bind_engines(st, hc.stage_name_lists(st, name))
    hc.refuse_all({f"bind #{i}": e.bind for i, e in enumerate(engines)}, TaskEngineException)


def _bind_duplicates(st: Store) -> None:
    CheckMateEngine(st.io, TASK, hc.duplicate_names(st)).bind()


def _open_url(st: Store, url: str) -> object:
    return TaskIO.from_base_url(url)


def _open_a_file(st: Store) -> object:
    return TaskIO.from_base_url(str(st.root / "secret.txt"))


def _object_name(st: Store, obj: str) -> None:
    hc.refuse_all(hc.object_operations(st.io, obj), TaskEngineException)


def _list(st: Store, prefix: str) -> object:
    return st.io.list(prefix)


def _bind_stored(st: Store, **kwargs: Any) -> None:
    engine_for(st.io, st.journal, **kwargs).bind()


def _bind_changed(st: Store, change: str) -> None:
    hc.changed_engine(st, change).bind()


def _corrupt(st: Store, obj: str, corruption: Callable[[bytes], bytes]) -> Callable[[], None]:
    return hc.plant(st, obj, lambda _, raw: corruption(raw))


def _foreign(st: Store, obj: str, make: Callable[[Store, bytes], bytes]) -> Callable[[], None]:
    return hc.plant(st, obj, make)


def _engine_args(st: Store, kwargs: dict[str, Any]) -> object:
    return hc.engine_with(st.io, **kwargs)


def _engine_io(st: Store, io: Any) -> object:
    return CheckMateEngine(io, TASK, make_stages(2))


def _engine_task_id(st: Store, task_id: Any) -> object:
    return CheckMateEngine(st.io, task_id, make_stages(2))


def _lease(st: Store, seconds: float) -> object:
    return TaskIOFile(st.base, lease_seconds=seconds)


def _timezone(st: Store) -> object:
    return JournalStage(stage_name="s1", state=CounterState(), timezone=hc.BAD_TIMEZONE)


def _missing_state(st: Store) -> None:
    NeedsState(stage_name="consume").require("source", "result")


def _id_cases() -> list[HostileCase]:
    cases = []
    for (value, _), case_id in zip(hc.BAD_TASK_IDS, hc.value_ids(hc.BAD_TASK_IDS), strict=True):
        cases.append(HostileCase("task id", case_id, partial(_task_id, task_id=value), TEE, before_storage=True))
    for (value, _), case_id in zip(hc.BAD_STAGE_NAMES, hc.value_ids(hc.BAD_STAGE_NAMES), strict=True):
        construct = partial(_construct_stage, name=value)
        cases.append(HostileCase("stage name at construction", case_id, construct, (ValidationError,), False))
        bind = partial(_bind_stage_name, name=value)
        cases.append(HostileCase("stage name at bind", case_id, bind, TEE, before_storage=True))
    cases.append(HostileCase("stage name at bind", "duplicate 's1'", _bind_duplicates, TEE, before_storage=True))
    return cases


def _storage_cases() -> list[HostileCase]:
    cases = [HostileCase("storage URL", url, partial(_open_url, url=url), TEE, False) for url in hc.UNKNOWN_URLS]
    cases.append(HostileCase("storage URL", "a file, not a folder", _open_a_file, (TaskIOException,), False))
    cases.append(HostileCase("storage URL", "file://", partial(_open_url, url="file://"), (TaskIOException,), False))
    for obj in hc.ESCAPING_OBJECT_NAMES:
        action = partial(_object_name, obj=obj)
        cases.append(HostileCase("object name (8 TaskIO operations)", ascii(obj), action, TEE))
    for prefix in hc.ESCAPING_PREFIXES:
        cases.append(HostileCase("list prefix", ascii(prefix), partial(_list, prefix=prefix), TEE))
    return cases


def _stored_object_cases() -> list[HostileCase]:
    cases = []
    for obj in hc.CORRUPTIBLE_OBJECTS:
        for name, corruption in hc.CORRUPTIONS.items():
            planted = partial(_corrupt, obj=obj, corruption=corruption)
            cases.append(HostileCase("corrupt stored object", f"{obj} {name}", _bind_stored, PDNF, plant=planted))
    for name, (obj, make) in hc.FOREIGN_OBJECTS.items():
        planted = partial(_foreign, obj=obj, make=make)
        expect = FOREIGN_EXPECT.get(name, PDNF)
        cases.append(HostileCase("foreign stored object", f"{obj} {name}", _bind_stored, expect, plant=planted))
    for change in hc.CHANGED_DEFINITIONS:
        cases.append(HostileCase("stage list changed", change, partial(_bind_changed, change=change), TEE))
    force = partial(_bind_stored, force_create=True)
    cases.append(HostileCase("stage list changed", "force_create on a stored task", force, TEE))
    return cases


def _argument_cases() -> list[HostileCase]:
    category = "constructor argument"
    cases = [
        HostileCase(category, name, partial(_engine_args, kwargs=kwargs), TEE, False, None, True)
        for name, (kwargs, _) in hc.BAD_CONSTRUCTOR_ARGS.items()
    ]
    for name, io in hc.BAD_IOS.items():
        cases.append(HostileCase(category, f"io={name}", partial(_engine_io, io=io), TEE, False))
    cases.append(HostileCase(category, "task_id=42", partial(_engine_task_id, task_id=42), TEE, False, None, True))
    for lease in hc.BAD_LEASE_SECONDS:
        cases.append(HostileCase(category, f"lease_seconds={lease}", partial(_lease, seconds=lease), TEE, False))
    cases.append(HostileCase(category, f"timezone={hc.BAD_TIMEZONE}", _timezone, (ValidationError,), False))
    missing = (MissingStateException,)
    cases.append(HostileCase("stage state", "required field unset", _missing_state, missing, False))
    return cases


def catalogue() -> list[HostileCase]:
    """Every hostile case, grouped by category in table order."""
    return [*_id_cases(), *_storage_cases(), *_stored_object_cases(), *_argument_cases()]
