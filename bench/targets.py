"""Issue 15's targets, side by side in one run: ``python -m bench.targets``.

Each comparison runs the engine and what it is compared with in the same rounds (the order rotates from
round to round) and reports the median of the per-round ratios, so load that drifts between rounds
cancels. A task is N no-op stages (300 by default), bound, executed and unbound; a contender's cleanup
is not timed and is flushed (``os.sync()``) before the next one starts.

- files: the engine on durable local files against one append + ``fdatasync`` per stage on the same
  disk, and against DBOS with its system database on SQLite in the same folder;
- PostgreSQL (CHECKMATE_BENCH_POSTGRES_URL): the engine against one single-row upsert commit per stage
  on the same server, and against DBOS with its system database on the same server;
- CPU: process CPU time per stage on tmpfs (``/dev/shm``) with ``durable=False``;
- resume: bind a task of 1,000 COMPLETE stages until the next stage's code starts, on files and on
  PostgreSQL, against main before storage v2 run in the same rounds (:mod:`bench.resume_baseline`),
  or, without git history, against the figure recorded here (:data:`RESUME_BASELINE_MS`);
- ``checkmate list`` by status, tag and DAG over 100,000 registered tasks on PostgreSQL.

Every line prints the figure, the target and PASS or FAIL; a benchmark reports, it does not fail.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_checkmate.checkmate import BaseStageState, CheckMateEngine, TaskIO
from bench import peers, registry_list, resume, resume_baseline
from bench.backends import Noop, run_task
from bench.machine import describe

#: Resume of 1,000 COMPLETE stages on main at 9f53fc9 (before storage v2), ms: this script's figure on
#: 2026-12-01 under load average 8 (four test runs sharing 2 cores). Used only when git cannot provide
#: that commit to run side by side (resume_baseline); then within RESUME_NOISE counts as no slower.
RESUME_BASELINE_MS = {"files": 80.0, "PostgreSQL": 2000.0}
RESUME_NOISE = 1.10
#: This tree's resume over main's, measured in the same rounds: no slower.
RESUME_TARGET = 1.0
RESUME_STAGES = 1000
LIST_TASKS = 100_000
CPU_TARGET_US = 75.0
LIST_TARGET_MS = 100.0


@dataclass
class Line:
    """One reported figure: what, the value, its unit, the limit (None: shown for information)."""

    label: str
    value: float | None
    unit: str
    limit: float | None = None

    def __str__(self) -> str:
        shown = "n/a" if self.value is None else f"{self.value:.2f}{self.unit}"
        if self.limit is None:
            return f"  {self.label:<58} {shown:>11}"
        verdict = "n/a" if self.value is None else ("PASS" if self.value <= self.limit else "FAIL")
        return f"  {self.label:<58} {shown:>11}  target <= {self.limit:g}{self.unit}  {verdict}"


def side_by_side(runners: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run every contender once per round, rotating the order; the seconds each run took, per contender."""
    samples: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners)
    for round_ in range(rounds):
        shift = round_ % len(order)
        for name in order[shift:] + order[:shift]:
            samples[name].append(runners[name]())
            os.sync()  # the untimed cleanup's metadata is flushed now, not in the next contender's fsyncs
    return samples


def ratio(samples: dict[str, list[float]], a: str, b: str) -> float | None:
    """The median over rounds of a/b measured in the same round."""
    if not samples.get(a) or not samples.get(b):
        return None
    return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))


def stored_bytes_per_stage(io: TaskIO, stages: int) -> int:
    """What the engine keeps in storage per stage of a finished no-op task: the floor's record size."""
    task_id = f"size-{uuid.uuid4().hex[:8]}"
    templates = [Noop(stage_name=f"s{i}", state=BaseStageState()) for i in range(stages)]
    engine: CheckMateEngine[Any, Any] = CheckMateEngine(io, task_id, templates)
    with engine:
        engine.execute()
    total = sum(len(io.read_bytes(name)) for name in io.list(task_id) if not name.endswith(".lock"))
    engine.bind()
    engine.unbind(clean=True)
    return max(1, total // stages)


def compare(
    title: str,
    io: TaskIO,
    floor: tuple[str, Callable[[int, int], float], float],
    dbos: tuple[str, str, float],
    stages: int,
    rounds: int,
) -> Iterator[Line]:
    """The engine per stage against a floor ``(label, seconds(stages, record size), limit)`` and DBOS
    ``(label, system database URL, limit)``, side by side in the same rounds."""
    floor_label, floor_run, floor_limit = floor
    dbos_label, dbos_url, dbos_limit = dbos
    size = stored_bytes_per_stage(io, 10)
    run_task(io, 3)  # warm up: connections, schema, first-call paths
    with peers.dbos_workflow(dbos_url) as dbos_run:
        runners: dict[str, Callable[[], float]] = {
            "engine": lambda: run_task(io, stages),
            "floor": lambda: floor_run(stages, size),
        }
        if dbos_run is not None:
            runners["dbos"] = lambda: dbos_run(stages)
        samples = side_by_side(runners, rounds)
    per_stage = {name: statistics.median(values) / stages * 1e6 for name, values in samples.items()}
    yield Line(f"{title}: engine µs/stage", per_stage["engine"], " µs")
    yield Line(f"{title}: {floor_label} µs/stage ({size} B)", per_stage["floor"], " µs")
    yield Line(f"{title}: {dbos_label} µs/stage", per_stage.get("dbos"), " µs")
    yield Line(f"{title}: engine / {floor_label}", ratio(samples, "engine", "floor"), "x", floor_limit)
    yield Line(f"{title}: engine / {dbos_label}", ratio(samples, "engine", "dbos"), "x", dbos_limit)


def cpu_per_stage(folder: str, stages: int, rounds: int) -> Line:
    """Median process CPU µs per stage of a task on non-durable files in ``folder`` (tmpfs)."""
    io = TaskIO.from_base_url(folder, durable=False)
    run_task(io, 3)
    values = []
    for _ in range(rounds):
        templates = [Noop(stage_name=f"s{i}", state=BaseStageState()) for i in range(stages)]
        engine: CheckMateEngine[Any, Any] = CheckMateEngine(io, f"cpu-{uuid.uuid4().hex[:8]}", templates)
        begin = time.process_time()  # every thread of the process: the lease heartbeat counts too
        with engine:
            engine.execute()
        values.append((time.process_time() - begin) / stages * 1e6)
        engine.bind()
        engine.unbind(clean=True)
    return Line("CPU: engine per stage, tmpfs, durable=False", statistics.median(values), " µs", CPU_TARGET_US)


def resume_lines(name: str, work: Path, urls: tuple[str, str], complete: int, rounds: int) -> Iterator[Line]:
    """Resume of ``complete`` COMPLETE stages, this tree against main before storage v2, same rounds.

    Without git history (no baseline to run), this tree alone against main's recorded figure.
    """
    title = f"resume, {complete:,} COMPLETE stages, {name}"
    samples = resume_baseline.side_by_side(work, urls, complete, rounds)
    if samples is not None:
        yield Line(f"{title}: ms", statistics.median(samples["now"]) * 1e3, " ms")
        yield Line(
            f"{title}: main {resume_baseline.BASELINE_COMMIT[:7]} ms", statistics.median(samples["main"]) * 1e3, " ms"
        )
        yield Line(f"{title}: now / main", ratio(samples, "now", "main"), "x", RESUME_TARGET)
        return
    io = TaskIO.from_base_url(urls[0])
    task_id = f"resume-{uuid.uuid4().hex[:8]}"
    resume.prepare_in(io, task_id, complete)
    resume.resume_in_place(io, task_id, complete)  # warm up
    value = statistics.median(resume.resume_in_place(io, task_id, complete) for _ in range(rounds)) * 1e3
    baseline = RESUME_BASELINE_MS[name] if complete == RESUME_STAGES else None
    limit = round(baseline * RESUME_NOISE, 1) if baseline else None
    recorded = f" (no git: vs main's {baseline:g} ms)" if baseline else " (no git: no baseline)"
    yield Line(f"{title}{recorded}", value, " ms", limit)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, default=300, help="no-op stages per task")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (medians are reported)")
    parser.add_argument("--resume-stages", type=int, default=RESUME_STAGES, help="COMPLETE stages to resume")
    parser.add_argument("--resume-rounds", type=int, default=9, help="resumes per engine (they are quick)")
    parser.add_argument("--list-tasks", type=int, default=LIST_TASKS, help="registered tasks for checkmate list")
    parser.add_argument("--dir", default=None, help="folder on the disk to measure files on (default: temp)")
    args = parser.parse_args(argv)
    logging.getLogger("airflow_checkmate").setLevel(logging.ERROR)  # stage INFO lines, the resume's retry
    server = os.environ.get("CHECKMATE_BENCH_POSTGRES_URL") or None
    n, rounds = args.stages, args.rounds

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp, contextlib.ExitStack() as stack:
        print(describe(tmp, server))
        print(f"{n} no-op stages per task, {rounds} rounds; ratios are medians of per-round ratios")
        io = TaskIO.from_base_url(f"{tmp}/engine")
        floor = ("append+fdatasync", lambda k, size: peers.append_floor(Path(tmp) / "floor.log", k, size), 2.5)
        for line in compare("files", io, floor, ("DBOS/SQLite", f"sqlite:///{tmp}/dbos.sqlite", 0.25), n, rounds):
            print(line, flush=True)
        if server:
            from support.pg import fresh_database

            url = stack.enter_context(fresh_database(server, prefix="checkmate_bench"))
            dbos_url = stack.enter_context(fresh_database(server, prefix="checkmate_bench_dbos"))
            pg = TaskIO.from_base_url(url)
            upsert = ("upsert commit", lambda k, size: peers.upsert_floor(url, k, size), 1.5)
            for line in compare("PostgreSQL", pg, upsert, ("DBOS/PostgreSQL", dbos_url, 0.6), n, rounds):
                print(line, flush=True)
        with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as shm:
            print(cpu_per_stage(shm, n, rounds), flush=True)
        resume_urls = (f"{tmp}/resume-now", f"{tmp}/resume-main")
        for line in resume_lines(
            "files", Path(tmp) / "resume-files", resume_urls, args.resume_stages, args.resume_rounds
        ):
            print(line, flush=True)
        if server:
            resume_urls = (
                stack.enter_context(fresh_database(server, prefix="checkmate_bench_now")),
                stack.enter_context(fresh_database(server, prefix="checkmate_bench_main")),
            )
            for line in resume_lines(
                "PostgreSQL", Path(tmp) / "resume-pg", resume_urls, args.resume_stages, args.resume_rounds
            ):
                print(line, flush=True)
            with registry_list.seeded_registry(server, args.list_tasks) as (registry_url, _):
                for label, (median, _rows) in registry_list.time_filters(registry_url, 7).items():
                    title = f"checkmate list {label}, {args.list_tasks:,} tasks"
                    print(Line(title, median * 1e3, " ms", LIST_TARGET_MS), flush=True)
        else:
            print("  (PostgreSQL lines skipped: set CHECKMATE_BENCH_POSTGRES_URL to include them)")
    if peers.dbos_available() is False:
        print(f"  (DBOS not installed: {peers.INSTALL_HINT} to compare against it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
