"""The CheckMate view's JSON from real stored tasks: attempts as timeline bars, Airflow tries, masking, the lock."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from pathlib import Path

import pytest

from airflow_checkmate.checkmate import CheckMateEngine, RetryPolicy, StageStatus, TaskEngineException, TaskIO
from airflow_checkmate.checkmate.models import StageStateHistoryEntry
from airflow_checkmate.checkmate.snapshot import read_snapshot
from airflow_checkmate.plugins import view_model
from support.stages import CounterState, JournalStage, make_stages

S = StageStatus
T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def run_twice(io: TaskIO, journal: Path) -> None:
    """s2 fails on the first run (RETRY) and completes on the second, as two Airflow tries would."""
    for _ in range(2):
        engine = CheckMateEngine(io, "ui", make_stages(3, str(journal), fail_first={"s2": 1}), RetryPolicy.RETRY, 3)
        with engine:
            try:
                engine.execute()
            except TaskEngineException:
                assert engine.status is S.RETRY


def test_attempts_end_at_the_end_of_the_attempt_not_its_start(fast_io: TaskIO, tmp_path: Path) -> None:
    run_twice(fast_io, tmp_path / "journal")
    snapshot = read_snapshot(fast_io, "ui")
    assert snapshot is not None
    rows = {row["name"]: row for row in view_model.stages(fast_io, snapshot)}
    bars = rows["s2"]["timeline"]
    assert [(b["attempt"], b["outcome"], b["end_known"]) for b in bars] == [(1, "failed", True), (2, "complete", True)]
    history = snapshot.stages[1].history
    retry, complete = (h for h in history if h.status in (S.RETRY, S.COMPLETE))
    assert bars[0]["end"] == retry.end_ts.isoformat() and bars[1]["end"] == complete.end_ts.isoformat()  # type: ignore[union-attr]
    assert rows["s2"]["start"] == bars[0]["start"] and rows["s2"]["end"] == bars[1]["end"]
    assert rows["s2"]["duration_s"] is not None and rows["s2"]["duration_s"] >= 0
    assert rows["s2"]["last_message"].startswith("completed in")
    assert json.loads(rows["s3"]["result"]["json"]) == snapshot.stages[2].result


def test_an_interrupted_attempt_ends_where_the_next_began_and_is_marked_unknown() -> None:
    history = [
        StageStateHistoryEntry(status=S.RUNNING, begin_ts=at(0), attempt=1, message="started"),
        StageStateHistoryEntry(status=S.RUNNING, begin_ts=at(30), attempt=2, message="recovered"),
        StageStateHistoryEntry(status=S.COMPLETE, begin_ts=at(30), end_ts=at(35), attempt=2),
        StageStateHistoryEntry(status=S.RETRY, begin_ts=at(40), attempt=2, message="reset from COMPLETE"),
    ]
    tries = [(1, at(-1), at(20)), (2, at(29), None)]
    bars = view_model.attempts(history, tries)
    assert [(b["outcome"], b["end_known"], b["airflow_try"]) for b in bars] == [
        ("interrupted", False, 1),
        ("complete", True, 2),
    ]
    assert bars[0]["end"] == at(30).isoformat() and bars[1]["end"] == at(35).isoformat()
    running = view_model.attempts(history[:1])
    assert running[0]["outcome"] == "running" and running[0]["end"] is None


def test_airflow_try_is_the_try_whose_run_contains_the_start() -> None:
    tries = [(1, at(0), at(10)), (2, at(20), at(30)), (3, at(40), None)]
    assert [view_model.airflow_try(tries, at(s)) for s in (5, 25, 45, 15)] == [1, 2, 3, None]


class SecretState(CounterState):
    password: str = ""
    token_list: list[str] = []
    zblob: str = ""


class SecretStage(JournalStage):
    def execute_stage(self, previous_state_copy: CounterState) -> None:
        self.state.password = "hunter2"  # type: ignore[attr-defined]
        self.state.zblob = "x" * (view_model.STATE_LIMIT + 10)  # type: ignore[attr-defined]
        self.state.result = [1]


def test_state_is_masked_like_airflow_masks_and_cut_to_the_limit(fast_io: TaskIO) -> None:
    with CheckMateEngine(fast_io, "secret", [SecretStage(stage_name="only", state=SecretState())]) as engine:
        engine.execute()
    snapshot = read_snapshot(fast_io, "secret")
    assert snapshot is not None
    state = view_model.stages(fast_io, snapshot)[0]["state"]
    assert "hunter2" not in state["json"] and '"password": "***"' in state["json"]
    assert state["truncated"] and len(state["json"]) == view_model.STATE_LIMIT < state["size"]


def test_lock_holder_while_bound(fast_io: TaskIO) -> None:
    with CheckMateEngine(fast_io, "held", make_stages(1)) as engine:
        engine.owner = "airflow d.t run r try 3"
        holder = view_model.lock_holder(fast_io, "held", [(3, T0, None)])
        assert holder is not None and holder["pid"] == os.getpid() and holder["state"] == "live"
        assert holder["heartbeat_age_s"] < 30
    assert view_model.lock_holder(fast_io, "held") is None


@pytest.mark.parametrize("status", [S.COMPLETE, S.ERROR, S.CANCELED])
def test_final_states_stop_the_refresh(fast_io: TaskIO, tmp_path: Path, status: StageStatus) -> None:
    fail = {"s1": 1} if status is S.ERROR else {}
    with CheckMateEngine(fast_io, "fin", make_stages(1, str(tmp_path / "j"), fail_first=fail)) as engine:
        if status is S.CANCELED:
            engine.cancel("test")
        else:
            with contextlib.suppress(RuntimeError):
                engine.execute()
    snapshot = read_snapshot(fast_io, "fin")
    assert snapshot is not None and snapshot.status is status
    assert view_model.task_view(fast_io, snapshot, None)["live"] is False
    assert view_model.task_view(fast_io, snapshot, None, airflow={"state": "up_for_retry"})["live"] is True
