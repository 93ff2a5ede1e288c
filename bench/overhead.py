"""Per-stage overhead of the engine against the floor and against DBOS, and its scaling.

``python -m bench.overhead``. For N no-op stages, each round measures, interleaved (the order rotates
from round to round so no contender always runs first or last):

- engine: bind, execute and unbind a fresh task of N stages on durable local files;
- floor: the durable writes the engine cannot avoid, two atomic replace-with-fsync writes (temp file,
  fsync, rename, fsync of the folder) per stage of an object the size of the engine's stage object;
- DBOS: one workflow of N no-op ``@DBOS.step()`` steps on a SQLite system database in the same temp
  folder (DBOS's default SQLite setup: rollback journal, synchronous=FULL, so every step's checkpoint
  is fsynced too). Needs the ``bench`` extra; without it the column reads n/a.

Each contender's cleanup (removing the task, the floor's files) is not timed and is flushed with
``os.sync()`` before the next one starts, so no one pays for another's metadata in its own fsyncs.
It reports µs per stage (medians of the rounds), the ratios, the per-stage cost at the largest N
against N=100 (no quadratic work in bind, execute or unbind), and whether issue 5's targets hold.
Benchmarks report, they do not assert: a missed target is printed, the exit code stays 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow_checkmate.checkmate import TaskIO
from bench.backends import run_task
from bench.peers import INSTALL_HINT, dbos_workflow

#: issue 5's targets: (label, limit), evaluated at TARGET_N (or the largest N measured below it).
TARGET_N = 1000
FLOOR_TARGET = 1.3
DBOS_TARGET = 0.75
SCALING_TARGET = 1.25
SCALING_BASE_N = 100


def floor(folder: Path, stages: int, size: int) -> float:
    """Seconds for two atomic, durable replace writes of ``size`` bytes per stage."""
    payload = b"x" * size
    folder.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    for index in range(stages):
        target = folder / f"s{index}.stage.json"
        for _ in range(2):
            tmp = folder / f".s{index}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
            dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    elapsed = time.perf_counter() - begin
    shutil.rmtree(folder)  # not timed; keeps the folder as small as the engine's cleaned one
    return elapsed


def stage_object_size(io: TaskIO) -> int:
    """The size of a COMPLETE no-op stage's stored object, as the engine writes it."""
    from airflow_checkmate.checkmate import BaseStageState, CheckMateEngine
    from bench.backends import Noop

    engine: CheckMateEngine[Any, Any] = CheckMateEngine(
        io, "size-probe", [Noop(stage_name="s0", state=BaseStageState())]
    )
    with engine:
        engine.execute()
        size = len(io.read_bytes("size-probe/s0.stage.json"))
    engine.bind()
    engine.unbind(clean=True)
    return size


def verdict(value: float | None, limit: float) -> str:
    if value is None:
        return "n/a"
    return "target met" if value <= limit else "target missed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, nargs="+", default=[10, 100, 1000], help="task sizes N")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median is reported)")
    args = parser.parse_args(argv)
    sizes: list[int] = sorted(set(args.stages))
    logging.getLogger("airflow_checkmate").setLevel(logging.WARNING)  # the engine logs every stage at INFO

    samples: dict[str, dict[int, list[float]]] = {k: {n: [] for n in sizes} for k in ("engine", "floor", "dbos")}
    with tempfile.TemporaryDirectory() as tmp, dbos_workflow(f"sqlite:///{tmp}/dbos.sqlite") as dbos_run:
        io = TaskIO.from_base_url(f"{tmp}/engine")
        size = stage_object_size(io)
        runners: dict[str, Callable[[int, int], float]] = {
            "engine": lambda n, _round: run_task(io, n),
            "floor": lambda n, round_: floor(Path(tmp) / f"floor-{round_}-{n}", n, size),
        }
        if dbos_run is not None:
            runners["dbos"] = lambda n, _round: dbos_run(n)
        order = list(runners)
        for round_ in range(args.rounds):
            shift = round_ % len(order)
            for n in sizes:
                for name in order[shift:] + order[:shift]:
                    samples[name][n].append(runners[name](n, round_) / n)
                    os.sync()  # flush the untimed cleanup's metadata now, not in the next one's fsyncs

    def med(name: str, n: int) -> float | None:
        return statistics.median(samples[name][n]) if samples[name][n] else None

    def ratio(a: str, a_n: int, b: str, b_n: int) -> float | None:
        """Median over the rounds of a/b measured in the same round: load that drifts between rounds cancels."""
        pairs = list(zip(samples[a][a_n], samples[b][b_n], strict=False))
        return statistics.median(x / y for x, y in pairs) if pairs else None

    def cell(value: float | None, width: int, scale: float = 1.0, fmt: str = ".0f", unit: str = "") -> str:
        return f"{'n/a':>{width}}" if value is None else f"{value * scale:>{width - len(unit)}{fmt}}{unit}"

    print(f"Per-stage overhead, {size}-byte stage objects, median of {args.rounds} interleaved rounds")
    print("(µs: medians per column; ratios: medians of the ratios measured side by side in each round)")
    heads = ("engine µs/stage", 16), ("floor µs/stage", 15), ("DBOS µs/stage", 14), ("engine/floor", 13)
    print(f"{'N':>7} " + " ".join(f"{h:>{w}}" for h, w in heads) + f" {'engine/DBOS':>12}")
    for n in sizes:
        e, f, d = med("engine", n), med("floor", n), med("dbos", n)
        print(
            f"{n:>7} {cell(e, 16, 1e6)} {cell(f, 15, 1e6)} {cell(d, 14, 1e6)} "
            f"{cell(ratio('engine', n, 'floor', n), 13, fmt='.2f', unit='x')} "
            f"{cell(ratio('engine', n, 'dbos', n), 12, fmt='.2f', unit='x')}"
        )
    if dbos_run is None:
        print(f"DBOS: not installed; {INSTALL_HINT} to compare against it")
    base = SCALING_BASE_N if SCALING_BASE_N in sizes else sizes[0]
    large = sizes[-1]
    scaling = ratio("engine", large, "engine", base)
    others = ", ".join(
        f"{label} {value:.2f}x"
        for label, value in (
            ("floor", ratio("floor", large, "floor", base)),
            ("DBOS", ratio("dbos", large, "dbos", base)),
        )
        if value is not None
    )  # the same ratio for the floor shows what the filesystem itself adds as a folder grows
    print(f"scaling: per-stage cost at N={large} is {scaling or 0:.2f}x that at N={base} (same ratio for {others})")

    at = max((n for n in sizes if n <= TARGET_N), default=sizes[0])
    note = "" if at == TARGET_N else f" (N={TARGET_N} not measured)"
    print(f"targets (issue 5), at N={at}{note}:")
    for label, value, limit in (
        ("engine/floor", ratio("engine", at, "floor", at), FLOOR_TARGET),
        ("engine/DBOS", ratio("engine", at, "dbos", at), DBOS_TARGET),
        (f"scaling N={large} vs N={base}", scaling, SCALING_TARGET),
    ):
        shown = "n/a" if value is None else f"{value:.2f}x"
        print(f"  {label:<26} <= {limit:.2f}x: {shown:>6}  {verdict(value, limit)}")
    floor_dbos = ratio("floor", at, "dbos", at)
    if floor_dbos is not None:
        print(
            f"  (the floor alone is {floor_dbos:.2f}x DBOS at N={at}: the engine does the floor's durable "
            "writes, so engine/DBOS cannot go below that)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
