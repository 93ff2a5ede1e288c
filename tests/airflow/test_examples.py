"""The example DAGs in dags_examples/: they import cleanly, and each one does what its docstring says.

Every example runs once under the real ``airflow dags test`` (a subprocess, SQLite metadata DB, the
embedded default storage under ``$AIRFLOW_HOME/checkmate/state``); the assertions read what the run
left behind: the stored CheckMate objects (stage status, attempts, history, result) and the run's
output (what the stage code printed, the Airflow log lines).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from airflow_checkmate.operators.checkmate import derive_checkmate_task_id
from support.airflow_env import EXAMPLES, LOGICAL_DATE, AirflowEnv, tail
from support.stored_objects import get_object

DAGBAG_CHECK = r"""
import json, sys, warnings
from airflow.dag_processing.dagbag import DagBag
from airflow.serialization.serialized_objects import DagSerialization

folder = sys.argv[1]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    bag = DagBag(dag_folder=folder)
    serialize_errors = {}
    for dag in bag.dags.values():
        try:
            DagSerialization.serialize_dag(dag)
        except Exception as exc:
            serialize_errors[dag.dag_id] = f"{type(exc).__name__}: {exc}"
ours = [
    f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}"
    for w in caught
    if folder in w.filename or "airflow_checkmate" in w.filename
]
print("DAGBAG " + json.dumps({
    "import_errors": bag.import_errors,
    "captured_warnings": {k: list(v) for k, v in bag.captured_warnings.items()},
    "dag_warnings": sorted(str(w) for w in bag.dag_warnings),
    "warnings": ours,
    "serialize_errors": serialize_errors,
    "dags": {
        d.dag_id: {
            "file": d.fileloc,
            "tags": sorted(d.tags),
            "schedule": repr(d.schedule),
            "doc_md": bool(d.doc_md),
            "tasks": len(d.tasks),
        }
        for d in bag.dags.values()
    },
}))
"""


def run_example(env: AirflowEnv, dag_id: str, *args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """``airflow dags test DAG_ID LOGICAL_DATE ARGS``; returns the process and the run id it created."""
    proc = env.run("dags", "test", dag_id, LOGICAL_DATE, *args)
    found = re.findall(rf"DagRun Finished: dag_id={re.escape(dag_id)}, .*?run_id=([^,\s]+),", proc.stdout)
    assert found, f"no finished run in the output of airflow dags test {dag_id}:\n{proc.stdout[-6000:]}"
    return proc, found[-1]


def stored_stage(env: AirflowEnv, task_id: str, stage_name: str) -> dict[str, Any]:
    raw = get_object(env.state_dir, f"{task_id}/{stage_name}.stage.json")
    assert raw is not None, f"no stored state for stage {stage_name!r} of CheckMate task {task_id!r} in {env.state_dir}"
    return json.loads(raw)  # type: ignore[no-any-return]


def stored_task(env: AirflowEnv, task_id: str) -> dict[str, Any]:
    return json.loads(get_object(env.state_dir, f"{task_id}/task.json") or b"")  # type: ignore[no-any-return]


def statuses(stage: dict[str, Any]) -> list[str]:
    return [entry["status"] for entry in stage["history"]]


def test_every_example_imports_into_a_dagbag_without_errors_or_warnings(examples_env: AirflowEnv) -> None:
    """Run in a subprocess with the examples' AIRFLOW_HOME, as the dag-processor would import them."""
    proc = subprocess.run(
        [sys.executable, "-c", DAGBAG_CHECK, str(EXAMPLES)],
        env=examples_env.env,
        cwd=examples_env.home,
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next((x for x in proc.stdout.splitlines() if x.startswith("DAGBAG ")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    bag = json.loads(line.removeprefix("DAGBAG "))

    assert bag["import_errors"] == {}
    assert bag["captured_warnings"] == {}
    assert bag["dag_warnings"] == []
    assert bag["warnings"] == []
    assert bag["serialize_errors"] == {}

    files = sorted(p.name for p in EXAMPLES.glob("*.py"))
    loaded = sorted({Path(d["file"]).name for d in bag["dags"].values()})
    assert loaded == files, "every file in dags_examples/ must define a DAG"
    assert {
        "checkmate_etl_resume",
        "checkmate_factory_params",
        "checkmate_sensor_wait",
        "checkmate_cancel_callback",
        "checkmate_postgres_state",
    } <= set(bag["dags"])
    for dag_id, dag in bag["dags"].items():
        assert dag["tags"] == ["checkmate", "example"], dag_id
        assert dag["schedule"] == "None", dag_id
        assert dag["doc_md"], f"{dag_id} has no doc_md"
        assert dag["tasks"] >= 1, dag_id


@pytest.mark.slow
def test_etl_resume_runs_extract_once_and_transform_twice(examples_env: AirflowEnv) -> None:
    """(a): the transform stage fails once; the Airflow retry resumes there, extract is not run again."""
    proc, run_id = run_example(examples_env, "checkmate_etl_resume")
    assert proc.returncode == 0, tail(proc)

    task_id = derive_checkmate_task_id("checkmate_etl_resume", "etl", run_id)
    extract = stored_stage(examples_env, task_id, "extract")
    transform = stored_stage(examples_env, task_id, "transform")
    load = stored_stage(examples_env, task_id, "load")
    assert (extract["status"], extract["attempts"]) == ("COMPLETE", 1)
    assert (transform["status"], transform["attempts"]) == ("COMPLETE", 2)
    assert (load["status"], load["attempts"]) == ("COMPLETE", 1)
    assert statuses(extract) == ["RUNNING", "COMPLETE"]
    assert statuses(transform) == ["RUNNING", "RETRY", "RUNNING", "COMPLETE"]
    assert "warehouse connection dropped" in transform["history"][1]["message"]
    assert load["result"] == {"rows": 5, "total": 9 + 1 + 16 + 1 + 25}

    # What the stage code printed: extract ran in the first try only.
    assert proc.stdout.count("extract: reading 5 rows") == 1
    assert proc.stdout.count("transform: squaring rows") == 1
    assert proc.stdout.count("[DAG TEST] starting task_id=etl ") == 2
    assert "Resuming at stage 2/3: 1 stage(s) already COMPLETE" in proc.stdout


@pytest.mark.slow
def test_factory_params_builds_the_stages_from_rendered_params(examples_env: AirflowEnv) -> None:
    """(b): the stage list comes from the run's params (conf overrides the defaults) and {{ ds }}."""
    conf = {"tables": ["orders", "refunds"], "partitions": 2}
    proc, run_id = run_example(examples_env, "checkmate_factory_params", "-c", json.dumps(conf))
    assert proc.returncode == 0, tail(proc)

    task_id = derive_checkmate_task_id("checkmate_factory_params", "copy_tables", run_id)
    assert stored_task(examples_env, task_id)["stage_names"] == ["copy_orders", "copy_refunds", "report"]
    report = stored_stage(examples_env, task_id, "report")
    assert report["status"] == "COMPLETE"
    assert report["result"] == {"day": "2026-01-15", "rows": {"orders": 300, "refunds": 300}, "total_rows": 600}
    for table in ("orders", "refunds"):
        for partition in (1, 2):
            assert proc.stdout.count(f"copy {table} partition {partition}/2 of 2026-01-15") == 1
    assert "copy customers" not in proc.stdout


@pytest.mark.slow
def test_sensor_wait_passes_the_producer_result_through_xcom(examples_env: AirflowEnv) -> None:
    """(c): the deferrable sensor finds the day's task COMPLETE and ``publish`` prints its XCom result."""
    proc, _ = run_example(examples_env, "checkmate_sensor_wait")
    assert proc.returncode == 0, tail(proc)

    render = stored_stage(examples_env, "sales-report-20260115", "render")
    assert render["status"] == "COMPLETE"
    assert render["result"] == {"regions": 3, "total": 242, "top": "north"}
    assert "task sales-report-20260115 COMPLETE: 3/3 stages complete" in proc.stdout
    assert "publishing sales report: 3 regions, total 242, top north" in proc.stdout


@pytest.mark.slow
def test_sensor_wait_runs_without_a_logical_date(examples_env: AirflowEnv) -> None:
    """A run without a logical date (``dags trigger`` / a manual trigger in Airflow 3) gets the day it runs after as
    its report id. ``dags test`` always sets a logical date, so the run is triggered and its task run by
    ``tasks test`` (which runs a task instance of an existing run, as a scheduler would)."""
    run_id = "no_logical_date"
    examples_env.run("dags", "reserialize", check=True)
    examples_env.run("dags", "trigger", "checkmate_sensor_wait", "-r", run_id, check=True)
    proc = examples_env.run("tasks", "test", "checkmate_sensor_wait", "build_report", run_id)
    assert proc.returncode == 0 and "new_state=success" in proc.stdout, tail(proc)
    found = re.search(r"CheckMate task (sales-report-(\d{8})) at ", proc.stdout)
    assert found, tail(proc)
    assert found.group(2) != "20260115", "the id must come from this run, not the dated one"
    assert stored_stage(examples_env, found.group(1), "render")["status"] == "COMPLETE"


@pytest.mark.slow
def test_cancel_callback_cancels_the_task_and_cleans_up_once(examples_env: AirflowEnv) -> None:
    """(d): ``load`` fails for good; the failure callback cancels the task and its cancel() runs once."""
    proc, run_id = run_example(examples_env, "checkmate_cancel_callback")
    assert proc.returncode != 0, "the run must fail: load fails every time"

    task_id = derive_checkmate_task_id("checkmate_cancel_callback", "load_batch", run_id)
    stage_files = stored_stage(examples_env, task_id, "stage_files")
    load = stored_stage(examples_env, task_id, "load")
    publish = stored_stage(examples_env, task_id, "publish")
    assert stage_files["status"] == "COMPLETE"
    assert (load["status"], publish["status"]) == ("CANCELED", "CANCELED"), tail(proc)
    assert statuses(load)[:4] == ["RUNNING", "RETRY", "RUNNING", "ERROR"]
    assert statuses(load)[-1] == "CANCELED"
    assert statuses(load).count("CANCELED") == 1
    assert "warehouse rejected the batch" in load["history"][1]["message"]

    cleanups = re.findall(r"cleanup: removing scratch dir (\S+) with 2 file\(s\)", proc.stdout)
    assert len(cleanups) == 1, tail(proc)
    assert "cleanup: nothing to remove" not in proc.stdout
    assert not Path(cleanups[0]).exists()
