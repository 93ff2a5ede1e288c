"""What stage state can be stored: find the field that cannot become JSON, and refuse such templates early.

Stage state is stored as JSON through pydantic. A value pydantic cannot serialise (a lock, a file, a
client, a str with lone surrogates) must never leave a stage RUNNING behind an opaque
PydanticSerializationError: the engine turns it into :class:`StateNotStorable` naming the field and
its type, and templates are checked when they are built, at DAG parse in Airflow.
"""

from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter
from pydantic.errors import PydanticInvalidForJsonSchema
from pydantic_core import PydanticSerializationError, to_json

from airflow_checkmate.checkmate.exceptions import StateNotStorable

HOW_TO_FIX = (
    "Keep stage state to JSON types (str, int, float, bool, None, lists, dicts), pydantic models, datetimes "
    "and bytes (stored as base64); keep handles such as locks, files and clients out of it (a local variable "
    "or a pydantic PrivateAttr)"
)

_ANY_TYPE = ConfigDict(arbitrary_types_allowed=True)


def _leaf_type(value: Any) -> str:
    """The type name of the first value inside ``value`` that pydantic cannot serialise to JSON."""
    children: list[Any] = []
    if isinstance(value, dict):
        children = [*value.keys(), *value.values()]
    elif isinstance(value, (list, tuple, set, frozenset)):
        children = list(value)
    for child in children:
        try:
            _to_json(child)
        except PydanticSerializationError:
            return _leaf_type(child)
    return f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")


def _to_json(value: Any) -> None:
    to_json(value, inf_nan_mode="constants", bytes_mode="base64")


def unstorable(state: BaseModel, where: str, cause: BaseException) -> StateNotStorable:
    """The error naming the field of ``state`` that cannot be serialised (``where``: task and stage)."""
    for name in type(state).model_fields:
        try:
            state.model_dump_json(include={name})
        except PydanticSerializationError as exc:
            return StateNotStorable(
                f"{where}: state field {name!r} holds a {_leaf_type(getattr(state, name))}, which cannot be "
                f"stored as JSON ({exc}). {HOW_TO_FIX}"
            )
    return StateNotStorable(f"{where}: the state cannot be stored as JSON ({cause}). {HOW_TO_FIX}")


@cache
def check_state_class(state_class: type[BaseModel]) -> None:
    """Refuse a state class with a field whose type has no JSON form (checked once per class)."""
    try:
        state_class.model_json_schema(mode="serialization")
    except PydanticInvalidForJsonSchema as exc:
        field, kind = "", str(exc).split("\n")[0]
        for name, info in state_class.model_fields.items():
            try:
                TypeAdapter[Any](info.annotation or Any, config=_ANY_TYPE).json_schema(mode="serialization")
            except PydanticInvalidForJsonSchema:
                field, kind = f" {name!r}", repr(info.annotation)
                break
        raise StateNotStorable(
            f"state class {state_class.__module__}.{state_class.__qualname__}: field{field} has a type that "
            f"cannot be stored as JSON ({kind}). {HOW_TO_FIX}"
        ) from None


def check_template_state(state: BaseModel, where: str) -> None:
    """Refuse a template state whose class or initial values cannot be stored."""
    check_state_class(type(state))
    try:
        state.model_dump_json()
    except PydanticSerializationError as exc:
        raise unstorable(state, where, exc) from None
