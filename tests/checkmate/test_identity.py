"""What makes a stored task the same task, at the engine level: definition fingerprints and owners."""

import json
from pathlib import Path
from typing import Any

import pytest

from airflow_checkmate.checkmate import CheckMateEngine, RetryPolicy, StageStatus, TaskEngineException, TaskIO
from airflow_checkmate.checkmate.exceptions import TaskIdentityException
from support.stages import CounterState, JournalStage, expected_result, make_stages, read_journal
from support.stored_objects import get_object, objects_under, put_object

S = StageStatus
RUN_1 = {"airflow_dag_id": "d", "airflow_task_id": "t", "airflow_run_id": "run-1", "airflow_map_index": "-1"}
RUN_2 = {**RUN_1, "airflow_run_id": "run-2"}


class Scaled(JournalStage):
    """A journal stage with an input that changes what it computes."""

    factor: int = 1


def engine(
    io: TaskIO, journal: Path, owner: dict[str, str] | None = None, shared: bool = False, factor: int = 1, **inputs: Any
) -> CheckMateEngine[Any, Any]:
    stages = [
        Scaled(stage_name=f"s{i}", state=CounterState(), journal_path=str(journal), factor=factor) for i in (1, 2)
    ]
    built: CheckMateEngine[Any, Any] = CheckMateEngine(io, "task", stages, RetryPolicy.RETRY, 2)
    built.task_owner, built.shared, built.labels = dict(owner or {}), shared, dict(owner or {})
    built.inputs = inputs
    return built


def run(built: CheckMateEngine[Any, Any]) -> Any:
    with built:
        built.execute()
        return built.task_result


def starts(journal: Path) -> list[str]:
    return [w[1] for w in read_journal(journal) if w[0] == "start"]


def stored_files(base: Path) -> dict[str, bytes]:
    return objects_under(base)


def test_a_complete_task_is_refused_for_another_template_field_or_input_and_nothing_changes(
    io: TaskIO, base: Path, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    assert run(engine(io, journal, factor=2, factory_kwargs={"item": "a"})) == expected_result(2)
    before = stored_files(base)
    for changed, expect in (
        (engine(io, journal, factor=3, factory_kwargs={"item": "a"}), "stage 's1': template field factor changed"),
        (engine(io, journal, factor=2, factory_kwargs={"item": "b"}), "input factory_kwargs.item changed"),
        (engine(io, journal, factor=2, factory_kwargs={"item": "a", "more": 1}), "input factory_kwargs.more added"),
    ):
        with pytest.raises(TaskIdentityException) as info:
            changed.bind()
        assert expect in str(info.value) and "checkmate reset task --stage s1" in str(info.value)
        assert not changed.bound
    assert stored_files(base) == before
    assert run(engine(io, journal, factor=2, factory_kwargs={"item": "a"})) == expected_result(2)
    # a tool rebuilding the task (checkmate cancel) declares no inputs: it is not compared on them
    assert run(engine(io, journal, factor=2)) == expected_result(2)
    assert starts(journal) == ["s1", "s2"]


def test_test_switches_listed_in_checkmate_identity_exclude_may_change(io: TaskIO, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    first = CheckMateEngine(io, "t", make_stages(2, str(journal), fail_first={"s2": 1}), RetryPolicy.RETRY, 2)
    with first, pytest.raises(TaskEngineException, match="auto-recovered"):
        first.execute()
    with CheckMateEngine(io, "t", make_stages(2, str(journal), sleep_seconds=0.01), RetryPolicy.RETRY, 2) as second:
        second.execute()
        assert second.status is S.COMPLETE


def test_another_owner_is_refused_unless_shared_and_sharing_keeps_the_first_owner(
    io: TaskIO, base: Path, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    assert run(engine(io, journal, RUN_1)) == expected_result(2)
    before = stored_files(base)
    other = engine(io, journal, RUN_2)
    with pytest.raises(TaskIdentityException, match=r"belongs to .*airflow_run_id=run-1.*checkmate_share_across_runs"):
        other.bind()
    assert stored_files(base) == before

    assert run(engine(io, journal, RUN_2, shared=True)) == expected_result(2)
    assert run(engine(io, journal)) == expected_result(2)  # a tool (no owner) is never refused
    record = json.loads(get_object(base, "task/task.json") or b"")
    assert record["owner"] == RUN_1 and record["labels"]["airflow_run_id"] == "run-1"
    assert [e["message"] for e in record["history"] if e["event"] == "shared"] == [
        "bound by airflow_dag_id=d, airflow_map_index=-1, airflow_run_id=run-2, airflow_task_id=t"
    ]
    assert starts(journal) == ["s1", "s2"]


def test_a_record_written_before_identity_was_recorded_is_adopted(io: TaskIO, base: Path, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    run(engine(io, journal))
    old = json.loads(get_object(base, "task/task.json") or b"")
    for field in ("stage_fingerprints", "inputs_fingerprint", "owner", "redefine_from"):
        old.pop(field, None)
    put_object(base, "task/task.json", json.dumps(old).encode())
    assert run(engine(io, journal, RUN_1, factory_kwargs={"x": 1})) == expected_result(2)
    record = json.loads(get_object(base, "task/task.json") or b"")
    assert record["owner"] == RUN_1 and len(record["stage_fingerprints"]) == 2
    with pytest.raises(TaskIdentityException):
        engine(io, journal, RUN_1, factor=5, factory_kwargs={"x": 1}).bind()
