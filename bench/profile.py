"""Where the engine's time goes on durable local files: ``python -m bench.profile``.

Two views of a task of N no-op stages (bind, execute, unbind):

- an I/O census (files only): the system calls that cost on a journaling filesystem (fsync, fdatasync,
  creating/opening files, rename, unlink, flock, stat, directory scans), counted per bind, per stage
  and per unbind by wrapping the ``os``/``io``/``fcntl`` functions the storage layer calls. The floor
  of one crash-safe checkpoint per stage is one append and one ``fdatasync`` to a file already open;
- a profile (cProfile, or pyinstrument with ``--pyinstrument``) of several runs, the top functions by
  own time, so the engine's Python work can be told from the time it waits in fsync or the database.

``--postgres`` profiles the PostgreSQL backend instead, in a scratch database on the
CHECKMATE_BENCH_POSTGRES_URL server (dropped at the end).
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import cProfile
import fcntl
import io as io_module
import logging
import os
import pstats
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from airflow_checkmate.checkmate import BaseStageState, CheckMateEngine, TaskIO
from bench.backends import Noop, run_task

#: (module, attribute, label) of the calls the census counts.
CALLS: tuple[tuple[Any, str, str], ...] = (
    (os, "fsync", "fsync"),
    (os, "fdatasync", "fdatasync"),
    (os, "open", "os.open"),
    (io_module, "open", "open(r)"),  # pathlib reads through io.open,
    (builtins, "open", "open(r)"),  # the rest through the builtin
    (os, "replace", "rename"),
    (os, "unlink", "unlink"),
    (os, "stat", "stat"),
    (os, "scandir", "scandir"),
    (os, "mkdir", "mkdir"),
    (fcntl, "flock", "flock"),
)


@contextlib.contextmanager
def census(counts: Counter[str]) -> Iterator[None]:
    """Count the listed calls into ``counts`` while the block runs (this thread and the lease thread)."""
    originals = [(module, name, getattr(module, name)) for module, name, _ in CALLS]

    def counting(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[label] += 1
            return fn(*args, **kwargs)

        return wrapper

    for (module, name, fn), (_, _, label) in zip(originals, CALLS, strict=True):
        setattr(module, name, counting(label, fn))
    try:
        yield
    finally:
        for module, name, fn in originals:
            setattr(module, name, fn)


def io_census(io: TaskIO, stages: int) -> dict[str, Counter[str]]:
    """Calls made by bind, by execute (per stage, rounded) and by unbind of a fresh task."""
    templates = [Noop(stage_name=f"s{i}", state=BaseStageState()) for i in range(stages)]
    engine: CheckMateEngine[Any, Any] = CheckMateEngine(io, f"census-{uuid.uuid4().hex[:8]}", templates)
    phases: dict[str, Counter[str]] = {"bind": Counter(), "execute": Counter(), "unbind": Counter()}
    with census(phases["bind"]):
        engine.bind()
    with census(phases["execute"]):
        engine.execute()
    with census(phases["unbind"]):
        engine.unbind()
    engine.bind()
    engine.unbind(clean=True)
    return phases


def profiled_run(io: TaskIO, stages: int, prof: cProfile.Profile | None) -> float:
    """Seconds to bind, execute and unbind a fresh task, profiled (the untimed cleanup is not)."""
    templates = [Noop(stage_name=f"s{i}", state=BaseStageState()) for i in range(stages)]
    engine: CheckMateEngine[Any, Any] = CheckMateEngine(io, f"profile-{uuid.uuid4().hex[:8]}", templates)
    begin = time.perf_counter()
    if prof is not None:
        prof.enable()
    with engine:
        engine.execute()
    if prof is not None:
        prof.disable()
    elapsed = time.perf_counter() - begin
    engine.bind()
    engine.unbind(clean=True)
    return elapsed


def print_census(io: TaskIO) -> None:
    """The I/O census of a 20-stage task on files, against the floor's calls per stage."""
    phases = io_census(io, 20)
    labels = list(dict.fromkeys(label for _, _, label in CALLS))
    print("I/O census of one task (20 stages): calls per bind, per stage, per unbind")
    print(f"{'phase':<12}" + "".join(f"{label:>10}" for label in labels))
    for phase, per in (("bind", 1), ("per stage", 20), ("unbind", 1)):
        counts = phases["execute" if phase == "per stage" else phase]
        print(f"{phase:<12}" + "".join(f"{counts[label] / per:>10.3g}" for label in labels))
    floor_calls = {"fdatasync": 1}
    print(f"{'floor/stage':<12}" + "".join(f"{floor_calls.get(label, 0):>10}" for label in labels))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, nargs="+", default=[10, 1000], help="task sizes N")
    parser.add_argument("--stage-budget", type=int, default=3000, help="stages profiled per N (runs = budget / N)")
    parser.add_argument("--top", type=int, default=15, help="functions listed per profile")
    parser.add_argument("--pyinstrument", action="store_true", help="profile with pyinstrument (bench extra)")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL (CHECKMATE_BENCH_POSTGRES_URL)")
    args = parser.parse_args(argv)
    logging.getLogger("airflow_checkmate").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        if args.postgres:
            from support.pg import fresh_database

            server = os.environ.get("CHECKMATE_BENCH_POSTGRES_URL")
            if not server:
                parser.error("--postgres needs CHECKMATE_BENCH_POSTGRES_URL (a server; a scratch database is made)")
            io = TaskIO.from_base_url(stack.enter_context(fresh_database(server, prefix="checkmate_profile")))
        else:
            io = TaskIO.from_base_url(f"{tmp}/engine")
        run_task(io, 3)  # warm up imports and first-call paths
        if not args.postgres:
            print_census(io)

        for n in args.stages:
            runs = max(1, args.stage_budget // n)
            print(f"\nProfile: N={n}, {runs} run(s) of bind + execute + unbind, top {args.top} by own time")
            if args.pyinstrument:
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.0005)
                with profiler:  # cleanup included here: pyinstrument cannot be paused around it
                    for _ in range(runs):
                        run_task(io, n)
                print(profiler.output_text(unicode=True, color=False, show_all=False))
                continue
            prof = cProfile.Profile()
            elapsed = sum(profiled_run(io, n, prof) for _ in range(runs))
            stats = pstats.Stats(prof, stream=sys.stdout)
            total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
            fsync = sum(v[2] for k, v in stats.stats.items() if k[2] == "<built-in method posix.fsync>")  # type: ignore[attr-defined]
            print(
                f"{elapsed / runs / n * 1e6:.0f} µs/stage under the profiler; fsync is {fsync / total:.0%} of own time"
            )
            stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
