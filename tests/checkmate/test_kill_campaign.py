"""A seeded SIGKILL campaign: real processes running the engine are killed at random moments.

Each task (7 journal stages, durable file storage) is run by a child process that the test kills with
SIGKILL after a seeded random delay, over and over, then lets finish. Between a kill and the next
resume the test reads the storage directly and proves:

- every stored object parses (``task.json`` as TaskEngineState, stage objects as CounterState, the
  lease as JSON) and the stored stages form a valid checkpoint (COMPLETE prefix, then at most one
  RUNNING stage), each COMPLETE stage holding the values a crash-free run computes;
- a stage seen persisted COMPLETE never starts again (no later ``start`` line in the journal the stage
  code writes) and never goes back from COMPLETE;
- the lease of a killed holder is taken over by the next run without any manual step: no run ever
  reports LOCKED (exit 5), and a run that went on to execute stages recorded a "lock takeover" of the
  dead pid in the task record;
- the final, unkilled run completes with ``expected_result(n)``.

The campaign runs on file storage (at least 150 kills) and on S3 (the session's moto server, 20 kills),
where the test reads the bucket with its own boto3 client.

The children are forked from a multiprocessing "forkserver" that has the engine pre-imported, so a
run starts in milliseconds; the kill delays are scaled to this machine's measured start/bind time and
per-stage write time, so the kills land while binding, mid-stage, mid-write and between stages. The
test prints a summary (kills, resumes, re-runs of interrupted stages, where the kills landed).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import multiprocessing
import os
import random
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from airflow_checkmate.checkmate import StageStatus, TaskEngineState
from tests.conftest import S3_CONN_ID
from tests.helpers import run_task
from tests.helpers.stages import CounterState, expected_result, read_journal

N_STAGES = 7
MIN_KILLS = 150  # the brief asks for at least 100
KILLS_PER_TASK = 16
MAX_TASKS = 100
SLEEPS = (0.0, 0.004, 0.012, 0.025)  # seconds per stage; 0 makes every run all engine work and writes
S3_SLEEPS = (0.0, 0.04, 0.12, 0.25)  # S3 writes take ~10x longer than durable file writes: so do the stages
EXIT_LOCKED = 5

pytestmark = pytest.mark.slow


def _child_main(argv: list[str], out_path: str, env: dict[str, str]) -> None:
    """Runs in the forked child: the task runner, its stdout in ``out_path`` (stderr next to it), its code as
    the exit code. ``env`` is added to the environment the forkserver started with."""
    # The inherited objects (Airflow's imports) are never garbage: without this, the first full collection
    # walks them all and copies the forkserver's heap page by page (~100 ms a run).
    gc.freeze()
    os.environ.update(env)
    for target, path in ((1, out_path), (2, out_path + ".err")):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, target)
        os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.exit(run_task.main(argv))


@dataclass(frozen=True)
class Store:
    """Where the campaign's tasks live: the runner's storage arguments and a direct view of the stored objects."""

    args: list[str]  # BASE [--conn-id ID] for tests.helpers.run_task
    objects: Callable[[str], dict[str, bytes]]  # task id -> {object name in the task: bytes}, temp files excluded
    temp_files: Callable[[str], int]  # task id -> temporary files a writer killed mid-write left behind
    env: dict[str, str] = field(default_factory=dict)  # what the children need in their environment


def file_store(base: Path) -> Store:
    """Durable file storage in ``base``, read from the folders."""

    def objects(task_id: str) -> dict[str, bytes]:
        task_dir = base / task_id
        names = sorted(os.listdir(task_dir)) if task_dir.exists() else []
        return {n: (task_dir / n).read_bytes() for n in names if not n.startswith(".")}

    return Store([str(base)], objects, lambda task_id: _temp_files(base / task_id))


def s3_store(url: str, endpoint: str) -> Store:
    """The test's bucket on the S3 server, read with a boto3 client of its own (no temp objects on S3)."""
    import boto3

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )

    def objects(task_id: str) -> dict[str, bytes]:
        found = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{task_id}/").get("Contents", [])
        return {
            o["Key"].rpartition("/")[2]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in found
        }

    env = {k: os.environ[k] for k in ("AIRFLOW_CONN_CHECKMATE_TEST_S3", "AWS_EC2_METADATA_DISABLED")}
    return Store([url, "--conn-id", S3_CONN_ID], objects, lambda task_id: 0, env)


@dataclass
class Observation:
    """What the storage held right after one kill."""

    complete: frozenset[str]
    journal_len: int
    lease_pid: int | None
    takeover_pids: list[int]


@dataclass
class TaskLog:
    kills: int = 0
    runs: int = 0
    tmp_leftovers: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


def _stage_names() -> list[str]:
    return [f"s{i}" for i in range(1, N_STAGES + 1)]


def _temp_files(task_dir: Path) -> int:
    """Temporary files a writer killed between creating and renaming them left behind."""
    return sum(1 for n in os.listdir(task_dir) if n.startswith(".")) if task_dir.exists() else 0


def _takeover_pids(task: TaskEngineState | None) -> list[int]:
    if task is None:
        return []
    pids = []
    for event in task.history:
        if event.event == "lock takeover":
            match = re.search(r"\bpid (\d+)\b", event.message)
            assert match, f"takeover event does not name the holder's pid: {event.message!r}"
            pids.append(int(match.group(1)))
    return pids


def parse(model, name: str, raw: bytes):
    """``raw`` parsed as ``model``; a stored object that does not parse fails the test naming it."""
    try:
        return model.model_validate_json(raw)
    except ValueError as exc:
        raise AssertionError(f"stored object {name} does not parse as {model.__name__}: {raw[:200]!r}") from exc


def inspect_storage(
    stored: dict[str, bytes], task_id: str
) -> tuple[TaskEngineState | None, dict[str, CounterState], dict]:
    """Parse every stored object of the task and check that they form a valid checkpoint."""
    visible = sorted(stored)
    stage_names = _stage_names()
    allowed = {"task.json", "task.lock"} | {f"{s}.stage.json" for s in stage_names}
    assert set(visible) <= allowed, f"unexpected stored objects: {sorted(set(visible) - allowed)}"
    task = None
    if "task.json" in visible:
        task = parse(TaskEngineState, "task.json", stored["task.json"])
        assert task.task_id == task_id
        assert task.stage_names == stage_names
        assert not task.cleaning
    stages: dict[str, CounterState] = {}
    for name in stage_names:
        obj = f"{name}.stage.json"
        if obj in stored:
            state = parse(CounterState, obj, stored[obj])
            assert state.stage_name == name, f"{obj} holds stage {state.stage_name!r}"
            stages[name] = state
    lease: dict = {}
    if "task.lock" in visible:
        raw = stored["task.lock"].decode()
        try:
            lease = json.loads(raw)
        except ValueError as exc:
            raise AssertionError(f"the lease does not parse as JSON: {raw[:200]!r}") from exc
        assert isinstance(lease, dict)
        assert lease.get("token")
        assert isinstance(lease.get("pid"), int)
    if stages:
        assert task is not None, f"stage objects {sorted(stages)} are stored without task.json"
    # Stored stages must be a prefix s1..sk: COMPLETE ones, then at most one RUNNING (the interrupted one).
    stored = [stages[n] for n in stage_names if n in stages]
    assert [s.stage_name for s in stored] == stage_names[: len(stored)], f"gaps in stored stages: {sorted(stages)}"
    expected = expected_result(N_STAGES)
    for index, state in enumerate(stored):
        last = index == len(stored) - 1
        allowed_status = {StageStatus.COMPLETE, StageStatus.RUNNING} if last else {StageStatus.COMPLETE}
        assert state.status in allowed_status, (
            f"{state.stage_name} stored as {state.status}: {[s.status for s in stored]}"
        )
        assert state.attempts >= 1
        if state.status is StageStatus.COMPLETE:
            assert state.values == expected[: index + 1], f"{state.stage_name} stored wrong values {state.values}"
            assert state.result == state.values
    return task, stages, lease


def _kill_kind(journal: list[list[str]], stages: dict[str, CounterState], jlen_before: int) -> str:
    """Where the kill landed, judged from the journal and the stored stages."""
    new = journal[jlen_before:]
    if not new:
        return "before any stage ran"
    word, name = new[-1][0], new[-1][1]
    stored = stages.get(name)
    if word == "start":
        return "mid-stage"
    if stored is None or stored.status is not StageStatus.COMPLETE:
        return "after stage code, before COMPLETE was persisted"
    return "between stages"


def _final_words(output: str) -> list[str]:
    """The runner's final line (status and result), among log lines that Airflow's logging may print too."""
    words = {s.value for s in StageStatus} | {"LOCKED"}
    lines = [line for line in output.splitlines() if line.split(" ", 1)[0] in words]
    return lines[-1].split() if lines else output.split()


def run_campaign(
    ctx,
    store: Store,
    seed: int,
    stats: TaskLog,
    tmp: Path,
    startup: float,
    per_stage: float,
    kills_per_task: int = KILLS_PER_TASK,
    sleeps: tuple[float, ...] = SLEEPS,
) -> list[str]:
    """Kill and resume one task until it completes; returns the final run's output.

    ``startup`` (to start and bind) and ``per_stage`` (engine work of a stage) spread the kills over the work.
    """
    rng = random.Random(seed)
    task_id = f"kill-{seed}"
    sleep = sleeps[seed % len(sleeps)]
    journal_path = tmp / f"{task_id}.journal"
    argv = [*store.args, task_id, str(N_STAGES), "--journal", str(journal_path), "--sleep", str(sleep)]
    observations: list[Observation] = []
    killed_pids: list[int] = []
    kills_here = 0
    while True:
        out_path = tmp / f"{task_id}.run{stats.runs}.out"
        jlen_before = len(read_journal(journal_path))
        tmp_before = store.temp_files(task_id)
        proc = ctx.Process(target=_child_main, args=(argv, str(out_path), store.env))
        proc.start()
        stats.runs += 1
        if kills_here < kills_per_task:
            # A quarter of the kills land while the child starts and binds (lease takeover, task record);
            # the others somewhere in the remaining stages, each its sleep plus its durable writes
            # (mid-stage, mid-write, between stages).
            remaining = N_STAGES - (len(observations[-1].complete) if observations else 0)
            if rng.random() < 0.25:
                delay = rng.uniform(0.001, startup)
            else:
                delay = startup + rng.uniform(0.0, 0.8 * remaining * (sleep + per_stage))
            proc.join(delay)
            if proc.exitcode is None:
                with contextlib.suppress(ProcessLookupError):  # it ended just now: then it was not killed
                    os.kill(proc.pid, signal.SIGKILL)
        proc.join(60)
        assert proc.exitcode is not None, f"run {stats.runs} of {task_id} hung"
        output = out_path.read_text() if out_path.exists() else ""
        if proc.exitcode != -signal.SIGKILL:
            # It ran to its end: it must have completed (never LOCKED by a dead holder, never failed).
            assert proc.exitcode != EXIT_LOCKED, f"{task_id}: a dead holder's lock was not taken over:\n{output}"
            assert proc.exitcode == 0, f"{task_id} run exited {proc.exitcode}:\n{output}"
            break
        kills_here += 1
        stats.kills += 1
        killed_pids.append(proc.pid)
        journal = read_journal(journal_path)
        task, stages, lease = inspect_storage(store.objects(task_id), task_id)
        kind = _kill_kind(journal, stages, jlen_before)
        stats.kinds[kind] = stats.kinds.get(kind, 0) + 1
        stats.tmp_leftovers += store.temp_files(task_id) - tmp_before
        lease_pid = lease.get("pid")
        if lease_pid is not None:
            assert lease_pid in killed_pids, f"the lease names pid {lease_pid}, not a killed run"
        observations.append(
            Observation(
                complete=frozenset(n for n, s in stages.items() if s.status is StageStatus.COMPLETE),
                journal_len=len(journal),
                lease_pid=lease_pid,
                takeover_pids=_takeover_pids(task),
            )
        )

    task, stages, lease = inspect_storage(store.objects(task_id), task_id)
    journal = read_journal(journal_path)
    assert task is not None
    assert not lease, f"the final run left its lease behind: {lease}"
    assert len(stages) == N_STAGES
    assert all(s.status is StageStatus.COMPLETE for s in stages.values())
    final = _takeover_pids(task)

    # A stage seen persisted COMPLETE is never started again, and never stops being COMPLETE.
    for obs in observations:
        rerun = [w for w in journal[obs.journal_len :] if w[0] == "start" and w[1] in obs.complete]
        assert not rerun, f"{task_id}: stages persisted COMPLETE ran again: {rerun}"
    for earlier, later in itertools.pairwise(observations):
        assert earlier.complete <= later.complete, (
            f"{task_id}: COMPLETE went back: {earlier.complete} -> {later.complete}"
        )

    # A dead holder's lease was taken over by the next run, and recorded once that run got to its stages.
    for index, obs in enumerate(observations):
        if obs.lease_pid is None:
            continue
        if index + 1 < len(observations):
            nxt = observations[index + 1]
            ran_stages = nxt.journal_len > obs.journal_len
            recorded = nxt.takeover_pids
        else:
            ran_stages, recorded = True, final
        if ran_stages:
            assert obs.lease_pid in recorded, (
                f"{task_id}: the lease of killed pid {obs.lease_pid} was not recorded as taken over: {recorded}"
            )

    # The stage code ran in order; an interrupted stage ran again, a finished one did not.
    starts = [w[1] for w in journal if w[0] == "start"]
    assert sorted(set(starts)) == sorted(_stage_names())
    assert starts == sorted(starts, key=lambda n: int(n[1:])), f"{task_id}: stages ran out of order: {starts}"
    return _final_words(output)


@pytest.fixture(scope="module")
def forkserver():
    ctx = multiprocessing.get_context("forkserver")
    # The S3 backend's imports (Airflow's ObjectStoragePath, s3fs) too: they take a second a process.
    s3_modules = ["airflow.sdk", "s3fs", "airflow_checkmate.checkmate.io.objectstorage"]
    ctx.set_forkserver_preload(["tests.helpers.run_task", __name__, *s3_modules])
    return ctx


def _timed_run(ctx, tmp: Path, store: Store, task_id: str, stages: int) -> float:
    argv = [*store.args, task_id, str(stages), "--journal", str(tmp / "warmup.journal")]
    began = time.monotonic()
    proc = ctx.Process(target=_child_main, args=(argv, str(tmp / "warmup.out"), store.env))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0, (tmp / "warmup.out").read_text()
    return time.monotonic() - began


def measure(ctx, tmp: Path, store: Store) -> tuple[float, float]:
    """Seconds a child takes to start, bind and unbind, and seconds of engine work (durable writes) per
    stage, on this machine, through the warmed-up forkserver."""
    _timed_run(ctx, tmp, store, "boot", 1)  # the first start also boots the forkserver
    one = min(_timed_run(ctx, tmp, store, f"one-{i}", 1) for i in range(3))
    full = min(_timed_run(ctx, tmp, store, f"full-{i}", N_STAGES) for i in range(3))
    return one, max(0.001, (full - one) / (N_STAGES - 1))


@pytest.mark.parametrize(
    ("backend", "min_kills", "kills_per_task", "sleeps"),
    [("file", MIN_KILLS, KILLS_PER_TASK, SLEEPS), ("s3", 20, 5, S3_SLEEPS)],
    ids=["file", "s3"],
)
def test_sigkill_campaign(
    forkserver,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    backend: str,
    min_kills: int,
    kills_per_task: int,
    sleeps: tuple[float, ...],
) -> None:
    store: Store
    if backend == "s3":
        store = s3_store(request.getfixturevalue("s3_url"), request.getfixturevalue("s3_endpoint"))
    else:
        base = tmp_path / "store"
        base.mkdir()
        store = file_store(base)
    startup, per_stage = measure(forkserver, tmp_path, store)
    stats = TaskLog()
    reruns = 0
    tasks = 0
    for seed in range(MAX_TASKS):
        if stats.kills >= min_kills:
            break
        tasks += 1
        words = run_campaign(forkserver, store, seed, stats, tmp_path, startup, per_stage, kills_per_task, sleeps)
        assert words[0] == "COMPLETE", words
        assert json.loads(" ".join(words[1:])) == expected_result(N_STAGES)
        starts = [w for w in read_journal(tmp_path / f"kill-{seed}.journal") if w[0] == "start"]
        reruns += len(starts) - N_STAGES
    kinds = ", ".join(f"{k}: {v}" for k, v in sorted(stats.kinds.items()))
    print(
        f"\n{backend} kill campaign ({startup * 1000:.0f} ms to start and bind, "
        f"{per_stage * 1000:.1f} ms of writes a stage): "
        f"{tasks} tasks, {stats.kills} kills, "
        f"{stats.runs - tasks} resumes, "
        f"{reruns} re-runs of interrupted stages, {stats.tmp_leftovers} temp files left by kills mid-write\n"
        f"kills landed: {kinds}"
    )
    assert stats.kills >= min_kills, f"only {stats.kills} kills in {tasks} tasks"
    # The campaign really interrupted stages (or it proves little about resuming them).
    assert reruns > 0
    assert stats.kinds.get("mid-stage", 0) > 0
