"""Kill campaign: SIGKILL real processes running the engine at random moments, resume until complete.

Each task (7 journal stages, ``support.run_task``) is run by a child process that is SIGKILLed after a
seeded random delay, over and over (16 kills a task), then let finish. Odd tasks end every run with
``unbind(clean=True)``, so kills also land in cleanups. Kills land while binding, mid-stage, mid-write
(stage code done, COMPLETE not yet persisted), between stages, in unbind and in cleanup; the delays are
scaled to this machine's measured start, write and unbind times. On files, some kills are aimed at the
task journal's own work (an append, its fdatasync, a compaction: :mod:`reliability.kill_aim`); the table
says how many landed there, sampled from ``/proc`` at the kill, and what they left (a torn tail, a
compaction's temp file). ``reliability.kill_journal`` aims every kill there, with large records.
After every kill the campaign reads the storage around the engine (:mod:`reliability.kill_store`) and
checks (:mod:`reliability.kill_check`, :mod:`reliability.kill_task`):

- every stored object parses and they form a valid checkpoint (violation: *corrupt objects*);
- a stage seen persisted COMPLETE never starts again (*completed stages re-executed*) and never vanishes
  but in a cleanup (*tasks lost*, with runs that fail, never complete, or leave the wrong final storage);
- the next bind loads exactly the stored state: the complete task after a cleanup killed before it
  persisted ``cleaning``; after one killed later, it finishes removing the old objects and starts afresh
  (``cleaning`` is what DESIGN's "a crash mid-way is finished later" rests on);
- a killed holder's lease is taken over at once and recorded in the task's history (no run LOCKED; the
  next run's start-to-bound time, *takeover*, stays far below the lease);
- the final run prints the crash-free result (*wrong final results*).

Full size (``make reliability``): 1000 kills on file storage and 1000 on PostgreSQL (a fresh database);
``--backends s3`` adds a moto S3 server. ``tests/checkmate/test_kill_campaign.py`` runs a seeded subset.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from multiprocessing.context import BaseContext
from pathlib import Path

from reliability import kill_child
from reliability.kill_check import PHASES
from reliability.kill_store import Store, file_store, postgres_store
from reliability.kill_task import N_STAGES, Stats, Timing, run_one
from reliability.report import Report
from support import pg
from support.stages import read_journal

KILLS_PER_TASK = 16
#: Where kills landed in the file journal's work (sampled at the kill; left behind): see reliability.kill_landing.
JOURNAL_WORK = (
    "in append",
    "in fdatasync",
    "in compaction",
    "in creation",
    "left torn tail",
    "left compaction temp",
    "left creation temp",
)
LEASE_SECONDS = 30.0  # run_task's default lease


def calibrate(ctx: BaseContext, store: Store, tmp: Path) -> Timing:
    """Time unkilled runs through the warm forkserver, from the runs' own phase lines."""
    samples: dict[str, list[float]] = {"startup": [], "per_stage": [], "end_plain": [], "end_clean": []}
    for i in range(5):  # the first run boots the forkserver (or warms the store up): not a sample
        clean = i % 2 == 1
        jpath = tmp / f"calibrate-{i}.journal"
        argv = [*store.args, f"calibrate-{i}", str(N_STAGES), "--journal", str(jpath), "--phases"]
        began = time.monotonic()
        proc = kill_child.start(ctx, [*argv, *(["--clean"] if clean else [])], tmp / f"calibrate-{i}.out", store.env)
        try:
            proc.join(120)
        finally:
            kill_child.reap(proc)
        if proc.exitcode != 0:
            raise RuntimeError(f"a calibration run failed: {kill_child.output(tmp / f'calibrate-{i}.out')}")
        at = {w[0]: float(w[2]) for w in read_journal(jpath) if w[0] in ("bound", "executed", "unbound")}
        if i:
            samples["startup"].append(at["bound"] - began)
            samples["per_stage"].append((at["executed"] - at["bound"]) / N_STAGES)
            samples["end_clean" if clean else "end_plain"].append(at["unbound"] - at["executed"])
    return Timing(**{k: max(0.0005, statistics.median(v)) for k, v in samples.items()})


def run_backend(
    ctx: BaseContext, store: Store, kills: int, tmp: Path, seed: int = 0, kills_per_task: int = KILLS_PER_TASK
) -> tuple[Stats, Timing]:
    """Run tasks (seeds ``seed``, ``seed + 1``...) on ``store`` until ``kills`` kills were made."""
    timing = calibrate(ctx, store, tmp)
    stats = Stats()
    task_seed = seed
    while stats.kills < kills:
        run_one(ctx, store, task_seed, tmp, timing, min(kills_per_task, kills - stats.kills), stats)
        task_seed += 1
    return stats, timing


def rows(report: Report, results: list[tuple[str, Stats, Timing, float]]) -> None:
    """One column per backend; the last five rows are violations when not 0."""

    def row(label: str, values: list[object]) -> None:
        report.row(label, *values)

    row("tasks", [s.tasks for _, s, _, _ in results])
    row("kills", [s.kills for _, s, _, _ in results])
    for name in PHASES:
        row(f"  landed: {name}", [s.phases.get(name, 0) for _, s, _, _ in results])
    for name in JOURNAL_WORK:
        row(f"  journal: {name}", [s.journal.get(name, 0) for _, s, _, _ in results])
    row("resumes", [s.runs - s.tasks for _, s, _, _ in results])
    row("interrupted stages run again", [s.reruns for _, s, _, _ in results])
    row("cleanups resumed (killed before)", [s.cleanups_resumed for _, s, _, _ in results])
    row("cleanups finished by next bind", [s.cleanups_finished for _, s, _, _ in results])
    row("temp files left by kills", [s.temp_leftovers for _, s, _, _ in results])
    row("ms to start+bind (calibrated)", [t.startup * 1000 for _, _, t, _ in results])
    row("ms to take over: median", [statistics.median(s.takeover_seconds or [0]) * 1000 for _, s, _, _ in results])
    row("ms to take over: max", [max(s.takeover_seconds or [0]) * 1000 for _, s, _, _ in results])
    row("lease (s)", [LEASE_SECONDS for _ in results])
    row("seconds", [round(sec, 1) for _, _, _, sec in results])
    row("corrupt objects", [s.corrupt for _, s, _, _ in results])
    row("completed stages re-executed", [s.reexecuted for _, s, _, _ in results])
    row("tasks lost", [s.lost for _, s, _, _ in results])
    row("wrong final results", [s.wrong for _, s, _, _ in results])
    row("runs LOCKED by a dead holder", [s.locked for _, s, _, _ in results])


def violations(report: Report, name: str, stats: Stats) -> None:
    for message in stats.violations:
        report.violation(f"{name}: {message}")
    slow = [s for s in stats.takeover_seconds if s >= LEASE_SECONDS / 2]
    report.check(not slow, f"{name}: {len(slow)} takeovers took half the lease or more: {slow[:5]}")


@contextmanager
def _store(name: str, stack: ExitStack, tmp: Path, postgres_url: str | None) -> Iterator[Store | None]:
    if name == "file":
        (tmp / "store").mkdir()
        yield file_store(tmp / "store")
    elif name == "postgresql":
        server = pg.server_url(postgres_url)
        if server is None:
            yield None
            return
        url = stack.enter_context(pg.fresh_database(server, "checkmate_kill"))
        yield stack.enter_context(postgres_store(url))
    else:
        from reliability.kill_s3 import s3_campaign_store

        yield stack.enter_context(s3_campaign_store())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.kill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=1000, help="kills per backend (default 1000)")
    parser.add_argument("--kills-per-task", type=int, default=KILLS_PER_TASK)
    parser.add_argument("--seed", type=int, default=0, help="seed of the first task (each task is seeded)")
    parser.add_argument("--backends", nargs="+", default=["file", "postgresql"], choices=["file", "postgresql", "s3"])
    parser.add_argument("--postgres-url", default=None, help="server (a fresh database is made on it)")
    args = parser.parse_args(argv)

    ctx = kill_child.forkserver(s3="s3" in args.backends)
    results: list[tuple[str, Stats, Timing, float]] = []
    skipped: list[str] = []
    for name in args.backends:
        with (
            tempfile.TemporaryDirectory(prefix=f"checkmate-kill-{name}-") as tmp,
            ExitStack() as stack,
            _store(name, stack, Path(tmp), args.postgres_url) as store,
        ):
            if store is None:
                skipped.append(f"{name} (no server: --postgres-url or {' / '.join(pg.ENV_VARS)})")
                continue
            began = time.monotonic()
            stats, timing = run_backend(ctx, store, args.kills, Path(tmp), args.seed, args.kills_per_task)
            results.append((name, stats, timing, time.monotonic() - began))
            print(f"{name}: {stats.kills} kills in {time.monotonic() - began:.0f} s", flush=True)
    report = Report(
        f"kill campaign: {args.kills} SIGKILLs per backend, {N_STAGES}-stage tasks, seed {args.seed}",
        ["", *(name for name, *_ in results)],
    )
    rows(report, results)
    for name, stats, _, _ in results:
        violations(report, name, stats)
    for name in skipped:
        report.violation(f"skipped {name}")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
