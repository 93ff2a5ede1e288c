"""What is the same task, through real Airflow runs (issue 11, points 1, 2 and 7).

Test DAGs in tests/airflow/dags_identity/, run with ``airflow dags test``, ``airflow tasks clear`` +
``airflow tasks test`` (a cleared task instance of an existing run, as a scheduler would run it) and
``python dag.py`` (``dag.test()``). Stage code writes journals under ``$CHECKMATE_E2E_DIR``; the test
counts stage runs there and reads the stored CheckMate objects under ``$AIRFLOW_HOME/checkmate/state``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_checkmate.checkmate import TaskIOFile, names, read_snapshot
from airflow_checkmate.operators.checkmate import derive_checkmate_task_id
from support.airflow_env import AIRFLOW, AirflowEnv
from support.dags_test import dags_test
from support.stages import expected_result, read_journal
from support.stored_objects import get_object

DAGS = Path(__file__).resolve().parent / "dags_identity"
DATE_1, DATE_2 = "2026-03-01T00:00:00+00:00", "2026-03-02T00:00:00+00:00"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(airflow_env_factory: Callable[[Path], AirflowEnv]) -> AirflowEnv:
    return airflow_env_factory(DAGS)


def starts(path: Path) -> list[str]:
    """The stages whose code started, in order, from the journal the stage code wrote."""
    return [words[1] for words in read_journal(path) if words[0] == "start"]


def item_starts(path: Path) -> list[str]:
    """``stage item`` of every start of the mapped DAG's stage."""
    return [" ".join(words[1:3]) for words in read_journal(path) if words[0] == "start"]


def states(env: AirflowEnv, dag_id: str, run_id: str) -> dict[str, str]:
    proc = env.run("tasks", "states-for-dag-run", dag_id, run_id, "-o", "json", check=True)
    rows = json.loads(proc.stdout[proc.stdout.index("[{") :].splitlines()[0])
    return {row["task_id"]: row["state"] for row in rows}


def stored(env: AirflowEnv, task_id: str, name: str) -> dict[str, Any]:
    return json.loads(get_object(env.state_dir, f"{task_id}/{name}") or b"")  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------ point 1


def test_mapped_task_cleared_after_the_upstream_list_changed_order_never_returns_another_items_result(
    env: AirflowEnv, tmp_path: Path
) -> None:
    """Map index 0 computed ``a``'s result; after the list became [b, a] and the run was cleared, it is
    refused at bind (no Airflow retry burned) naming the changed input and the command that gets out."""
    extra = {"CHECKMATE_E2E_DIR": str(tmp_path)}
    (tmp_path / "items.json").write_text(json.dumps(["a", "b"]))
    run = dags_test(env, tmp_path, "identity_mapped", DATE_1)
    assert run.proc.returncode == 0, run.tail()
    journal = tmp_path / "identity_mapped.journal"
    assert sorted(item_starts(journal)) == ["work a", "work b"]
    first = derive_checkmate_task_id("identity_mapped", "mapped_work", run.run_id, 0)
    assert stored(env, first, "work.stage.json")["result"] == "result-for-a"

    (tmp_path / "items.json").write_text(json.dumps(["b", "a"]))
    clear = ["tasks", "clear", "identity_mapped", "-t", "upstream_items", "-d", "-s", DATE_1, "-e", DATE_1, "-y"]
    env.run(*clear, extra_env=extra, check=True)
    env.run("tasks", "test", "identity_mapped", "upstream_items", run.run_id, extra_env=extra, check=True)
    proc = env.run("tasks", "test", "identity_mapped", "mapped_work", run.run_id, "--map-index", "0", extra_env=extra)
    # `airflow tasks test` exits 0 whatever the task's outcome: its recorded state tells
    assert "new_state=failed" in proc.stdout, f"map index 0 returned another item's result:\n{proc.stdout[-6000:]}"
    assert "AirflowFailException" in proc.stdout, proc.stdout[-6000:]
    assert "input factory_kwargs.item changed" in proc.stdout, proc.stdout[-6000:]
    assert f"checkmate reset {first} --stage work" in proc.stdout
    assert "up_for_retry" not in proc.stdout.lower(), "a refused bind must not burn a try"
    assert sorted(item_starts(journal)) == ["work a", "work b"], "no stage ran again"
    assert stored(env, first, "work.stage.json")["result"] == "result-for-a", "nothing stored was changed"


# ------------------------------------------------------------------------------------ point 2


def test_a_second_run_on_a_task_id_it_does_not_own_is_refused_unless_shared(env: AirflowEnv, tmp_path: Path) -> None:
    """A templated id shared by every run: run 2 is refused naming run 1 (one try, though retries=2);
    with checkmate_share_across_runs=True run 2 returns run 1's stored result and the record keeps run 1."""
    first = dags_test(env, tmp_path, "identity_owner", DATE_1)
    assert first.proc.returncode == 0, first.tail()
    second = dags_test(env, tmp_path, "identity_owner", DATE_2)
    assert second.run_id != first.run_id

    owned = second.log("owned")
    assert len(second.tries("owned")) == 1, "a refused bind is permanent: no Airflow retry"
    assert "AirflowFailException" in owned, owned[-4000:]
    assert f"airflow_run_id={first.run_id}" in owned and "belongs to" in owned, owned[-4000:]
    assert starts(tmp_path / "identity_owner.owned.journal") == ["s1", "s2"]

    assert states(env, "identity_owner", second.run_id) == {"owned": "failed", "shared": "success"}
    assert starts(tmp_path / "identity_owner.shared.journal") == ["s1", "s2"], "run 2 reran stages"
    record = stored(env, "identity_owner-shared", "task.json")
    assert record["owner"]["airflow_run_id"] == first.run_id
    assert record["labels"]["airflow_run_id"] == first.run_id, "labels rewritten as if run 2 computed it"
    assert [e["event"] for e in record["history"]].count("shared") == 1
    assert stored(env, "identity_owner-shared", "s2.stage.json")["result"] == expected_result(2)


def test_a_failing_run_never_cancels_the_task_another_run_is_running(
    env: AirflowEnv, tmp_path: Path, airflow_env_factory: Callable[[Path], AirflowEnv]
) -> None:
    """Run 1 holds ``identity-live-victim`` in a slow stage; run 2 (another Airflow home, the same
    CheckMate storage) finds it held and fails; its cancel_checkmate_task must leave run 1's task alone:
    no cancel, no cancel request, and run 1 completes."""
    storage = tmp_path / "shared_state"
    conn = env.connection_env(
        "checkmate_default", {"base_url": str(storage), "database_url": f"sqlite:///{tmp_path / 'registry.db'}"}
    )
    other = AirflowEnv(tmp_path / "home2", DAGS)
    other.home.mkdir()
    other.migrate()
    common = {**conn, "CHECKMATE_E2E_DIR": str(tmp_path)}
    holder = subprocess.Popen(
        [AIRFLOW, "dags", "test", "identity_live", DATE_1],
        env={**env.env, **common, "IDENTITY_LIVE_SLEEP": "40"},
        cwd=env.home,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        io = TaskIOFile(storage, durable=False)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if storage.exists():
                snapshot = read_snapshot(io, "identity-live-victim")
                if snapshot is not None and snapshot.stages[0].status.value == "RUNNING":
                    break
            assert holder.poll() is None, holder.communicate()[0][-6000:]
            time.sleep(0.5)
        else:
            pytest.fail("run 1 never started its slow stage")
        failing = other.run("dags", "test", "identity_live", DATE_2, extra_env=common)
        assert failing.returncode != 0, failing.stdout[-6000:]
        assert not io.exists(names.cancel_obj_name("identity-live-victim")), "a cancel request was left"
        assert "is held by another process" in failing.stdout, failing.stdout[-6000:]
        assert "belongs to" in failing.stdout and "neither canceled nor asked to cancel" in failing.stdout
        output, _ = holder.communicate(timeout=240)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert holder.returncode == 0, output[-6000:]
    final = read_snapshot(TaskIOFile(storage, durable=False), "identity-live-victim")
    assert final is not None and final.status.value == "COMPLETE", final
    assert starts(tmp_path / "identity_live.journal") == ["s1", "s2"]


# ------------------------------------------------------------------------------------ point 7


def test_python_dag_py_and_airflow_run_the_same_task(env: AirflowEnv, tmp_path: Path) -> None:
    """``python identity_main.py`` (dag.test()) completes the task; a clear of that run, run by Airflow
    (the file imported as ``unusual_prefix_..._identity_main``), binds the same task and returns its result."""
    extra = {"CHECKMATE_E2E_DIR": str(tmp_path)}
    script = subprocess.run(
        [sys.executable, str(DAGS / "identity_main.py")],
        env={**env.env, **extra},
        cwd=env.home,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=300,
        check=False,
    )
    assert script.returncode == 0, script.stdout[-6000:]
    found = re.findall(r"DagRun Finished: dag_id=identity_main, .*?run_id=([^,\s]+),", script.stdout)
    assert found, script.stdout[-6000:]
    task_id = derive_checkmate_task_id("identity_main", "work", found[-1])
    record = stored(env, task_id, "task.json")
    assert record["stage_template_classes"] == ["identity_main.MainStage"] * 2, record
    journal = tmp_path / "identity_main.journal"
    assert starts(journal) == ["first", "second"]

    env.run("tasks", "clear", "identity_main", "-t", "work", "-y", extra_env=extra, check=True)
    proc = env.run("tasks", "test", "identity_main", "work", found[-1], extra_env=extra)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "new_state=success" in proc.stdout, proc.stdout[-6000:]
    assert starts(journal) == ["first", "second"], "the stages ran again"
    assert stored(env, task_id, "second.stage.json")["result"] == "done-second"
