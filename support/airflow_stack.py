"""A real Airflow 3 stack (api-server, scheduler, dag-processor) on loopback, for the live tests and the benchmarks.

What runs: ``airflow api-server -w 1``, ``airflow scheduler`` and ``airflow dag-processor``, each a real process
in its own session, with an AIRFLOW_HOME of their own and one dags folder. Callers act only as a user would: the
REST API on 127.0.0.1 (the simple auth manager with ALL_ADMINS needs no token) and signals to task processes.
Stage code writes a journal per DAG, ``<journal_dir>/<dag_id>.journal``, in the folder named by an env variable.
support.celery_stack builds its CeleryExecutor stack from the same pieces (LiveStack, stack_env, start_core).

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
  400; a later one starts the task). :func:`running_stack` warms it up (GET /execution/health) before yielding.
- ``airflow scheduler --skip-serve-logs``: callers read task logs from files, and no log server binds 0.0.0.0.

Starting takes 15-70 s on 2 cores, by load; every process the stack started, and everything they forked, is killed when
the :func:`running_stack` block ends, normally or not.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil

from airflow_checkmate.checkmate import PersistenceDataNotFoundException, TaskIO, TaskIOFile
from airflow_checkmate.checkmate.snapshot import TaskSnapshot, read_snapshot
from airflow_checkmate.operators.checkmate import derive_checkmate_task_id
from support.airflow_env import AIRFLOW, AirflowEnv
from support.stages import read_journal

TASK = "stages"  # the CheckMateOperator's task id in the live DAGs


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveStack:
    """A running Airflow stack: its processes, logs, REST client and the CheckMate storage its tasks use."""

    def __init__(self, env: AirflowEnv, port: int, journal_dir: Path, state_io: TaskIO | None = None) -> None:
        self.env = env
        self.port = port
        self.journal_dir = journal_dir
        self.state_io: TaskIO = state_io or TaskIOFile(env.state_dir)  # where the DAGs' CheckMate state lives
        self.homes = [env.home]  # every AIRFLOW_HOME of the stack (workers may have their own task logs)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.log_files: dict[str, Path] = {}
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False)

    # ------------------------------------------------------------------ processes

    def start(
        self,
        name: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        home: Path | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        """Start ``[*prefix] airflow ARGS`` in a session of its own, logging to ``<home>/<name>.log``."""
        home = home or self.env.home
        log_file = home / f"{name}.log"
        with log_file.open("ab") as out:
            self.procs[name] = subprocess.Popen(
                [*prefix, AIRFLOW, *args],
                env=dict(env or self.env.env),
                cwd=home,
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

    def task_log(self, dag_id: str, run_id: str, try_number: int, task_id: str = TASK) -> Path:
        """The try's log file, in whichever home wrote it (the first home when none has yet)."""
        rel = Path("logs", f"dag_id={dag_id}", f"run_id={run_id}", f"task_id={task_id}", f"attempt={try_number}.log")
        return next((home / rel for home in self.homes if (home / rel).exists()), self.homes[0] / rel)

    def component_log_line(self, name: str, *needles: str) -> str:
        """The first line of a component's log that contains every needle ('' if none)."""
        text = self.log_files[name].read_text(errors="replace")
        return next((line for line in text.splitlines() if all(n in line for n in needles)), "")

    def task_logs(self, dag_id: str) -> list[Path]:
        return sorted(path for home in self.homes for path in (home / "logs").glob(f"dag_id={dag_id}/**/*.log"))

    def diagnostics(self, dag_id: str | None = None, run_id: str | None = None) -> str:
        """Tails of the component logs, and of the DAG's task logs, task instances and journal when known."""
        parts = []
        for name, path in self.log_files.items():
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"----- {name} log (tail) -----\n{text[-4000:]}")
        if dag_id:
            for path in self.task_logs(dag_id):
                parts.append(f"----- {path} (tail) -----\n{path.read_text(errors='replace')[-3000:]}")
            parts.append(f"----- journal -----\n{self.journal(dag_id)}")
            if run_id:
                try:
                    tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
                    parts.append(f"----- task instances -----\n{tis}")
                except Exception as exc:
                    parts.append(f"----- task instances: {exc!r}")
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

    def token(self, username: str, password: str) -> str:
        """A JWT for a user of the simple auth manager (what the UI's login form gets)."""
        response = self.http.post("/auth/token", json={"username": username, "password": password})
        if not response.is_success:
            raise AssertionError(f"login as {username} -> {response.status_code}: {response.text[:500]}")
        return str(response.json()["access_token"])

    def trigger(self, dag_id: str, run_id: str) -> None:
        self.api("POST", f"/dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None})

    def ti(self, dag_id: str, run_id: str, task_id: str = TASK) -> dict[str, Any]:
        ti: dict[str, Any] = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
        return ti

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"])

    # ------------------------------------------------------------------ CheckMate side

    def journal(self, dag_id: str) -> list[list[str]]:
        return read_journal(self.journal_dir / f"{dag_id}.journal")

    def snapshot(self, dag_id: str, run_id: str, task_id: str = TASK) -> TaskSnapshot | None:
        return read_snapshot(self.state_io, derive_checkmate_task_id(dag_id, task_id, run_id))

    def task_dir(self, dag_id: str, run_id: str, task_id: str = TASK) -> Path:
        return self.env.state_dir / derive_checkmate_task_id(dag_id, task_id, run_id)


def stack_env(port: int, journal_env: str, journal_dir: Path) -> dict[str, str]:
    """The settings every live stack shares, whatever its executor (see the module docstring for why each)."""
    return {
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",  # True swaps airflow.cfg for the unit-test config
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
        journal_env: str(journal_dir),
    }


def start_core(stack: LiveStack, dag_ids: Iterable[str], login: tuple[str, str] | None = None) -> None:
    """Start api-server, scheduler and dag-processor; return once the execution API answers and ``dag_ids`` parsed.

    ``login`` (user, password): the REST client logs in as that user once the api-server answers.
    """
    port, wanted = str(stack.port), set(dag_ids)
    stack.start("api-server", "api-server", "-w", "1", "-H", "127.0.0.1", "-p", port)
    stack.start("scheduler", "scheduler", "--skip-serve-logs")  # callers read the log files; no 0.0.0.0:8793
    stack.start("dag-processor", "dag-processor")
    stack.wait_for("the api-server to answer", lambda: stack.http.get("/api/v2/monitor/health").is_success, 120)
    if login:
        stack.http.headers["Authorization"] = f"Bearer {stack.token(*login)}"
    # The execution API initialises on its first request (10-30 s on 2 cores, the api-server answering nothing
    # meanwhile); a task's first call would time out and retry for that long. Warm it up here.
    stack.wait_for(
        "the execution API to answer", lambda: stack.http.get("/execution/health", timeout=150).is_success, 160
    )

    def parsed() -> bool:
        dags = {d["dag_id"] for d in stack.api("GET", "/dags")["dags"]}
        if wanted <= dags:
            return True
        errors = stack.api("GET", "/importErrors")["import_errors"]
        if errors:
            raise AssertionError(f"DAG import errors: {errors}")
        return False

    stack.wait_for(f"the dag-processor to parse {sorted(wanted)}", parsed, 120)


@contextlib.contextmanager
def running_stack(
    home: Path,
    dags_folder: Path,
    journal_dir: Path,
    journal_env: str,
    dag_ids: Iterable[str],
    extra_env: Mapping[str, str] | None = None,
    login: tuple[str, str] | None = None,
) -> Iterator[LiveStack]:
    """Start a LocalExecutor stack on a free loopback port, wait until ``dag_ids`` are parsed, yield it, kill it all.

    ``journal_env`` names the env variable through which the DAGs' stage code learns ``journal_dir``;
    ``extra_env`` is added to every component's environment (and so to the DAG files' and tasks').
    ``login`` (user, password): for a stack with real users, the REST client logs in as that user.
    """
    port = free_port()
    env = AirflowEnv(home, dags_folder)
    env.env.update({**stack_env(port, journal_env, journal_dir), "AIRFLOW__CORE__EXECUTOR": "LocalExecutor"})
    env.env.update(extra_env or {})
    env.migrate(timeout=180)
    with sqlite3.connect(home / "airflow.db") as db:  # WAL: readers never block a writer (see the module docstring)
        assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    stack = LiveStack(env, port, journal_dir)
    try:
        start_core(stack, dag_ids, login)
        yield stack
    finally:
        stack.stop()
