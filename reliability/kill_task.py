"""One task of the kill campaign: run it in child processes, SIGKILL them at random moments, resume it until
it completes, and check storage and journal after every kill (see :mod:`reliability.kill`)."""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from pathlib import Path

from airflow_checkmate.checkmate import StageStatus
from reliability import kill_child
from reliability.kill_aim import Timing, kill_at_random
from reliability.kill_check import Snapshot, inspect, phase
from reliability.kill_landing import left_behind
from reliability.kill_store import Store
from support.stages import expected_result, read_journal

N_STAGES = 7


@dataclass
class Stats:
    """What the kills of one backend did and found."""

    tasks: int = 0
    runs: int = 0
    kills: int = 0
    phases: Counter[str] = field(default_factory=Counter)
    journal: Counter[str] = field(default_factory=Counter)  # file journal work a kill landed in / left cut short
    reruns: int = 0  # interrupted stages run again (allowed: stages are at-least-once)
    cleanups_finished: int = 0  # binds that found a cleanup past ``cleaning``, finished it and began anew
    cleanups_resumed: int = 0  # binds after a cleanup killed before it persisted ``cleaning``: task still whole
    temp_leftovers: int = 0  # temp files of writers killed mid-write: never listed or read; pruned only at cleanup
    corrupt: int = 0
    reexecuted: int = 0
    lost: int = 0
    wrong: int = 0
    locked: int = 0  # runs refused with LOCKED: a dead holder's lease not taken over
    takeover_seconds: list[float] = field(default_factory=list)  # start to bound of runs taking over a lease
    violations: list[str] = field(default_factory=list)

    def violation(self, task_id: str, message: str) -> None:
        self.violations.append(f"{task_id}: {message}")


@dataclass
class Observation:
    complete: frozenset[str]
    journal_len: int
    lease_pid: int | None
    committed: bool  # a cleanup had persisted ``cleaning`` (or finished)
    expected_status: str  # what the next bind must load


def _expected_status(snap: Snapshot) -> str:
    if snap.cleanup_committed:
        return str(StageStatus.CREATED.value)  # the next bind finishes the cleanup and starts the task afresh
    statuses = [s.status for s in snap.stages.values()]
    if len(snap.complete) == N_STAGES:
        return str(StageStatus.COMPLETE.value)
    return str((StageStatus.RUNNING if StageStatus.RUNNING in statuses else StageStatus.CREATED).value)


def run_one(ctx: BaseContext, store: Store, seed: int, tmp: Path, t: Timing, kills_per_task: int, stats: Stats) -> None:
    """Kill and resume task ``kill-SEED`` until a run completes; odd seeds end each run with a cleanup."""
    rng = random.Random(seed)
    task_id, clean = f"kill-{seed}", seed % 2 == 1
    sleep = store.sleeps[(seed // 2) % len(store.sleeps)]
    jpath = tmp / f"{task_id}.journal"
    folder = Path(store.args[0]) / task_id if store.name == "file" else None
    argv = [*store.args, task_id, str(N_STAGES), "--journal", str(jpath), "--sleep", str(sleep), "--phases"]
    argv += ["--clean"] if clean else []
    stats.tasks += 1
    observations: list[Observation] = []
    boundaries: list[int] = []  # journal index where a new incarnation (after a finished cleanup) binds
    killed: set[int] = set()
    cleanup_killed = False  # a kill landed in this incarnation's cleanup
    # ...after it persisted ``cleaning``: the next run to bind finishes it and starts a new incarnation
    pending_restart = False
    for run in range(kills_per_task + 5):
        before = len(read_journal(jpath))
        temp_before = store.temp_files(task_id)
        out = tmp / f"{task_id}.run{run}.out"
        began = time.monotonic()
        proc = kill_child.start(ctx, argv, out, store.env)
        try:
            if run < kills_per_task:
                remaining = N_STAGES - len(observations[-1].complete if observations else ())
                storage_work = kill_at_random(proc, rng, t, remaining, sleep, clean, jpath, folder)
            proc.join(120)
        finally:
            kill_child.reap(proc)
        stats.runs += 1
        journal = read_journal(jpath)
        new = journal[before:]
        bound = next((i for i, w in enumerate(new) if w[0] == "bound"), None)
        if bound is not None and observations:
            prev, words = observations[-1], new[bound]
            if words[3] != prev.expected_status:
                seen = f"complete {sorted(prev.complete)}, lease pid {prev.lease_pid}, committed {prev.committed}"
                stats.violation(
                    task_id, f"run {run} bound {words[3]}, the stored state said {prev.expected_status}: {seen}"
                )
            if pending_restart:
                stats.cleanups_finished += 1
                boundaries.append(before + bound)
                cleanup_killed = pending_restart = False
            elif cleanup_killed and prev.expected_status == "COMPLETE":
                stats.cleanups_resumed += 1
                cleanup_killed = False
            if prev.lease_pid is not None:
                stats.takeover_seconds.append(float(words[2]) - began)
                if str(prev.lease_pid) not in words[4].split(","):
                    stats.violation(task_id, f"run {run} took over pid {prev.lease_pid} without recording it")
        if proc.exitcode != -signal.SIGKILL:
            _final(store, task_id, clean, kill_child.output(out), proc.exitcode, stats)
            break
        stats.kills += 1
        killed.add(proc.pid or 0)
        if folder:
            stats.journal.update([f"in {storage_work}"] if storage_work else [])
            stats.journal.update(f"left {e}" for e in left_behind(folder))
        snap, problems = inspect(store.objects(task_id), task_id, N_STAGES)
        where = phase(new, snap, clean)
        stats.phases[where] += 1
        cleanup_killed = cleanup_killed or (where in ("cleanup", "exit") and clean)
        stats.temp_leftovers += max(0, store.temp_files(task_id) - temp_before)
        stats.corrupt += len(problems)
        for problem in problems:
            stats.violation(task_id, f"after kill {stats.kills} ({where}): {problem}")
        lease_pid = snap.lease.get("pid")
        if lease_pid is not None and lease_pid not in killed:
            stats.violation(task_id, f"the lease names pid {lease_pid}, not a killed run")
        obs = Observation(snap.complete, len(journal), lease_pid, snap.cleanup_committed, _expected_status(snap))
        pending_restart = pending_restart or (cleanup_killed and obs.committed)
        # COMPLETE stages may vanish only in a cleanup, or because one finished and the task started afresh.
        went = observations[-1].complete - obs.complete if observations else frozenset()
        new_incarnation = bool(boundaries) and boundaries[-1] >= observations[-1].journal_len
        if went and not pending_restart and not new_incarnation:
            stats.lost += 1
            stats.violation(task_id, f"stages stored COMPLETE vanished after kill {stats.kills}: {sorted(went)}")
        observations.append(obs)
    else:
        stats.lost += 1
        stats.violation(task_id, f"never completed in {kills_per_task + 5} runs")
    _check_journal(task_id, read_journal(jpath), observations, boundaries, stats)


def _check_journal(
    task_id: str, journal: list[list[str]], observations: list[Observation], boundaries: list[int], stats: Stats
) -> None:
    """No stage seen persisted COMPLETE started again in the same incarnation; each ran in order."""
    for obs in observations:
        end = min([b for b in boundaries if b >= obs.journal_len], default=len(journal))
        again = [w for w in journal[obs.journal_len : end] if w[0] == "start" and w[1] in obs.complete]
        stats.reexecuted += len(again)
        if again:
            stats.violation(task_id, f"stages persisted COMPLETE ran again: {again}")
    for begin, end in zip([0, *boundaries], [*boundaries, len(journal)], strict=True):
        starts = [int(w[1][1:]) for w in journal[begin:end] if w[0] == "start"]
        stats.reruns += len(starts) - len(set(starts))
        if starts != sorted(starts):
            stats.violation(task_id, f"stages ran out of order: {starts}")


def _final(store: Store, task_id: str, clean: bool, output: str, code: int | None, stats: Stats) -> None:
    """The unkilled run: it completed with the crash-free result and left the storage as promised."""
    if code == 5:
        stats.locked += 1
    lines = [line for line in output.splitlines() if line.split(" ", 1)[0] in {s.value for s in StageStatus}]
    words = lines[-1].split(" ", 1) if lines else [""]
    if code != 0 or words[0] != "COMPLETE":
        stats.lost += 1
        stats.violation(task_id, f"the final run exited {code}: {output[-500:]!r}")
        return
    if json.loads(words[1]) != expected_result(N_STAGES):
        stats.wrong += 1
        stats.violation(task_id, f"wrong final result {words[1]!r}")
    stored = store.objects(task_id)
    if clean:
        if stored or store.temp_files(task_id):
            stats.violation(task_id, f"the cleanup left {sorted(stored)} and {store.temp_files(task_id)} temp files")
        return
    snap, problems = inspect(stored, task_id, N_STAGES)
    stats.corrupt += len(problems)
    stats.violations.extend(f"{task_id}: final state: {p}" for p in problems)
    if snap.lease or len(snap.complete) != N_STAGES:
        stats.lost += 1
        stats.violation(task_id, f"final state: lease {snap.lease}, complete {sorted(snap.complete)}")
