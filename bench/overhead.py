"""Per-stage overhead of the engine against the floor, and its scaling: ``python -m bench.overhead``.

For N no-op stages on durable local files, each round measures, interleaved:

- engine: bind, execute and unbind a fresh task of N stages;
- floor: the durable writes the engine cannot avoid, two atomic replace-with-fsync writes (temp file,
  fsync, rename, fsync of the folder) per stage of an object the size of the engine's stage object.

It reports µs per stage (medians), engine/floor, and the per-stage cost at the largest N against the
smallest (no quadratic work in bind, execute, status or dump).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from airflow_checkmate.checkmate import TaskIO
from bench.backends import run_task


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
    return time.perf_counter() - begin


def stage_object_size(io: TaskIO) -> int:
    """The size of a COMPLETE no-op stage's stored object, as the engine writes it."""
    from airflow_checkmate.checkmate import BaseStageState, CheckMateEngine
    from bench.backends import Noop

    engine: CheckMateEngine[object, object] = CheckMateEngine(
        io, "size-probe", [Noop(stage_name="s0", state=BaseStageState())]
    )
    with engine:
        engine.execute()
        return len(io.read_bytes("size-probe/s0.stage.json"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, nargs="+", default=[10, 100, 1000], help="task sizes N")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median is reported)")
    args = parser.parse_args(argv)
    logging.getLogger("airflow_checkmate").setLevel(logging.WARNING)  # the engine logs every stage at INFO

    with tempfile.TemporaryDirectory() as tmp:
        io = TaskIO.from_base_url(f"{tmp}/engine")
        size = stage_object_size(io)
        engine: dict[int, list[float]] = {n: [] for n in args.stages}
        floors: dict[int, list[float]] = {n: [] for n in args.stages}
        for round_ in range(args.rounds):
            for n in args.stages:
                engine[n].append(run_task(io, n) / n)
                floors[n].append(floor(Path(tmp) / f"floor-{round_}-{n}", n, size) / n)
    print(f"Engine vs floor on durable local files ({size}-byte stage objects), median of {args.rounds} rounds")
    print(f"{'N':>7} {'engine µs/stage':>16} {'floor µs/stage':>15} {'engine/floor':>13}")
    for n in args.stages:
        e, f = statistics.median(engine[n]), statistics.median(floors[n])
        print(f"{n:>7} {e * 1e6:>16.0f} {f * 1e6:>15.0f} {e / f:>12.2f}x")
    small, large = min(args.stages), max(args.stages)
    ratio = statistics.median(engine[large]) / statistics.median(engine[small])
    print(f"scaling: per-stage cost at N={large} is {ratio:.2f}x that at N={small}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
