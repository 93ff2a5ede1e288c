"""A real CeleryExecutor stack on loopback: api-server, scheduler, dag-processor and two Celery workers as two hosts.

It is the LocalExecutor live stack (support.airflow_stack: same settings, same REST client, same diagnostics)
with what a multi-worker deployment changes:
- Airflow's metadata DB and CheckMate's state are two fresh PostgreSQL databases (dropped at the end), so state is
  visible to every worker; the ``checkmate_default`` connection names the state database and reaches every process
  through ``AIRFLOW_CONN_CHECKMATE_DEFAULT``. ``SQL_ALCHEMY_CONN_ASYNC`` is set to the same psycopg URL (without it
  Airflow looks for asyncpg, which is not installed).
- The broker is the machine's Redis (CHECKMATE_TEST_REDIS_URL, db 11 by default); queue and host names carry a
  random suffix, so two stacks sharing that db never take each other's tasks or control messages.
- Each worker is a host of its own: its own hostname (a UTS namespace, ``unshare --uts``, when running as root; else
  only the Celery node name differs), its own AIRFLOW_HOME (task logs) and its own queue, concurrency 1, no log
  server. The DAGs' tasks go to one work queue (env CHECKMATE_CELERY_QUEUE) that :meth:`CeleryStack.route` moves
  between workers with Celery's control API (``add_consumer`` / ``cancel_consumer``), as an operator would.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from celery import Celery

from airflow_checkmate.checkmate import TaskIO
from support.airflow_env import AirflowEnv
from support.airflow_stack import LiveStack, free_port, stack_env, start_core
from support.celery_stages import QUEUE_ENV  # the DAGs' executor queue
from support.pg import fresh_database

REDIS_ENV = "CHECKMATE_TEST_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/11"


def redis_url() -> str:
    return os.environ.get(REDIS_ENV) or DEFAULT_REDIS_URL


def can_unshare_uts() -> bool:
    """Whether this process may give a child a hostname of its own (root, and unshare present and allowed)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--uts", "true"], capture_output=True, check=False).returncode == 0


@dataclass
class Worker:
    """One Celery worker: its host name, AIRFLOW_HOME and own queue."""

    name: str
    hostname: str
    home: Path
    own_queue: str

    @property
    def node(self) -> str:
        """The Celery node name, as the control API addresses it."""
        return f"celery@{self.hostname}"

    @property
    def proc_name(self) -> str:
        return f"worker-{self.name}"


class CeleryStack(LiveStack):
    """A running Celery stack: the LiveStack's REST client and diagnostics, plus its workers and their queues."""

    def __init__(
        self, env: AirflowEnv, port: int, journal_dir: Path, state_io: TaskIO, broker: str, work_queue: str
    ) -> None:
        super().__init__(env, port, journal_dir, state_io)
        self.broker = broker
        self.work_queue = work_queue
        self.own_hostnames = can_unshare_uts()
        self.workers: dict[str, Worker] = {}
        self.control = Celery("checkmate-tests", broker=broker, set_as_current=False)

    def add_worker(self, name: str, suffix: str) -> Worker:
        home = self.env.home.parent / f"{self.env.home.name}-worker-{name}"
        home.mkdir(exist_ok=True)
        worker = self.workers[name] = Worker(name, f"cm-{name}-{suffix}", home, f"own_{name}_{suffix}")
        self.homes.append(home)
        return worker

    def start_worker(self, name: str) -> None:
        """Start worker ``name`` listening on its own queue only; return once it answers the control API."""
        worker = self.workers[name]
        prefix: list[str] = []
        if self.own_hostnames:  # hostname "$0", then exec the airflow command line in the new UTS namespace
            prefix = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', worker.hostname]
        args = ["celery", "worker", "--celery-hostname", worker.node, "-q", worker.own_queue]
        env = {**self.env.env, "AIRFLOW_HOME": str(worker.home)}
        self.start(
            worker.proc_name, *args, "--concurrency", "1", "--skip-serve-logs", env=env, home=worker.home, prefix=prefix
        )
        self.wait_for(f"worker {name} to answer", lambda: self.control.control.ping([worker.node], timeout=1.0), 180)

    def worker_alive(self, name: str) -> bool:
        proc = self.procs.get(self.workers[name].proc_name)
        return proc is not None and proc.poll() is None

    def ensure_workers(self) -> None:
        """Restart any worker a previous check killed."""
        for name in self.workers:
            if not self.worker_alive(name):
                self.start_worker(name)

    def worker_tree(self, name: str) -> list[psutil.Process]:
        proc = self.procs.get(self.workers[name].proc_name)
        if proc is None:
            return []
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(proc.pid)
            return [parent, *parent.children(recursive=True)]
        return []

    def worker_of(self, pid: int) -> str | None:
        """The name of the worker whose process tree holds ``pid`` (None if no worker's)."""
        return next((name for name in self.workers if pid in {p.pid for p in self.worker_tree(name)}), None)

    def kill_worker(self, name: str) -> None:
        """SIGKILL the whole worker: its main process, its pool process, the supervisor and the task process."""
        worker = self.workers[name]
        tree = self.worker_tree(name)
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(tree, timeout=10)
        self.procs.pop(worker.proc_name).wait(timeout=10)

    def route(self, to: str) -> None:
        """Make worker ``to`` the only consumer of the work queue (Celery's control API), and check it took."""
        for name, worker in self.workers.items():
            if name != to and self.worker_alive(name):
                self.control.control.cancel_consumer(self.work_queue, destination=[worker.node], reply=True)
        target = self.workers[to]
        self.control.control.add_consumer(self.work_queue, destination=[target.node], reply=True)

        def routed() -> bool:
            alive = [w.node for n, w in self.workers.items() if self.worker_alive(n)]
            queues = self.control.control.inspect(destination=alive, timeout=2.0).active_queues() or {}
            consumers = {node for node, qs in queues.items() if any(q["name"] == self.work_queue for q in qs)}
            return consumers == {target.node}

        self.wait_for(f"the work queue to be consumed by worker {to} only", routed, 60)

    def reset_journal(self, dag_id: str) -> None:
        """Forget the stage runs of earlier runs of ``dag_id`` (a stage sleeps on the first run the journal shows)."""
        (self.journal_dir / f"{dag_id}.journal").unlink(missing_ok=True)

    def stop(self) -> None:
        super().stop()
        self.control.close()
        forget_broker_keys(self.broker, self.work_queue.removeprefix("work_"))


def forget_broker_keys(url: str, suffix: str) -> None:
    """Remove what this stack left in Redis: keys, set and sorted-set members and hash entries naming ``suffix``
    (its queue and host names end in it), so a long-lived Redis does not fill up; other stacks' keys stay."""
    import redis

    client = redis.Redis.from_url(url)
    for key in client.scan_iter(count=1000):
        if suffix.encode() in key:
            client.delete(key)
            continue
        kind = client.type(key)
        if kind == b"set":
            members = [m for m in client.smembers(key) if suffix.encode() in m]
            if members:
                client.srem(key, *members)
        elif kind == b"zset":
            members = [m for m in client.zrange(key, 0, -1) if suffix.encode() in m]
            if members:
                client.zrem(key, *members)
        elif kind == b"hash":
            fields = [f for f, v in client.hgetall(key).items() if suffix.encode() in v]
            if fields:
                client.hdel(key, *fields)
                client.zrem(key + b"_index", *fields)  # kombu's unacked_index beside its unacked hash
    client.close()


def require_services() -> str:
    """The PostgreSQL server URL; skip (fail under CI=true) when it or Redis is not reachable."""
    server = os.environ.get("CHECKMATE_TEST_POSTGRES_URL")
    reason = "" if server else "CHECKMATE_TEST_POSTGRES_URL is not set"
    if not reason:
        import redis

        try:
            redis.Redis.from_url(redis_url(), socket_connect_timeout=2).ping()
        except redis.RedisError as exc:
            reason = f"Redis at {redis_url()} ({REDIS_ENV}) is not reachable: {exc}"
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}: the Celery stack must run in CI")
        pytest.skip(reason)
    assert server
    return server


def psycopg_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@contextlib.contextmanager
def running_celery_stack(
    home: Path, dags_folder: Path, journal_dir: Path, journal_env: str, dag_ids: Iterable[str], server: str
) -> Iterator[CeleryStack]:
    """Start the stack with workers ``a`` and ``b`` (the work queue on neither), yield it, then kill and drop it all.

    ``server`` is the PostgreSQL server URL (its two fresh databases are dropped at the end).
    """
    suffix = secrets.token_hex(3)
    with (
        fresh_database(server, prefix="checkmate_celery_meta") as meta_url,
        fresh_database(server, prefix="checkmate_celery_state") as state_url,
    ):
        port = free_port()
        env = AirflowEnv(home, dags_folder)
        work_queue = f"work_{suffix}"
        checkmate_conn = {"conn_type": "checkmate", "extra": {"base_url": state_url, "database_url": state_url}}
        env.env.update(stack_env(port, journal_env, journal_dir))
        env.env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": psycopg_url(meta_url),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": psycopg_url(meta_url),
                "AIRFLOW__CELERY__BROKER_URL": redis_url(),
                "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "3600",
                "AIRFLOW_CONN_CHECKMATE_DEFAULT": json.dumps(checkmate_conn),
                QUEUE_ENV: work_queue,
            }
        )
        env.run("db", "migrate", check=True, timeout=300)
        stack = CeleryStack(env, port, journal_dir, TaskIO.from_base_url(state_url), redis_url(), work_queue)
        try:
            start_core(stack, dag_ids)
            for name in ("a", "b"):
                stack.add_worker(name, suffix)
                stack.start_worker(name)
            yield stack
        finally:
            stack.stop()
