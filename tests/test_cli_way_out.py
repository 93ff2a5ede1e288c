"""A way out of every stuck task from the ``checkmate`` command, without the task's code (issue 11, point 5).

A task is run here to RETRY, its definition is edited as a DAG file is edited between a failed try and
its retry (a stage renamed, a state field's type changed, a field removed), and the bind of the new
definition must be refused naming the exact command; that command, run for real in a child process
(which cannot import these stage classes), must get the task out, keeping the COMPLETE stages that
still hold. Tasks have no factory, as the quick start's ``stage_templates`` tasks.
"""

from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import Field

from airflow_checkmate.checkmate import BaseStage, BaseStageState, CheckMate, RetryPolicy, TaskEngineException, TaskIO
from airflow_checkmate.checkmate.exceptions import TaskIdentityException, UnparsableStageState
from support.cli_site import S, Site, explain
from support.stages import journal, read_journal

TASK = "edited"


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """A fresh storage folder, registry and AIRFLOW_HOME in the test's folder."""
    return Site(tmp_path)


def stage_classes(x_type: Any, x_default: Any, with_y: bool) -> type[BaseStage[Any]]:
    """``WayOutStage`` as one version of a DAG file defines it (same class path in every version)."""
    fields: dict[str, Any] = {"__annotations__": {"x": x_type}, "x": Field(default=x_default)}
    if with_y:
        fields["__annotations__"]["y"] = int
        fields["y"] = 0
    state = type("WayOutState", (BaseStageState[Any],), {"__module__": __name__, **fields})

    def execute_stage(self: Any, previous_state_copy: Any) -> None:
        journal(self.journal_path, f"start {self.stage_name}")
        if self.fail:
            self.state.x = self.value
            raise RuntimeError(f"planned failure of {self.stage_name}")
        self.state.result = self.stage_name

    stage = type(
        "WayOutStage",
        (BaseStage[state],),  # type: ignore[valid-type]
        {
            "__module__": __name__,
            "__annotations__": {
                "journal_path": str,
                "value": Any,
                "fail": bool,
                "checkmate_identity_exclude": ClassVar[frozenset[str]],
            },
            "checkmate_identity_exclude": frozenset({"journal_path", "fail"}),
            "journal_path": "",
            "value": None,
            "fail": False,
            "execute_stage": execute_stage,
        },
    )
    stage.__qualname__ = "WayOutStage"
    state.__qualname__ = "WayOutState"
    return stage


def engine(
    site: Site, stage: type[BaseStage[Any]], names: list[str], value: Any, fail: str = ""
) -> CheckMate[Any, Any]:
    templates = [
        stage(
            stage_name=n,
            state=stage.model_fields["state"].annotation(),
            journal_path=str(site.journal),
            value=value,
            fail=n == fail,
        )
        for n in names
    ]
    io = TaskIO.from_base_url(str(site.store))
    return CheckMate(None, templates, TASK, io=io, registry=site.db, retry_policy=RetryPolicy.RETRY, max_attempts=3)


def starts(site: Site) -> list[str]:
    return [w[1] for w in read_journal(site.journal) if w[0] == "start"]


def fail_at_s2(site: Site, stage: type[BaseStage[Any]], value: Any) -> None:
    with (
        engine(site, stage, ["s1", "s2", "s3"], value, fail="s2") as first,
        pytest.raises(TaskEngineException, match="auto-recovered"),
    ):
        first.execute()
    assert site.status(TASK) is S.RETRY and starts(site) == ["s1", "s2"]


def refused(new: CheckMate[Any, Any], exc_type: type[Exception] = TaskIdentityException) -> str:
    with pytest.raises(exc_type) as info:
        new.bind()
    assert not new.bound
    return str(info.value)


def finish(new: CheckMate[Any, Any]) -> None:
    with new:
        new.execute()
        assert new.status is S.COMPLETE


@pytest.mark.parametrize("edit", ["renamed", "field-removed"])
def test_a_dag_edit_between_a_failed_try_and_its_retry_is_refused_and_reset_from_the_cli(site: Site, edit: str) -> None:
    v1 = stage_classes(int, 0, with_y=True)
    fail_at_s2(site, v1, 7)
    if edit == "renamed":
        new, expect, restart = engine(site, v1, ["s1", "s2-new", "s3"], 7), "stage 2 is 's2-new', stored as 's2'", "s2"
    else:
        v2 = stage_classes(int, 0, with_y=False)
        new, expect, restart = (
            engine(site, v2, ["s1", "s2", "s3"], 7),
            "stage 's1': template field state.y removed",
            "s1",
        )
    before = site.snapshot()
    message = refused(new)
    assert expect in message, message
    command = f"checkmate reset {TASK} --stage {restart}"
    assert command in message and f"checkmate clean --force --no-dry-run {TASK}" in message
    assert site.snapshot() == before, "a refused bind changed something"

    (result,) = site.run(command.split()[1:])
    assert result.returncode == 0, explain(result)
    assert f"reset from stage {restart!r}" in result.stdout
    assert site.row(TASK).status is S.CREATED
    finish(new)
    again = ["s2-new"] if edit == "renamed" else ["s1", "s2"]  # renamed: s1 is kept COMPLETE
    assert starts(site) == ["s1", "s2", *again, "s3"]


def test_a_state_field_whose_type_changed_is_reset_from_its_stage_keeping_earlier_complete_stages(site: Site) -> None:
    """x: int | None -> str | None: s1 (x None) still parses and stays COMPLETE; s2 (x 7) no longer parses."""
    fail_at_s2(site, stage_classes(int | None, None, with_y=False), 7)
    v2 = stage_classes(str | None, None, with_y=False)
    message = refused(engine(site, v2, ["s1", "s2", "s3"], 7), UnparsableStageState)
    assert "s2.stage.json" in message and f"checkmate reset {TASK} --stage s2" in message, message
    (result,) = site.run(["reset", TASK, "--stage", "s2"])
    assert result.returncode == 0, explain(result)
    finish(engine(site, v2, ["s1", "s2", "s3"], 7))
    assert starts(site) == ["s1", "s2", "s2", "s3"], "s1 must not run again"


def test_forced_clean_and_dump_of_a_retry_task_without_a_factory(site: Site) -> None:
    """A plain clean skips a RETRY task; ``clean --force`` removes it; ``show --dump`` shows its stored JSON."""
    v1 = stage_classes(int, 0, with_y=False)
    fail_at_s2(site, v1, 7)
    dump, plain = site.run(["show", TASK, "--dump"], ["clean", TASK, "--no-dry-run"])
    assert dump.returncode == 0, explain(dump)
    assert "## Stage 2/3: s2 — RETRY" in dump.stdout and '"x": 7' in dump.stdout
    assert "skipped: it is RETRY" in plain.stdout, explain(plain)
    (dry,) = site.run(["clean", "--force", TASK])
    assert "dry run" in dry.stdout and site.status(TASK) is S.RETRY, explain(dry)
    (forced,) = site.run(["clean", "--force", "--no-dry-run", TASK])
    assert forced.returncode == 0 and "removed" in forced.stdout, explain(forced)
    assert site.status(TASK) is None and site.row(TASK).cleaned
    (bad,) = site.run(["clean", "--force", "--status", "ERROR"])
    assert bad.returncode == 2 and "name the TASK_IDs" in bad.stderr, explain(bad)
    finish(engine(site, v1, ["s1", "s2", "s3"], 7))  # starts over
    assert starts(site) == ["s1", "s2", "s1", "s2", "s3"]


def test_reset_without_a_stage_refuses_a_retry_task_and_names_the_stage_option(site: Site) -> None:
    fail_at_s2(site, stage_classes(int, 0, with_y=False), 7)
    (result,) = site.run(["reset", TASK])
    assert result.returncode == 1 and f"checkmate reset {TASK} --stage NAME" in result.stderr, explain(result)
    assert site.status(TASK) is S.RETRY
