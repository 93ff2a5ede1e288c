"""CheckMateTrigger: serialization for the triggerer, one event per terminal task, and a free event loop.

Tasks are run by a real CheckMateEngine on real files; the trigger reads them through a real
``AIRFLOW_CONN_<ID>`` connection (see tests/airflow/test_hook.py for how the Task SDK resolves it in a
plain pytest process). Coroutines are driven with ``asyncio.run`` (no pytest-asyncio needed).
"""

import asyncio
import contextlib
import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.module_loading import import_string
from airflow.triggers.base import TriggerEvent

from airflow_checkmate.checkmate import (
    CheckMateEngine,
    RetryPolicy,
    StageStatus,
    TaskEngineException,
    TaskIOFile,
)
from airflow_checkmate.checkmate.io import base as io_base
from airflow_checkmate.triggers.checkmate import CheckMateTrigger
from support.stages import CounterState, JournalStage, expected_result, make_stages, read_journal
from support.stored_objects import get_object, put_object

CONN = "cm_trigger"
POLL = 0.02
READ_DELAY = 0.4


class SlowTaskIOFile(TaskIOFile):
    """File storage whose every read (an object, or a whole task) blocks the calling thread for READ_DELAY s."""

    reads: list[tuple[float, float]] = []

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(base_url.removeprefix("slowfile://"), **kwargs)

    def read_bytes(self, obj_name: str) -> bytes:
        start = time.monotonic()
        time.sleep(READ_DELAY)
        data = super().read_bytes(obj_name)
        SlowTaskIOFile.reads.append((start, time.monotonic()))
        return data

    def read_prefix(self, prefix: str) -> dict[str, bytes]:
        start = time.monotonic()
        time.sleep(READ_DELAY)
        found = super().read_prefix(prefix)
        SlowTaskIOFile.reads.append((start, time.monotonic()))
        return found


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Storage folder behind the connection ``cm_trigger``; a private AIRFLOW_HOME."""
    path = tmp_path / "store"
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow_home"))
    monkeypatch.delenv("_AIRFLOW_PROCESS_CONTEXT", raising=False)
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN.upper()}",
        json.dumps({"conn_type": "checkmate", "extra": {"base_url": f"file://{path}", "durable": False}}),
    )
    return path


def engine_for(store: Path, task_id: str, stages: list[JournalStage], **kwargs: Any) -> CheckMateEngine[Any, Any]:
    return CheckMateEngine(TaskIOFile(store, durable=False), task_id, stages, **kwargs)


def run_engine(store: Path, task_id: str, stages: list[JournalStage], **kwargs: Any) -> StageStatus:
    """Bind, execute (its exception swallowed: the test looks at the stored status), unbind."""
    engine = engine_for(store, task_id, stages, **kwargs)
    with engine:
        with contextlib.suppress(TaskEngineException, RuntimeError):
            engine.execute()
        return engine.status


async def all_events(trigger: CheckMateTrigger, timeout: float) -> list[TriggerEvent]:
    """Every event the trigger yields until run() returns (TimeoutError if it does not in time)."""

    async def collect() -> list[TriggerEvent]:
        return [event async for event in trigger.run()]

    return await asyncio.wait_for(collect(), timeout)


def only_event(trigger: CheckMateTrigger, timeout: float = 10) -> dict[str, Any]:
    events = asyncio.run(all_events(trigger, timeout))
    assert len(events) == 1, f"a trigger fires exactly once, got {events}"
    payload = events[0].payload
    assert json.loads(json.dumps(payload)) == payload, "the payload must be plain JSON"
    return payload


def test_serialize_round_trip() -> None:
    trigger = CheckMateTrigger("dag.task.run-abc123", checkmate_conn_id="cm_x", poll_interval=2.5)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_checkmate.triggers.checkmate.CheckMateTrigger"
    assert import_string(classpath) is CheckMateTrigger
    assert kwargs == {"checkmate_task_id": "dag.task.run-abc123", "checkmate_conn_id": "cm_x", "poll_interval": 2.5}
    rebuilt = import_string(classpath)(**json.loads(json.dumps(kwargs)))
    assert rebuilt.serialize() == (classpath, kwargs)
    assert rebuilt.checkmate_task_id == "dag.task.run-abc123"
    assert (rebuilt.checkmate_conn_id, rebuilt.poll_interval) == ("cm_x", 2.5)


def test_serialize_defaults() -> None:
    _, kwargs = CheckMateTrigger("t1").serialize()
    assert kwargs["checkmate_conn_id"] == "checkmate_default"
    assert kwargs["poll_interval"] > 0
    assert CheckMateTrigger(**kwargs).serialize()[1] == kwargs


def test_kwargs_survive_airflow_serialization() -> None:
    from airflow.serialization.serialized_objects import BaseSerialization

    classpath, kwargs = CheckMateTrigger("t1", "cm_y", 0.5).serialize()
    again = BaseSerialization.deserialize(BaseSerialization.serialize(kwargs))
    assert import_string(classpath)(**again).serialize() == (classpath, kwargs)


def test_complete_task_fires_complete_with_the_result(store: Path) -> None:
    assert run_engine(store, "t-complete", make_stages(3)) is StageStatus.COMPLETE
    payload = only_event(CheckMateTrigger("t-complete", CONN, POLL))
    assert payload["status"] == "COMPLETE"
    assert payload["result"] == expected_result(3)
    assert "3/3" in payload["progress"]


def test_error_task_fires_error(store: Path) -> None:
    stages = make_stages(3, fail_first={"s2": 1})
    assert run_engine(store, "t-error", stages) is StageStatus.ERROR
    payload = only_event(CheckMateTrigger("t-error", CONN, POLL))
    assert payload["status"] == "ERROR"
    assert "1/3" in payload["progress"] and "'s2'" in payload["progress"]
    assert "planned failure" in payload["progress"]


def test_canceled_task_fires_canceled(store: Path) -> None:
    engine = engine_for(store, "t-cancel", make_stages(3))
    with engine:
        engine.cancel()
    payload = only_event(CheckMateTrigger("t-cancel", CONN, POLL))
    assert payload["status"] == "CANCELED"
    assert "0/3" in payload["progress"]


def test_corrupt_task_json_fires_failed_and_leaves_it(store: Path) -> None:
    folder = store / "t-corrupt"
    folder.mkdir(parents=True)
    put_object(folder.parent, f"{folder.name}/task.json", b"{not json")
    payload = only_event(CheckMateTrigger("t-corrupt", CONN, POLL))
    assert payload["status"] == "failed"
    assert "task.json" in payload["message"]
    assert get_object(folder.parent, f"{folder.name}/task.json") == b"{not json"


def test_undefined_connection_fires_failed_naming_it(store: Path) -> None:
    payload = only_event(CheckMateTrigger("t1", "cm_not_defined", POLL))
    assert payload["status"] == "failed"
    assert "cm_not_defined" in payload["message"]


def test_nothing_before_start_then_complete(store: Path) -> None:
    async def scenario() -> dict[str, Any]:
        waiter = asyncio.ensure_future(all_events(CheckMateTrigger("t-later", CONN, POLL), timeout=30))
        await asyncio.sleep(0.4)  # about 20 polls of a task that does not exist yet
        assert not waiter.done(), "no event for a task that has not started"
        status = await asyncio.to_thread(run_engine, store, "t-later", make_stages(2))
        assert status is StageStatus.COMPLETE
        events = await waiter
        assert len(events) == 1
        return events[0].payload

    payload = asyncio.run(scenario())
    assert payload["status"] == "COMPLETE"
    assert payload["result"] == expected_result(2)


def test_nothing_while_retry_pending(store: Path) -> None:
    stages = make_stages(2, fail_first={"s1": 1})
    assert run_engine(store, "t-retry", stages, retry_policy=RetryPolicy.RETRY, max_attempts=3) is StageStatus.RETRY
    with pytest.raises(TimeoutError):
        asyncio.run(all_events(CheckMateTrigger("t-retry", CONN, POLL), timeout=0.4))


def test_nothing_while_running_then_complete(store: Path, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    stages = [
        JournalStage(stage_name=f"s{i}", state=CounterState(), journal_path=str(journal), sleep_seconds=0.25)
        for i in range(1, 4)
    ]
    result: dict[str, StageStatus] = {}
    runner = threading.Thread(target=lambda: result.update(status=run_engine(store, "t-running", stages)))

    async def scenario() -> dict[str, Any]:
        waiter = asyncio.ensure_future(all_events(CheckMateTrigger("t-running", CONN, POLL), timeout=30))
        runner.start()
        seen_running = False
        while not waiter.done():
            ends = [w for w in read_journal(journal) if w[0] == "end"]
            if any(w[0] == "start" for w in read_journal(journal)) and len(ends) < 3:
                seen_running = True
            await asyncio.sleep(0.01)
        assert seen_running, "the trigger was never observed while the task ran"
        # The event may only follow the last stage's code finishing (the engine persists COMPLETE after).
        assert [w[1] for w in read_journal(journal) if w[0] == "end"] == ["s1", "s2", "s3"]
        events = await waiter
        assert len(events) == 1
        return events[0].payload

    try:
        payload = asyncio.run(scenario())
    finally:
        runner.join(10)
    assert result["status"] is StageStatus.COMPLETE
    assert payload["status"] == "COMPLETE"
    assert payload["result"] == expected_result(3)


def test_run_never_blocks_the_event_loop(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While each storage read blocks its thread for READ_DELAY s, an asyncio ticker keeps ticking.

    Were a read done on the event loop, the ticker would see a gap of at least READ_DELAY.
    """
    assert run_engine(store, "t-slow", make_stages(2)) is StageStatus.COMPLETE
    monkeypatch.setitem(io_base.BACKENDS, "slowfile", f"{__name__}:SlowTaskIOFile")
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN.upper()}",
        json.dumps({"conn_type": "checkmate", "extra": {"base_url": f"slowfile://{store}"}}),
    )
    monkeypatch.setattr(SlowTaskIOFile, "reads", [])

    async def scenario() -> tuple[list[float], list[TriggerEvent]]:
        ticks: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                ticks.append(time.monotonic())
                await asyncio.sleep(0.005)

        ticking = asyncio.ensure_future(ticker())
        try:
            events = await all_events(CheckMateTrigger("t-slow", CONN, POLL), timeout=30)
        finally:
            stop.set()
            await ticking
        return ticks, events

    ticks, events = asyncio.run(scenario())
    assert [e.payload["status"] for e in events] == ["COMPLETE"]
    reads = SlowTaskIOFile.reads
    assert reads, "the task is read through the slow storage"
    for start, end in reads:
        inside = sum(1 for t in ticks if start < t < end)
        assert inside >= 10, f"only {inside} ticks during a {end - start:.3f}s read: the loop was not running"
    max_gap = max(b - a for a, b in itertools.pairwise(ticks))
    assert max_gap < READ_DELAY / 2, f"event loop stalled {max_gap:.3f}s while storage reads took {READ_DELAY}s each"
