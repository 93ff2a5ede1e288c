"""State that goes in comes out: NaN/inf and bytes round-trip; what cannot be stored is refused, early or clearly.

Each test stores state through a real engine (file storage) and reads it back through a second engine that binds
the stored task, as the next Airflow try does.
"""

import dataclasses
import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import ConfigDict, Field, ValidationError

from airflow_checkmate.checkmate import (
    BaseStage,
    BaseStageState,
    CheckMate,
    CheckMateEngine,
    RetryPolicy,
    StageStatus,
    TaskEngineException,
    TaskIO,
    TaskIOFile,
)
from airflow_checkmate.checkmate.exceptions import StateNotStorable
from support.processes import run_python
from support.stored_objects import get_object

S = StageStatus
LOCK_TYPE = type(threading.Lock())


class Numbers(BaseStageState[float]):
    value: float = 0.0
    maybe: float | None = None
    series: list[float] = Field(default_factory=list)
    by_name: dict[str, float] = Field(default_factory=dict)
    anything: Any = None
    blob: bytes = b""


class Fill(BaseStage[Numbers]):
    """s1 stores the special values; s2 fails on its first run, so the task is resumed by another engine."""

    fail_first: bool = False

    def execute_stage(self, previous_state_copy: Numbers) -> None:
        if self.stage_name == "s1":
            self.state.value, self.state.maybe = math.nan, math.nan
            self.state.series = [math.inf, -math.inf, math.nan, 1.5]
            self.state.by_name = {"nan": math.nan, "inf": math.inf}
            self.state.anything = {"x": -math.inf, "y": [math.nan]}
            self.state.blob = bytes(range(256))
            self.state.result = math.inf
            return
        if self.fail_first and self.state.attempts == 1:
            raise RuntimeError("planned failure")
        self.state.result = previous_state_copy.value


def fill_stages(fail_first: bool = True) -> list[Fill]:
    return [Fill(stage_name=name, state=Numbers(), fail_first=fail_first) for name in ("s1", "s2")]


def test_nan_infinity_and_binary_bytes_round_trip_exactly(fast_io: TaskIO) -> None:
    """Stored as JSON constants and base64: the retry binds and reads back exactly what s1 stored."""
    first = CheckMateEngine(fast_io, "special", fill_stages(), RetryPolicy.RETRY, 2)
    with first, pytest.raises(TaskEngineException, match="auto-recovered"):
        first.execute()
    second = CheckMateEngine(fast_io, "special", fill_stages(), RetryPolicy.RETRY, 2)
    with second:  # binds: nothing was stored as null in a float field
        state = second.stages[0].state
        assert math.isnan(state.value) and state.maybe is not None and math.isnan(state.maybe)
        assert state.series[:2] == [math.inf, -math.inf] and math.isnan(state.series[2]) and state.series[3] == 1.5
        assert math.isnan(state.by_name["nan"]) and state.by_name["inf"] == math.inf
        assert state.anything["x"] == -math.inf and math.isnan(state.anything["y"][0])
        assert state.blob == bytes(range(256)) and state.result == math.inf
        second.execute()
        assert math.isnan(second.task_result)
        assert second.check_sync()


def test_stored_state_stays_json_that_python_reads(base: Path) -> None:
    """What other tools read: JSON (with NaN/Infinity constants, as Python's json accepts), bytes as base64 text."""
    with CheckMateEngine(TaskIOFile(base, durable=False), "plain", fill_stages(False)) as engine:
        engine.execute()
    raw = json.loads(get_object(base, "plain/s1.stage.json") or b"")
    assert math.isnan(raw["value"]) and raw["series"][0] == math.inf
    assert isinstance(raw["blob"], str)


class Handle(BaseStageState[str]):
    anything: Any = None
    text: str = ""


class Leaky(BaseStage[Handle]):
    """Puts a value that cannot be stored into its state: a lock (nested in a dict) or a str with a lone surrogate."""

    bad: str = "lock"
    raise_too: bool = False

    def execute_stage(self, previous_state_copy: Handle) -> None:
        if self.bad == "lock":
            self.state.anything = {"ok": 1, "conn": [threading.Lock()]}
        else:
            self.state.text = "caf\udce9"  # invalid UTF-8 decoded with surrogateescape
        self.state.result = "done"
        if self.raise_too:
            raise RuntimeError("and then it failed")


@pytest.mark.parametrize(
    ("bad", "raise_too", "field", "kind"),
    [("lock", False, "anything", "_thread.lock"), ("text", False, "text", "str"), ("lock", True, "anything", "lock")],
    ids=["lock-returned", "surrogate-returned", "lock-raised"],
)
def test_unstorable_state_ends_the_stage_retry_then_error_naming_task_stage_field_and_type(
    base: Path, tmp_path: Path, bad: str, raise_too: bool, field: str, kind: str
) -> None:
    """Never left RUNNING with an opaque PydanticSerializationError: RETRY (attempts left), then ERROR, and
    ``checkmate list`` shows the status; the stored state is the one from before the attempt."""
    io, registry = TaskIOFile(base, durable=False), f"sqlite:///{tmp_path / 'registry.db'}"

    def task() -> CheckMate[Any, Any]:
        stages = [Leaky(stage_name="leak", state=Handle(), bad=bad, raise_too=raise_too)]
        return CheckMate(None, stages, "leaky", io=io, registry=registry, max_attempts=2)

    expected = rf"task 'leaky' stage 'leak': state field '{field}' holds a .*{kind}.*cannot be stored as JSON"
    with task() as engine:
        with pytest.raises(TaskEngineException, match="auto-recovered"):
            engine.execute()
        assert engine.status is S.RETRY
        assert engine.check_sync()
    with task() as engine:
        with pytest.raises(StateNotStorable, match=expected):
            engine.execute()
        stage = engine.stages[0]
        assert stage.state.status is S.ERROR and stage.state.result is None and stage.state.anything is None
        assert "StateNotStorable" in stage.state.history[-1].message
    env = {"CHECKMATE_BASE_URL": str(base), "CHECKMATE_DATABASE_URL": registry}
    listed = run_python("-m", "airflow_checkmate.cli", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(row["task_id"], row["status"]) for row in rows] == [("leaky", "ERROR")], rows


class Plain(BaseStage[Any]):
    def execute_stage(self, previous_state_copy: Any) -> None:
        pass


@dataclasses.dataclass
class DataclassState:
    rows: int = 0


class WithLock(BaseStageState[int]):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    lock: LOCK_TYPE | None = None  # type: ignore[valid-type]


def test_state_that_cannot_be_checkpointed_is_refused_when_the_stage_is_built() -> None:
    """At construction (DAG parse in Airflow), not at execute: a dataclass, a field type with no JSON form, a lock."""
    with pytest.raises(ValidationError, match=r"state must be a BaseStageState \(a pydantic model\), got .*Dataclass"):
        Plain(stage_name="a", state=DataclassState())
    with pytest.raises(ValidationError, match=r"WithLock: field 'lock' has a type that cannot be stored as JSON"):
        Plain(stage_name="a", state=WithLock())
    with pytest.raises(ValidationError, match=r"state field 'anything' holds a _thread.lock"):
        Plain(stage_name="a", state=Handle(anything={"k": threading.Lock()}))
    Plain(stage_name="a", state=Numbers(value=math.nan, blob=b"\xff"))  # storable: accepted
