"""The operator's rules without running Airflow: task ids from templates, and a retry told from a clear.

Whole Airflow runs of these rules are in test_dags_e2e.py (a rendered ``{{ run_id }}``) and test_live_stack.py
(``checkmate cancel`` during the retry delay, then a clear through the REST API).
"""

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_checkmate.operators.checkmate import CheckMateOperator
from airflow_checkmate.operators.rules import cleared_since_last_try
from support.stages import make_stages

RUN = "manual__2026-01-01T00:00:00+00:00"
FILTER = "{{ run_id | replace(':', '-') | replace('+', '-') }}"


@pytest.fixture(autouse=True)
def airflow_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow_home"))
    monkeypatch.delenv("AIRFLOW_CONN_CHECKMATE_DEFAULT", raising=False)
    return tmp_path


def operator(checkmate_task_id: str) -> CheckMateOperator:
    return CheckMateOperator(task_id="t", checkmate_task_id=checkmate_task_id, stage_templates=make_stages(1))


def context() -> Any:
    return {"ti": SimpleNamespace(dag_id="d", task_id="t", run_id=RUN, map_index=-1)}


def test_an_invalid_plain_task_id_is_refused_at_dag_parse_naming_the_filter() -> None:
    with pytest.raises(ValueError, match="invalid task id 'report:1'") as info:
        operator("report:1")
    assert FILTER in str(info.value) and "ds_nodash" in str(info.value)


def test_a_templated_task_id_is_checked_once_rendered_and_fails_the_task_for_good() -> None:
    op = operator("report-{{ run_id }}")  # a template: accepted at parse
    op.checkmate_task_id = f"report-{RUN}"  # as Airflow renders it
    with pytest.raises(AirflowFailException, match="checkmate_task_id, rendered: invalid task id") as info:
        op.resolve_task_id(context())
    assert FILTER in str(info.value)
    op.checkmate_task_id = "report-" + RUN.replace(":", "-").replace("+", "-")
    assert op.resolve_task_id(context()) == "report-manual__2026-01-01T00-00-00-00-00"


def ti(try_number: int, max_tries: int, run_id: str = RUN) -> SimpleNamespace:
    return SimpleNamespace(run_id=run_id, try_number=try_number, max_tries=max_tries)


@pytest.mark.parametrize(
    ("last_try", "now", "retries", "cleared"),
    [
        # a record of this run: Airflow raises max_tries on a clear, never on an automatic retry
        ({"run_id": RUN, "try_number": 1, "max_tries": 2}, ti(2, 2), 2, False),
        ({"run_id": RUN, "try_number": 2, "max_tries": 2}, ti(3, 4), 2, True),
        ({"run_id": RUN, "try_number": 1, "max_tries": 0}, ti(2, 1), 0, True),
        # the clear happened with other retries than the DAG has now: the record still tells
        ({"run_id": RUN, "try_number": 3, "max_tries": 4}, ti(4, 6), 5, True),
        # no record of this run: the first try since the last clear is max_tries - retries + 1
        ({}, ti(1, 2), 2, True),
        ({}, ti(2, 2), 2, False),
        ({"run_id": "other", "try_number": 1, "max_tries": 9}, ti(4, 5), 2, True),
        ({"run_id": "other", "try_number": 1, "max_tries": 9}, ti(5, 5), 2, False),
    ],
)
def test_an_automatic_retry_is_told_from_a_clear(
    last_try: dict[str, Any], now: SimpleNamespace, retries: int, cleared: bool
) -> None:
    assert cleared_since_last_try(last_try, now, retries) is cleared
