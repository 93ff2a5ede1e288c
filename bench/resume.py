"""What resuming costs against starting fresh: ``python -m bench.resume``.

A task of N stages (default 1000) whose first k stages are COMPLETE in storage is bound again and
executed; the time measured runs from ``bind()`` until the code of stage k+1 is entered, i.e. the lock,
loading and checking every stored stage, finding the first incomplete one and persisting it RUNNING.
The reference is a fresh task of N stages measured the same way (bind until stage 1's code starts).

The stored task is made through the public API only: its stage k+1 raises under RetryPolicy.RETRY, so
the task is left with k COMPLETE stages and stage k+1 in RETRY (and it raises again in every measured
run, which ends the run there). Each round resumes its own copy of that task's folder (copied, not
timed), so every round starts from the same stored state; the page cache is warm, as on an Airflow retry
of a task that just failed on the same worker. Rounds are interleaved and medians reported.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from airflow_checkmate.checkmate import (
    BaseStage,
    BaseStageState,
    CheckMateEngine,
    RetryPolicy,
    TaskEngineException,
    TaskIO,
)

TASK_ID = "resume-bench"

#: perf_counter() when a stopping stage's code was entered; read by the measuring code.
_entered: list[float] = []


class StopHere(Exception):
    """Raised by the stage the run should stop at (it goes to RETRY, so the task stays resumable)."""


class Probe(BaseStage[BaseStageState[Any]]):
    """A no-op stage; with ``stop`` it notes when its code was entered and raises StopHere."""

    #: Where to stop is a benchmark switch: the resuming engine is built without it.
    checkmate_identity_exclude: ClassVar[frozenset[str]] = frozenset({"stop"})

    stop: bool = False

    def execute_stage(self, previous_state_copy: BaseStageState[Any]) -> None:
        if self.stop:
            _entered.append(time.perf_counter())
            raise StopHere(self.stage_name)


def make_engine(io: TaskIO, task_id: str, stages: int, stop_at: int) -> CheckMateEngine[Any, Any]:
    templates = [Probe(stage_name=f"s{i}", state=BaseStageState(), stop=i == stop_at) for i in range(stages)]
    return CheckMateEngine(io, task_id, templates, retry_policy=RetryPolicy.RETRY, max_attempts=1_000_000)


def run_until_stop(engine: CheckMateEngine[Any, Any]) -> float:
    """Seconds from bind() until the stopping stage's code is entered; the engine is left bound."""
    _entered.clear()
    begin = time.perf_counter()
    engine.bind()
    try:
        engine.execute()
    except TaskEngineException as exc:
        if not isinstance(exc.__cause__, StopHere):
            raise
    if not _entered:
        raise RuntimeError(f"task {engine.task_id!r} never reached its stopping stage")
    return _entered[-1] - begin


def prepare(folder: Path, stages: int, complete: int) -> None:
    """Store task TASK_ID in ``folder`` with ``complete`` COMPLETE stages and the next one in RETRY."""
    engine = make_engine(TaskIO.from_base_url(str(folder)), TASK_ID, stages, complete)
    run_until_stop(engine)
    engine.unbind()


def resume(prepared: Path, work: Path, stages: int, complete: int) -> float:
    """Seconds to bind a copy of a prepared task and reach its first incomplete stage."""
    shutil.copytree(prepared, work)
    engine = make_engine(TaskIO.from_base_url(str(work)), TASK_ID, stages, complete)
    try:
        return run_until_stop(engine)
    finally:
        engine.unbind()
        shutil.rmtree(work)


def prepare_in(io: TaskIO, task_id: str, complete: int) -> None:
    """Store ``task_id`` on any backend with ``complete`` COMPLETE stages and the next one in RETRY."""
    engine = make_engine(io, task_id, complete + 1, complete)
    run_until_stop(engine)
    engine.unbind()


def resume_in_place(io: TaskIO, task_id: str, complete: int) -> float:
    """Seconds to bind a task made by :func:`prepare_in` and reach its first runnable stage.

    It resumes the stored task itself, not a copy (a database has no folder to copy): each run leaves
    the same COMPLETE stages and the same stage in RETRY, one attempt further, so rounds stay comparable.
    """
    engine = make_engine(io, task_id, complete + 1, complete)
    try:
        return run_until_stop(engine)
    finally:
        engine.unbind()


def fresh(io: TaskIO, stages: int) -> float:
    """Seconds to bind a new task of ``stages`` stages and reach its first stage."""
    engine = make_engine(io, f"fresh-{uuid.uuid4().hex[:12]}", stages, 0)
    try:
        return run_until_stop(engine)
    finally:
        engine.unbind(clean=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, default=1000, help="stages per task (N)")
    parser.add_argument(
        "--complete", type=int, nargs="+", help="COMPLETE stages before the resume point (k); default 0, N/2, N-1"
    )
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (the median is reported)")
    args = parser.parse_args(argv)
    n: int = args.stages
    ks: list[int] = sorted(set(args.complete if args.complete else [0, n // 2, n - 1]))
    if n < 1 or any(not 0 <= k < n for k in ks):
        parser.error(f"need N >= 1 and 0 <= k < N, got N={n}, k={ks}")
    logging.getLogger("airflow_checkmate").setLevel(logging.ERROR)  # each run logs the stop as a retry

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for k in ks:
            prepare(root / f"prepared-{k}", n, k)
        io = TaskIO.from_base_url(str(root / "fresh"))
        fresh(io, n)  # warm up

        def resumer(k: int) -> Callable[[int], float]:
            return lambda round_: resume(root / f"prepared-{k}", root / f"work-{round_}-{k}", n, k)

        runners: dict[str, Callable[[int], float]] = {"fresh": lambda _round: fresh(io, n)}
        runners.update({f"k={k}": resumer(k) for k in ks})
        samples: dict[str, list[float]] = {name: [] for name in runners}
        order = list(runners)
        for round_ in range(args.rounds):
            shift = round_ % len(order)
            for name in order[shift:] + order[:shift]:
                samples[name].append(runners[name](round_))

    base = statistics.median(samples["fresh"])
    print(f"Resume vs fresh start, N={n} stages, durable local files, median of {args.rounds} interleaved rounds")
    print("(bind until the first incomplete stage's code starts; k = COMPLETE stages loaded from storage)")
    print(f"{'task':>10} {'ms':>9} {'vs fresh':>9} {'µs per loaded stage':>20}")
    print(f"{'fresh':>10} {base * 1e3:>9.2f} {1:>8.2f}x {'-':>20}")
    for k in ks:
        value = statistics.median(samples[f"k={k}"])
        per = f"{(value - base) / k * 1e6:.0f}" if k else "-"
        print(f"{f'k={k}':>10} {value * 1e3:>9.2f} {value / base:>8.2f}x {per:>20}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
