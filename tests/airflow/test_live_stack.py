"""End-to-end: CheckMateOperator under a real Airflow 3 stack (api-server, scheduler, dag-processor) on loopback.

What runs: ``airflow api-server -w 1``, ``airflow scheduler`` and ``airflow dag-processor``, each a real process
in its own session, with an AIRFLOW_HOME of their own and ``tests/airflow/dags_live/`` as the dags folder. The
tests act only as a user would: the REST API on 127.0.0.1 (trigger, mark failed, clear; the simple auth manager
with ALL_ADMINS needs no token) and ``kill -9`` on the task's process. They watch the stage code's journal
(tests.helpers.stages) and the CheckMate objects the embedded default keeps under ``$AIRFLOW_HOME/checkmate``.

Executor and database: LocalExecutor on SQLite. In Airflow 3 only the api-server, the scheduler and the
dag-processor open the metadata DB; tasks never do: the LocalExecutor's worker forks a supervisor that forks the
task process, and both talk to the api-server's execution API over HTTP. So one SQLite file serves the stack
(Airflow 3 rewrites the old SequentialExecutor to LocalExecutor and does not refuse SQLite), with parallelism 2
to stay small. No PostgreSQL server and no psycopg2 are needed. The DB file is switched to WAL journaling after
``db migrate`` so the three components' readers never block a writer.

Timing settings (names from the installed Airflow 3.3 config.yml):
- ``[workers] min_heartbeat_interval = 1``: the supervisor heartbeats every second, so a task marked failed gets
  its SIGTERM about a second after the PATCH (then SIGKILL 5 s later, as in production).
- A task process killed with SIGKILL is noticed by its supervisor at once (the child's exit status): it reports
  the try UP_FOR_RETRY while tries remain, so no zombie detection is involved. In case the supervisor itself were
  lost, ``[scheduler] task_instance_heartbeat_timeout = 30`` and ``..._detection_interval = 5`` bound the wait.
- ``[dag_processor] refresh_interval`` is short so the DAGs are parsed within seconds of start.
- The execution API initialises lazily on its first request: 10-30 s on 2 cores, during which the api-server's
  event loop answers nothing, so a task's first call times out (5 s) and retries (the queued calls then get HTTP
  400; a later one starts the task). The fixture warms it up (GET /execution/health) before any test.
- ``airflow scheduler --skip-serve-logs``: the tests read task logs from files, and no log server binds 0.0.0.0.

Both tests share one stack (module fixture, 40-70 s to start on 2 cores); every process it started, and everything
they forked, is killed in the finalizer, pass or fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from airflow_checkmate.checkmate import PersistenceDataNotFoundException, StageStatus, TaskIOFile
from airflow_checkmate.checkmate.snapshot import TaskSnapshot, read_snapshot
from airflow_checkmate.operators.checkmate import derive_checkmate_task_id
from tests.airflow.conftest import AIRFLOW, AirflowEnv
from tests.helpers.stages import expected_result, read_journal

pytestmark = [pytest.mark.live_airflow, pytest.mark.timeout(420)]

DAGS_LIVE = Path(__file__).resolve().parent / "dags_live"
ON_KILL_DAG = "checkmate_live_on_kill"
SIGKILL_DAG = "checkmate_live_sigkill"
TASK = "stages"
JOURNAL_DIR_ENV = "CHECKMATE_LIVE_JOURNAL_DIR"  # read by dags_live/live_stages.py
COMPONENTS = ("api-server", "scheduler", "dag-processor")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveStack:
    """A running Airflow stack: its processes, logs, REST client and the CheckMate storage its tasks use."""

    def __init__(self, env: AirflowEnv, port: int, journal_dir: Path) -> None:
        self.env = env
        self.port = port
        self.journal_dir = journal_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.log_files: dict[str, Path] = {}
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False)

    # ------------------------------------------------------------------ processes

    def start(self, name: str, *args: str) -> None:
        log_file = self.env.home / f"{name}.log"
        with log_file.open("ab") as out:
            self.procs[name] = subprocess.Popen(
                [AIRFLOW, *args],
                env=self.env.env,
                cwd=self.env.home,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.log_files[name] = log_file

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"airflow {name} exited with {proc.returncode}\n{self.diagnostics()}")

    def stop(self) -> None:
        """Kill every process this stack started and everything they forked (task processes may have own groups)."""
        tree: list[psutil.Process] = []
        for proc in self.procs.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                parent = psutil.Process(proc.pid)
                tree += [parent, *parent.children(recursive=True)]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in self.procs.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)  # start_new_session: the group id is the leader's pid
            if sig is signal.SIGTERM and not psutil.wait_procs(tree, timeout=10)[1]:
                break
        for child in tree:  # descendants that live in process groups of their own
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        psutil.wait_procs(tree, timeout=10)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.http.close()

    def is_descendant(self, pid: int) -> bool:
        """Whether ``pid`` is a process forked (at any depth) by one of this stack's components."""
        mine = {proc.pid for proc in self.procs.values()}
        try:
            return any(parent.pid in mine for parent in psutil.Process(pid).parents())
        except psutil.NoSuchProcess:
            return False

    # ------------------------------------------------------------------ diagnostics

    def task_log(self, dag_id: str, run_id: str, try_number: int) -> Path:
        return (
            self.env.home
            / "logs"
            / f"dag_id={dag_id}"
            / f"run_id={run_id}"
            / f"task_id={TASK}"
            / (f"attempt={try_number}.log")
        )

    def component_log_line(self, name: str, *needles: str) -> str:
        """The first line of a component's log that contains every needle ('' if none)."""
        text = self.log_files[name].read_text(errors="replace")
        return next((line for line in text.splitlines() if all(n in line for n in needles)), "")

    def task_logs(self, dag_id: str) -> list[Path]:
        return sorted((self.env.home / "logs").glob(f"dag_id={dag_id}/**/*.log"))

    def diagnostics(self, dag_id: str | None = None, run_id: str | None = None) -> str:
        """Tails of the component logs, and of the task's logs, state and journal when known."""
        parts = []
        for name, path in self.log_files.items():
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"----- {name} log (tail) -----\n{text[-4000:]}")
        if dag_id:
            for path in self.task_logs(dag_id):
                parts.append(f"----- {path.relative_to(self.env.home)} (tail) -----\n{path.read_text()[-3000:]}")
            parts.append(f"----- journal -----\n{self.journal(dag_id)}")
            if run_id:
                try:
                    parts.append(f"----- task instance -----\n{self.ti(dag_id, run_id)}")
                except Exception as exc:
                    parts.append(f"----- task instance: {exc!r}")
        return "\n".join(parts)

    def wait_for(
        self, what: str, check: Callable[[], Any], timeout: float, dag_id: str | None = None, run_id: str | None = None
    ) -> Any:
        """Poll ``check`` until it returns something truthy; fail with the logs after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                value = check()
            except (httpx.HTTPError, OSError, PersistenceDataNotFoundException) as exc:
                value, last_error = None, exc
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(
            f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error!r})\n"
            f"{self.diagnostics(dag_id, run_id)}"
        )

    # ------------------------------------------------------------------ REST API

    def api(self, method: str, path: str, json: Any = None, expect: int = 200) -> Any:
        response = self.http.request(method, f"/api/v2{path}", json=json)
        if response.status_code != expect:
            raise AssertionError(f"{method} {path} -> {response.status_code}: {response.text[:2000]}")
        return response.json() if response.content else None

    def trigger(self, dag_id: str, run_id: str) -> None:
        self.api("POST", f"/dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None})

    def ti(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{TASK}")  # type: ignore[no-any-return]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"])

    # ------------------------------------------------------------------ CheckMate side

    def journal(self, dag_id: str) -> list[list[str]]:
        return read_journal(self.journal_dir / f"{dag_id}.journal")

    def snapshot(self, dag_id: str, run_id: str) -> TaskSnapshot | None:
        return read_snapshot(TaskIOFile(self.env.state_dir), derive_checkmate_task_id(dag_id, TASK, run_id))

    def running_stage_pid(self, dag_id: str, run_id: str, stage: str) -> int:
        """The pid of the task process running ``stage``, checked: a process of the stack, stage RUNNING, lock held."""
        task_pid = pid_of(self.journal(dag_id), stage)
        snap = self.snapshot(dag_id, run_id)
        where = f"journal {self.journal(dag_id)}, snapshot {snap and snap.progress()}, locked {snap and snap.locked}"
        assert self.is_descendant(task_pid), f"pid {task_pid} is not a process of the stack ({where})"
        assert snap is not None and snap.locked, f"the running try must hold the task lock ({where})"
        statuses = {s.stage_name: s.status for s in snap.stages}
        assert statuses[stage] is StageStatus.RUNNING, where
        return task_pid

    def task_dir(self, dag_id: str, run_id: str) -> Path:
        return self.env.state_dir / derive_checkmate_task_id(dag_id, TASK, run_id)


def lines(journal: list[list[str]], kind: str, stage: str) -> list[list[str]]:
    return [words for words in journal if words[:2] == [kind, stage]]


def pid_of(journal: list[list[str]], stage: str) -> int:
    return int(lines(journal, "pid", stage)[-1][2])


def log_time(log: Path, needle: str) -> float | None:
    """The timestamp of the first line of a task log (JSON lines) that contains ``needle``."""
    for raw in log.read_text(errors="replace").splitlines():
        if needle in raw:
            try:
                stamp = json.loads(raw).get("timestamp")
            except ValueError:
                return None
            return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None
    return None


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    home = tmp_path_factory.mktemp("airflow_live_home")
    journal_dir = tmp_path_factory.mktemp("airflow_live_journal")
    port = free_port()
    env = AirflowEnv(home, DAGS_LIVE)
    env.env.update(
        {
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",  # True swaps airflow.cfg for the unit-test config
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            JOURNAL_DIR_ENV: str(journal_dir),
        }
    )
    env.run("db", "migrate", check=True, timeout=180)
    with sqlite3.connect(home / "airflow.db") as db:  # WAL: readers never block a writer (see the module docstring)
        assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    stack = LiveStack(env, port, journal_dir)
    try:
        stack.start("api-server", "api-server", "-w", "1", "-H", "127.0.0.1", "-p", str(port))
        stack.start("scheduler", "scheduler", "--skip-serve-logs")  # tests read the log files; no 0.0.0.0:8793
        stack.start("dag-processor", "dag-processor")
        stack.wait_for("the api-server to answer", lambda: stack.http.get("/api/v2/monitor/health").is_success, 120)
        # The execution API initialises on its first request (10-30 s on 2 cores, the api-server answering nothing
        # meanwhile); a task's first call would time out and retry for that long. Warm it up here.
        stack.wait_for(
            "the execution API to answer", lambda: stack.http.get("/execution/health", timeout=150).is_success, 160
        )

        def parsed() -> bool:
            dags = {d["dag_id"]: d for d in stack.api("GET", "/dags")["dags"]}
            if ON_KILL_DAG in dags and SIGKILL_DAG in dags:
                return True
            errors = stack.api("GET", "/importErrors")["import_errors"]
            if errors:
                raise AssertionError(f"DAG import errors: {errors}")
            return False

        stack.wait_for("the dag-processor to parse the dags_live DAGs", parsed, 120)
        yield stack
    finally:
        stack.stop()


def test_mark_failed_interrupts_stage_and_clear_resumes(live_stack: LiveStack) -> None:
    """Marking the running task failed interrupts its stage through on_kill; clearing it resumes at that stage."""
    stack, dag, run = live_stack, ON_KILL_DAG, "live_on_kill_1"
    stack.trigger(dag, run)
    stack.wait_for("stage s2 to start", lambda: lines(stack.journal(dag), "start", "s2"), 120, dag, run)
    task_pid = stack.running_stage_pid(dag, run, "s2")

    patched_at = time.time()
    ti = stack.api("PATCH", f"/dags/{dag}/dagRuns/{run}/taskInstances/{TASK}", {"new_state": "failed"})
    assert ti["task_instances"][0]["state"] == "failed"

    def interrupted() -> Any:
        snap = stack.snapshot(dag, run)
        s2 = snap.stages[1] if snap else None
        return s2 and next((h for h in s2.history if "StageInterrupted" in h.message), None)

    entry = stack.wait_for("s2 to record StageInterrupted", interrupted, 30, dag, run)
    stack.wait_for("the task process to exit", lambda: not psutil.pid_exists(task_pid), 30, dag, run)

    journal = stack.journal(dag)
    assert not lines(journal, "end", "s2"), f"s2 ran to its end although it was killed: {journal}"
    assert not lines(journal, "start", "s3"), journal
    interrupted_at = (entry.end_ts or entry.begin_ts).timestamp()
    # SIGTERM follows the PATCH at the next supervisor heartbeat (1 s here); SIGKILL would follow 5 s later.
    assert interrupted_at - patched_at < 10, f"s2 interrupted only {interrupted_at - patched_at:.1f} s after the PATCH"
    task_log = stack.task_log(dag, run, 1)
    sigterm_at = log_time(task_log, "shouldn't be running anymore")
    assert sigterm_at is not None, f"no SIGTERM record in {task_log}\n{stack.diagnostics(dag, run)}"
    assert 0 <= interrupted_at - sigterm_at < 3, f"s2 interrupted {interrupted_at - sigterm_at:.2f} s after SIGTERM"
    # The supervisor logs how the process ended: by itself after SIGTERM, not by the SIGKILL escalation.
    exited = stack.wait_for(
        "the supervisor to log the task process's exit",
        lambda: stack.component_log_line("scheduler", "Process exited", f"pid={task_pid} "),
        15,
        dag,
        run,
    )
    assert "signal_sent=SIGTERM" in exited and "exit_code=-9" not in exited, exited
    assert not stack.component_log_line("scheduler", "did not terminate in time", f"pid={task_pid} "), exited

    snap = stack.snapshot(dag, run)
    assert snap is not None
    assert snap.stages[1].status is StageStatus.RETRY, snap.progress()
    assert not snap.locked and not (stack.task_dir(dag, run) / "task.lock").exists(), "the lock was not released"
    time.sleep(2)  # give a wrongly reported success time to land
    assert stack.ti(dag, run)["state"] == "failed"
    assert stack.api("GET", f"/dags/{dag}/dagRuns/{run}/taskInstances/{TASK}/tries/1")["state"] == "failed"

    cleared = stack.api(
        "POST",
        f"/dags/{dag}/clearTaskInstances",
        {"dry_run": False, "dag_run_id": run, "task_ids": [TASK], "only_failed": True, "reset_dag_runs": True},
    )
    assert [t["task_id"] for t in cleared["task_instances"]] == [TASK]
    stack.wait_for("the cleared run to succeed", lambda: stack.run_state(dag, run) == "success", 120, dag, run)

    journal = stack.journal(dag)
    assert len(lines(journal, "start", "s1")) == 1, f"completed stage s1 ran again: {journal}"
    assert [w[2] for w in lines(journal, "start", "s2")] == ["1", "2"], journal
    assert len(lines(journal, "end", "s2")) == 1 and len(lines(journal, "end", "s3")) == 1, journal
    snap = stack.snapshot(dag, run)
    assert snap is not None and snap.status is StageStatus.COMPLETE, snap and snap.progress()
    assert snap.result == expected_result(3)
    assert not snap.locked
    ti = stack.ti(dag, run)
    assert ti["state"] == "success" and ti["try_number"] == 2, ti
    s2 = snap.stages[1]
    assert s2.attempts == 2 and s2.status is StageStatus.COMPLETE, s2.history

    # The extra link leads to the provider plugin's page on the api-server, which shows the stages.
    links = stack.api("GET", f"/dags/{dag}/dagRuns/{run}/taskInstances/{TASK}/links")
    url = links["extra_links"]["CheckMate state"]
    assert url.startswith("/checkmate/tasks/" + derive_checkmate_task_id(dag, TASK, run)), links
    page = stack.http.get(url)
    assert page.status_code == 200, page.text[:500]
    assert "3/3 stages complete" in page.text and "StageInterrupted" in page.text and "s2" in page.text
    other = stack.http.get(url.replace(f"dag_id={dag}", "dag_id=live_sigkill"))
    assert other.status_code == 404, "the page must not show a task to readers of another DAG"


def test_sigkilled_try_resumes_at_the_stage_left_running(live_stack: LiveStack) -> None:
    """A task process killed with SIGKILL mid-stage: the next try re-runs that stage only, and the run succeeds."""
    stack, dag, run = live_stack, SIGKILL_DAG, "live_sigkill_1"
    stack.trigger(dag, run)
    stack.wait_for("stage s2 to start", lambda: lines(stack.journal(dag), "start", "s2"), 120, dag, run)
    task_pid = stack.running_stage_pid(dag, run, "s2")

    os.kill(task_pid, signal.SIGKILL)
    stack.wait_for("the retried run to succeed", lambda: stack.run_state(dag, run) == "success", 120, dag, run)

    journal = stack.journal(dag)
    assert len(lines(journal, "start", "s1")) == 1, f"completed stage s1 ran again: {journal}"
    assert [w[2] for w in lines(journal, "start", "s2")] == ["1", "2"], journal
    assert len(lines(journal, "end", "s2")) == 1 and len(lines(journal, "end", "s3")) == 1, journal
    assert pid_of(journal, "s2") != task_pid, journal
    snap = stack.snapshot(dag, run)
    assert snap is not None and snap.status is StageStatus.COMPLETE, snap and snap.progress()
    s2 = snap.stages[1]
    assert s2.attempts == 2
    assert any("recovered after an interruption" in h.message for h in s2.history), s2.history
    assert snap.result == expected_result(3)
    assert not snap.locked and not (stack.task_dir(dag, run) / "task.lock").exists()
    ti = stack.ti(dag, run)
    assert ti["state"] == "success" and ti["try_number"] == 2, ti
    first = stack.api("GET", f"/dags/{dag}/dagRuns/{run}/taskInstances/{TASK}/tries/1")
    assert first["state"] in ("up_for_retry", "failed"), first
