"""Per-stage overhead of each storage backend, side by side in one run: ``python -m bench.backends``.

A task of N no-op stages is bound, executed and unbound on every backend in turn (interleaved rounds,
medians reported), so each figure is measured under the same machine load as the others:

- file: local files, durable (fsync of every checkpoint), as users run it;
- sqlite: the database backend on a SQLite file (WAL, synchronous=FULL);
- postgresql: the database backend in a fresh database on the CHECKMATE_BENCH_POSTGRES_URL server (skipped
  when unset);
- s3: object storage on a local S3 API server (moto, started here on loopback); network and server
  cost included, so it is an upper bound on the engine's share and a lower bound on real S3's latency.
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
from typing import Any

from airflow_checkmate.checkmate import BaseStage, BaseStageState, CheckMateEngine, TaskIO
from support.pg import fresh_database
from support.s3_server import running_s3_server, s3_client

S3_CONN_ID = "checkmate_bench_s3"


class Noop(BaseStage[BaseStageState[Any]]):
    """A stage that does nothing: what is left is the engine's and the storage's cost."""

    def execute_stage(self, previous_state_copy: BaseStageState[Any]) -> None:
        pass


def run_task(io: TaskIO, stages: int) -> float:
    """Seconds to bind, execute and unbind a fresh task of ``stages`` no-op stages."""
    templates = [Noop(stage_name=f"s{i}", state=BaseStageState()) for i in range(stages)]
    engine: CheckMateEngine[Any, Any] = CheckMateEngine(io, f"bench-{uuid.uuid4().hex[:12]}", templates)
    begin = time.perf_counter()
    with engine:
        engine.execute()
    elapsed = time.perf_counter() - begin
    engine.bind()  # leave nothing behind in a shared database or bucket (not timed)
    engine.unbind(clean=True)
    return elapsed


@contextlib.contextmanager
def s3_server() -> Iterator[tuple[str, str]]:
    """A moto S3 server on a free loopback port; yields (s3 URL of a fresh bucket, Airflow conn id)."""
    with running_s3_server(S3_CONN_ID) as endpoint:
        s3_client(endpoint).create_bucket(Bucket="bench")
        yield "s3://bench/state", S3_CONN_ID


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, default=100, help="stages per task")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median is reported)")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 backend")
    args = parser.parse_args(argv)
    logging.getLogger("airflow_checkmate").setLevel(logging.WARNING)  # the engine logs every stage at INFO

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        backends: dict[str, Callable[[], TaskIO]] = {
            "file (durable)": lambda: TaskIO.from_base_url(f"{tmp}/files"),
            "sqlite": lambda: TaskIO.from_base_url(f"sqlite:///{tmp}/bench.db"),
        }
        postgres = os.environ.get("CHECKMATE_BENCH_POSTGRES_URL")
        if postgres:
            # A database of its own on that server, dropped at the end: the server is left as it was found.
            database = stack.enter_context(fresh_database(postgres, prefix="checkmate_bench"))
            backends["postgresql"] = lambda: TaskIO.from_base_url(database)
        if not args.no_s3:
            url, conn_id = stack.enter_context(s3_server())
            backends["s3 (local moto)"] = lambda: TaskIO.from_base_url(url, conn_id=conn_id)
        with contextlib.redirect_stdout(sys.stderr):  # Airflow's connection log lines: keep stdout for the table
            ios = {name: make() for name, make in backends.items()}
            for io in ios.values():
                run_task(io, 3)  # warm up: connections, schema, imports
        samples: dict[str, list[float]] = {name: [] for name in ios}
        for _ in range(args.rounds):
            for name, io in ios.items():
                samples[name].append(run_task(io, args.stages) / args.stages)
    base = statistics.median(samples["file (durable)"])
    print(f"Per-stage overhead, {args.stages} no-op stages per task, median of {args.rounds} interleaved rounds")
    print(f"{'backend':<18} {'µs/stage':>10} {'vs file':>8}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:<18} {median * 1e6:>10.0f} {median / base:>7.2f}x")
    if not postgres:
        print("(postgresql skipped: set CHECKMATE_BENCH_POSTGRES_URL to include it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
