"""One round of the zombie fencing campaign (see :mod:`reliability.zombie`): A paused, B takes over, A
resumed and refused, B completes; what each step left in storage, read around the engine."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from airflow_checkmate.checkmate import TaskEngineState
from reliability import kill_child
from reliability.kill_store import Store
from support.stages import CounterState, expected_result, read_journal

STAGES, SLEEP, OLD_LEASE = 4, 0.3, 1.0


@dataclass
class Outcome:
    refused: int = 0  # A's writes refused with LeaseLostException
    ran_on: int = 0  # stages A started after it was resumed
    overwritten: int = 0  # B's objects A changed or removed
    corrupt: int = 0
    completed: int = 0  # B completed with the crash-free result
    violations: list[str] = field(default_factory=list)


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.002)


def _started(jpath: Path, stage: str, attempt: int) -> Callable[[], bool]:
    return lambda: ["start", stage, str(attempt)] in read_journal(jpath)


def run_round(ctx: BaseContext, store: Store, task_id: str, tmp: Path, pause: Callable[[int], None]) -> Outcome:
    out = Outcome()
    jpath = tmp / f"{task_id}.journal"
    args = [*store.args, task_id, str(STAGES), "--journal", str(jpath), "--sleep", str(SLEEP)]
    old = kill_child.start(ctx, [*args, "--lease", str(OLD_LEASE)], tmp / f"{task_id}.old.out", store.env)
    new = None
    try:
        _wait(_started(jpath, "s2", 1), "A to start s2")
        assert old.pid is not None
        pause(old.pid)
        lease = json.loads(store.objects(task_id)["task.lock"])
        if lease["pid"] != old.pid:
            out.violations.append(f"the lease names pid {lease['pid']}, not A ({old.pid})")
        _wait(lambda: time.time() > lease["heartbeat_at"] + OLD_LEASE + 0.05, "A's lease to expire", 10)
        new = kill_child.start(ctx, args, tmp / f"{task_id}.new.out", store.env)
        _wait(_started(jpath, "s3", 1), "B to start s3")
        assert new.pid is not None
        pause(new.pid)
        before = store.objects(task_id)
        if json.loads(before["task.lock"])["pid"] != new.pid:
            out.violations.append("B was paused, but the lease does not name it")
        s2 = json.loads(before["s2.stage.json"])
        if (s2["status"], s2["attempts"]) != ("COMPLETE", 2):
            out.violations.append(f"B left s2 {s2['status']} after {s2['attempts']} attempts, not COMPLETE after 2")

        kill_child.resume(old)  # A finishes its s2 code; its COMPLETE write must be refused
        old.join(30)
        text = kill_child.output(tmp / f"{task_id}.old.out")
        if old.exitcode == 4 and "LeaseLostException" in text:
            out.refused += 1
        else:
            out.violations.append(f"A's write was not refused: exit {old.exitcode}, output {text[-400:]!r}")
        after = store.objects(task_id)
        changed = sorted(n for n in set(before) | set(after) if before.get(n) != after.get(n))
        out.overwritten += len(changed)
        if changed:
            out.violations.append(f"A changed B's objects {changed}")

        kill_child.resume(new)
        new.join(60)
        text = kill_child.output(tmp / f"{task_id}.new.out")
        # Airflow's logging (when the forkserver preloaded it) may print to stdout as well: take the runner's line.
        final = [line for line in text.splitlines() if line.startswith(("COMPLETE ", "RUNNING ", "ERROR ", "RETRY "))]
        if new.exitcode == 0 and final[-1:] == [f"COMPLETE {json.dumps(expected_result(STAGES))}"]:
            out.completed += 1
        else:
            out.violations.append(f"B did not complete: exit {new.exitcode}, output {text[-400:]!r}")
    finally:
        kill_child.reap(old, *([new] if new else []))
    _check_final(store, task_id, jpath, old.pid or 0, out)
    return out


def _check_final(store: Store, task_id: str, jpath: Path, old_pid: int, out: Outcome) -> None:
    stored = store.objects(task_id)
    try:
        task: TaskEngineState[Any] = TaskEngineState.model_validate_json(stored["task.json"])
        stages = {n: CounterState.model_validate_json(stored[f"{n}.stage.json"]) for n in ("s1", "s2", "s3", "s4")}
    except (KeyError, ValidationError) as exc:
        out.corrupt += 1
        out.violations.append(f"the final state does not parse: {exc}")
        return
    takeovers = [e.message for e in task.history if e.event == "lock takeover"]
    if len(takeovers) != 1 or f"pid {old_pid}," not in takeovers[0] or f"lease {OLD_LEASE:g} s" not in takeovers[0]:
        out.violations.append(f"the takeover of A (pid {old_pid}) is not recorded once: {takeovers}")
    history = [(h.status.value, h.attempt) for h in stages["s2"].history]
    if history != [("RUNNING", 1), ("RUNNING", 2), ("COMPLETE", 2)]:
        out.violations.append(f"s2's history is {history}")
    starts = [w[1:] for w in read_journal(jpath) if w[0] == "start"]
    out.ran_on = sum(1 for s in starts if s[0] in ("s3", "s4")) - 2
    if starts != [["s1", "1"], ["s2", "1"], ["s2", "2"], ["s3", "1"], ["s4", "1"]]:
        out.violations.append(f"stage starts {starts}: A ran on after it was resumed")
    if "task.lock" in stored:
        out.violations.append("B left its lease behind")
