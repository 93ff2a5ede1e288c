"""CheckMateOperator without running Airflow: the derived task id, argument checks, retry policies, the link.

Engines are built with ``build_engine`` on real file storage (the embedded default under a temporary
AIRFLOW_HOME); the context handed to it holds only what the operator reads (``ti`` with dag_id, task_id,
run_id, map_index). Whole Airflow runs of the operator are the e2e tests' business.
"""

from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from airflow.sdk.definitions.retry_policy import ExceptionRetryPolicy, RetryAction, RetryRule
from airflow.sdk.types import TaskInstanceKey
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_checkmate.checkmate import (
    TASK_ID_MAX_LENGTH,
    CheckMateEngine,
    RetryPolicy,
    TaskEngineException,
    TaskIOFile,
)
from airflow_checkmate.checkmate.names import validate_task_id
from airflow_checkmate.operators.checkmate import (
    CheckMateOperator,
    CheckMateStateLink,
    derive_checkmate_task_id,
    state_url,
)
from support.stages import make_stages

RUN = "manual__2024-01-01T00:00:00+00:00"


@pytest.fixture(autouse=True)
def airflow_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    home = tmp_path / "airflow_home"
    monkeypatch.setenv("AIRFLOW_HOME", str(home))
    monkeypatch.delenv("AIRFLOW_CONN_CHECKMATE_DEFAULT", raising=False)
    monkeypatch.delenv("_AIRFLOW_PROCESS_CONTEXT", raising=False)
    return home


def context(dag_id: str = "dag", task_id: str = "task", run_id: str = RUN, map_index: int = -1) -> Any:
    return {"ti": SimpleNamespace(dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index)}


def operator(**kwargs: Any) -> CheckMateOperator:
    kwargs.setdefault("task_id", "cm")
    if "checkmate_factory" not in kwargs:
        kwargs.setdefault("stage_templates", make_stages(2))
    return CheckMateOperator(**kwargs)


# ---- derive_checkmate_task_id ----------------------------------------------------------------------


def test_derived_id_is_stable() -> None:
    first = derive_checkmate_task_id("etl", "load", RUN, 3)
    assert derive_checkmate_task_id("etl", "load", RUN, 3) == first
    assert derive_checkmate_task_id("etl", "load", RUN) == derive_checkmate_task_id("etl", "load", RUN, -1)


def test_derived_id_differs_when_any_input_differs() -> None:
    base = ("etl", "load", RUN, -1)
    variants = [
        base,
        ("etl2", "load", RUN, -1),
        ("etl", "load2", RUN, -1),
        ("etl", "load", RUN + "x", -1),
        ("etl", "load", RUN, 0),
        ("etl", "load", RUN, 1),
        ("etl", "load", RUN, 10),
        # the readable parts join with '.', so these must not meet either
        ("etl.load", "x", RUN, -1),
        ("etl", "load.x", RUN, -1),
    ]
    ids = [derive_checkmate_task_id(*v) for v in variants]
    assert len(set(ids)) == len(ids), dict(zip(ids, variants, strict=True))


def test_run_ids_differing_only_in_disallowed_characters_get_different_ids() -> None:
    runs = [
        "manual__2024-01-01T00:00:00+00:00",
        "manual__2024-01-01T00_00_00_00_00",
        "manual__2024-01-01T00+00+00+00+00",
        "manual__2024-01-01T00 00 00 00 00",
        "manual__2024-01-01T00/00/00/00/00",
    ]
    ids = [derive_checkmate_task_id("etl", "load", r) for r in runs]
    assert len(set(ids)) == len(runs), ids
    for task_id in ids:
        validate_task_id(task_id)
    readable = {task_id.rsplit("-", 1)[0] for task_id in ids}
    assert len(readable) == 1, "the readable part is the same; only the hash tells them apart"


def test_derived_id_keeps_dag_and_task_readable() -> None:
    task_id = derive_checkmate_task_id("sales_etl", "load_orders", RUN, 4)
    assert task_id.startswith("sales_etl.load_orders.manual__2024-01-01T00_00_00_00_00.4-")
    assert derive_checkmate_task_id("sales_etl", "load_orders", RUN).startswith("sales_etl.load_orders.manual__")


@pytest.mark.parametrize(
    ("dag_id", "task_id", "run_id", "map_index"),
    [
        ("d" * 250, "t" * 250, "r" * 250, 99999),
        ("dag", "task", "x" * 1000, -1),
        ("dag", "task", "..", 0),
        ("-dag", ".task", "-run-", -1),
        (".", ".", ".", -1),
        ("_", "_", "_", -1),
        ("-", "-", "-", 5),
        ("dag", "task", "ünïcødé run ✓", -1),
        ("dag", "task", "a/../../etc/passwd", -1),
        ("dag", "task", "", -1),
    ],
)
def test_derived_id_is_always_a_valid_engine_task_id(dag_id: str, task_id: str, run_id: str, map_index: int) -> None:
    derived = derive_checkmate_task_id(dag_id, task_id, run_id, map_index)
    assert validate_task_id(derived) == derived
    assert len(derived) <= TASK_ID_MAX_LENGTH


ids_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300)


@settings(max_examples=300, deadline=None)
@given(dag_id=ids_text, task_id=ids_text, run_id=ids_text, map_index=st.integers(-1, 10**6))
def test_derived_id_is_valid_for_any_input(dag_id: str, task_id: str, run_id: str, map_index: int) -> None:
    derived = derive_checkmate_task_id(dag_id, task_id, run_id, map_index)
    assert validate_task_id(derived) == derived


@settings(max_examples=300, deadline=None)
@given(
    a=st.tuples(ids_text, ids_text, ids_text, st.integers(-1, 50)),
    b=st.tuples(ids_text, ids_text, ids_text, st.integers(-1, 50)),
)
def test_distinct_inputs_give_distinct_ids(a: tuple[str, str, str, int], b: tuple[str, str, str, int]) -> None:
    if a != b:
        assert derive_checkmate_task_id(*a) != derive_checkmate_task_id(*b)


# ---- the task id an operator uses --------------------------------------------------------------------


@pytest.mark.parametrize("map_index", [-1, 0, 1, 7])
def test_operator_uses_the_derived_id_for_each_map_index(map_index: int) -> None:
    ctx = context("etl", "load", RUN, map_index)
    assert operator().resolve_task_id(ctx) == derive_checkmate_task_id("etl", "load", RUN, map_index)


def test_mapped_instances_get_distinct_ids_from_each_other() -> None:
    op = operator()
    ids = {op.resolve_task_id(context(map_index=i)) for i in range(5)}
    assert len(ids) == 5


def test_explicit_checkmate_task_id_wins() -> None:
    op = operator(checkmate_task_id="my-task.1")
    assert op.resolve_task_id(context()) == "my-task.1"
    assert "checkmate_task_id" in CheckMateOperator.template_fields
    assert "factory_kwargs" in CheckMateOperator.template_fields


# ---- arguments -----------------------------------------------------------------------------------


def test_refuses_both_stage_templates_and_factory() -> None:
    with pytest.raises(ValueError, match=r"cm_both: pass exactly one of stage_templates or checkmate_factory"):
        CheckMateOperator(
            task_id="cm_both", stage_templates=make_stages(1), checkmate_factory="support.stages.make_stages"
        )


def test_refuses_neither_stage_templates_nor_factory() -> None:
    with pytest.raises(ValueError, match=r"cm_none: pass exactly one of stage_templates or checkmate_factory"):
        CheckMateOperator(task_id="cm_none")


def test_stage_templates_are_not_modified_by_building_engines() -> None:
    templates = make_stages(2)
    before = [t.model_dump() for t in templates]
    op = operator(stage_templates=templates)
    engine = op.build_engine(context())
    with engine:
        engine.execute()
    assert [t.model_dump() for t in templates] == before


def test_factory_by_dotted_path_with_kwargs(airflow_home: Path) -> None:
    op = operator(checkmate_factory="support.stages.make_stages", factory_kwargs={"count": 3})
    engine = op.build_engine(context())
    assert [s.stage_name for s in engine.stages] == ["s1", "s2", "s3"]
    assert isinstance(engine.io, TaskIOFile)
    assert engine.io.base == (airflow_home / "checkmate" / "state").resolve()
    assert engine.task_id == derive_checkmate_task_id("dag", "task", RUN)


def test_factory_callable_returning_an_engine_is_used_as_is(tmp_path: Path) -> None:
    made: list[CheckMateEngine[Any, Any]] = []

    def factory(task_id: str) -> CheckMateEngine[Any, Any]:
        made.append(CheckMateEngine(TaskIOFile(tmp_path / "own"), task_id, make_stages(1)))
        return made[-1]

    op = operator(checkmate_factory=factory, factory_kwargs={"task_id": "own-task"})
    engine = op.build_engine(context())
    assert made == [engine]
    assert engine.task_id == "own-task"


# ---- retry policies ------------------------------------------------------------------------------


def test_engine_retry_policy_goes_to_the_engine_not_to_airflow() -> None:
    op = operator(checkmate_retry_policy=RetryPolicy.RETRY, retries=1)
    assert op.retry_policy is None, "Airflow's own retry_policy must stay unset"
    assert op.checkmate_retry_policy is RetryPolicy.RETRY
    engine = op.build_engine(context())
    assert engine.retry_policy is RetryPolicy.RETRY
    assert engine.max_attempts == 2


def test_airflow_retry_policy_is_airflows_alone() -> None:
    """``retry_policy`` is BaseOperator's (Airflow 3.3): kept for Airflow, never read by the engine."""
    policy = ExceptionRetryPolicy(rules=[RetryRule(exception=ValueError, action=RetryAction.FAIL)])
    op = operator(retry_policy=policy, checkmate_retry_policy=RetryPolicy.NONE, retries=2)
    assert op.retry_policy is policy
    assert op.checkmate_retry_policy is RetryPolicy.NONE
    engine = op.build_engine(context())
    assert engine.retry_policy is RetryPolicy.NONE
    assert engine.max_attempts == 1


def test_engine_policy_given_as_retry_policy_is_not_taken_by_the_engine() -> None:
    """The old spelling is not an alias: an engine policy passed as ``retry_policy`` never reaches the engine."""
    try:
        op = operator(retry_policy=RetryPolicy.NONE, retries=2)
    except (TypeError, ValueError):
        return  # Airflow refused it: as good
    assert op.checkmate_retry_policy is None
    assert op.build_engine(context()).retry_policy is RetryPolicy.RETRY


@pytest.mark.parametrize(("retries", "attempts", "policy"), [(0, 1, "NONE"), (1, 2, "RETRY"), (4, 5, "RETRY")])
def test_max_attempts_defaults_to_retries_plus_one(retries: int, attempts: int, policy: str) -> None:
    engine = operator(retries=retries, retry_delay=timedelta(seconds=1)).build_engine(context())
    assert engine.max_attempts == attempts
    assert engine.retry_policy is RetryPolicy(policy)


def test_explicit_max_attempts_wins_over_retries() -> None:
    engine = operator(retries=5, max_attempts=2).build_engine(context())
    assert engine.max_attempts == 2
    assert engine.retry_policy is RetryPolicy.RETRY


def test_explicit_engine_policy_none_with_airflow_retries_means_one_attempt() -> None:
    # retries may be set for Airflow's reasons (a busy lock is retried later); an explicit
    # RetryPolicy.NONE says a stage error is final, so the engine gets one attempt per stage.
    engine = operator(checkmate_retry_policy=RetryPolicy.NONE, retries=3).build_engine(context())
    assert engine.retry_policy is RetryPolicy.NONE
    assert engine.max_attempts == 1


def test_engine_policy_none_with_more_attempts_is_refused() -> None:
    with pytest.raises(TaskEngineException, match=r"RetryPolicy\.NONE requires max_attempts == 1"):
        operator(checkmate_retry_policy=RetryPolicy.NONE, max_attempts=3).build_engine(context())


@pytest.mark.parametrize("name", ["RETRY", "NONE", "retry"])
def test_engine_policy_by_name(name: str) -> None:
    op = operator(checkmate_retry_policy=name)
    assert op.retry_policy is None
    assert op.checkmate_retry_policy is RetryPolicy(name.upper())


def test_unknown_engine_policy_name_is_refused_at_parse_time() -> None:
    with pytest.raises(ValueError, match=r"checkmate_retry_policy 'ALWAYS' is not a CheckMate RetryPolicy"):
        operator(checkmate_retry_policy="ALWAYS")


# ---- the state link ------------------------------------------------------------------------------


def link_parts(url: str) -> tuple[str, dict[str, list[str]]]:
    parts = urlsplit(url)
    assert not parts.scheme and not parts.netloc, "the link is relative to the Airflow UI"
    return parts.path, parse_qs(parts.query, strict_parsing=True)


def test_state_url() -> None:
    path, query = link_parts(state_url("etl.load.run-abc", "cm_prod", "etl"))
    assert path == "/checkmate/tasks/etl.load.run-abc"
    assert query == {"dag_id": ["etl"], "conn_id": ["cm_prod"]}


def test_state_url_quotes_its_query() -> None:
    _, query = link_parts(state_url("t1", "cm&x=1", "dag#1"))
    assert query == {"dag_id": ["dag#1"], "conn_id": ["cm&x=1"]}


def test_operator_declares_the_state_link() -> None:
    assert any(isinstance(link, CheckMateStateLink) for link in CheckMateOperator.operator_extra_links)
    assert CheckMateStateLink.name == "CheckMate state"


def test_link_for_an_explicit_task_id() -> None:
    op = operator(checkmate_task_id="explicit-1", checkmate_conn_id="cm_prod")
    key = TaskInstanceKey(dag_id="etl", task_id="cm", run_id=RUN, try_number=1, map_index=-1)
    path, query = link_parts(CheckMateStateLink().get_link(op, ti_key=key))
    assert path == "/checkmate/tasks/explicit-1"
    assert query == {"dag_id": ["etl"], "conn_id": ["cm_prod"]}


@pytest.mark.parametrize("map_index", [-1, 0, 2])
def test_link_for_a_derived_task_id_matches_the_task_the_operator_runs(map_index: int) -> None:
    op = operator()
    key = TaskInstanceKey(dag_id="etl", task_id="cm", run_id=RUN, try_number=2, map_index=map_index)
    used = op.resolve_task_id(context("etl", "cm", RUN, map_index))
    assert CheckMateStateLink().get_link(op, ti_key=key) == state_url(used, "checkmate_default", "etl")
