"""``checkmate list`` over a large registry: ``python -m bench.registry_list``.

A scratch PostgreSQL database (made on the CHECKMATE_BENCH_POSTGRES_URL server, dropped at the end) gets
the registry's tables through ``TaskRegistry`` and is then filled by one ``INSERT ... SELECT`` from
``generate_series`` (seconds, not the minutes 100,000 registrations would take). The mix looks like a
busy deployment: 200 DAGs of equal size (tag ``dag:<id>``, as the operator adds it) and one retired DAG whose
500 tasks are the oldest (the worst case for a scan in update order), 10 teams (tag
``team:<n>``), 30% of rows cleaned, statuses mostly COMPLETE with 2% ERROR, 1% each RUNNING, RETRY,
CANCELED and CREATED, updates spread over 30 days. Each filter is timed as the CLI runs it, in this
process (imports and the first connection are warmed once, so interpreter start-up is not in the
figure: ``bench.startup`` measures that), median of several runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io as io_module
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator

from sqlalchemy import text

from airflow_checkmate import cli
from airflow_checkmate.checkmate.registry import TaskRegistry

DAGS = 200
TEAMS = 10
#: label -> the `checkmate list` filter arguments it times.
FILTERS: dict[str, list[str]] = {
    "status ERROR": ["--status", "ERROR"],
    "tag team:3": ["--tag", "team:3"],
    "DAG dag_42": ["--dag", "dag_42"],
    "DAG, oldest tasks": ["--dag", "dag_retired"],
}

_SEED_TASKS = """
INSERT INTO checkmate_tasks (task_id, base_url, checkmate_factory, factory_kwargs, status, queue, description,
    cleaned, created_at, updated_at, lock_holder, stages_done, stages_total, current_stage)
SELECT 'task-' || i, '/data/checkmate', 'pipelines.factory:build', '{}',
    CASE WHEN i % 100 < 2 THEN 'ERROR' WHEN i % 100 = 2 THEN 'RUNNING' WHEN i % 100 = 3 THEN 'RETRY'
         WHEN i % 100 = 4 THEN 'CANCELED' WHEN i % 100 = 5 THEN 'CREATED' ELSE 'COMPLETE' END,
    'default', 'bench task ' || i, (i * 7919) % 10 < 3,
    now() - make_interval(secs => i * 26), now() - make_interval(secs => i * 26 - 10),
    NULL, 10, 10, NULL
FROM generate_series(1, :n) AS i
"""
_SEED_TAGS = """
INSERT INTO checkmate_task_tags (tag, task_id, cleaned, updated_at)
SELECT 'dag:' || CASE WHEN i > :n - :retired THEN 'dag_retired' ELSE 'dag_' || (i % :dags) END,
    task_id, cleaned, updated_at
FROM (SELECT substr(task_id, 6)::int AS i, * FROM checkmate_tasks) AS t
UNION ALL
SELECT 'team:' || (i % :teams), task_id, cleaned, updated_at
FROM (SELECT substr(task_id, 6)::int AS i, * FROM checkmate_tasks) AS t
"""


def seed(database_url: str, tasks: int) -> float:
    """Fill the registry at ``database_url`` with ``tasks`` rows and their tags; seconds it took."""
    registry = TaskRegistry(database_url)
    begin = time.perf_counter()
    with registry.engine.begin() as conn:
        conn.execute(text(_SEED_TASKS), {"n": tasks})
        retired = min(500, max(10, tasks // 200))  # the size of one DAG
        conn.execute(text(_SEED_TAGS), {"n": tasks, "dags": DAGS, "teams": TEAMS, "retired": retired})
    with registry.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE checkmate_tasks"))
        conn.execute(text("ANALYZE checkmate_task_tags"))
    return time.perf_counter() - begin


def list_seconds(database_url: str, filters: list[str], base_url: str) -> tuple[float, int]:
    """Seconds for one in-process ``checkmate list`` with ``filters``, and the rows it printed."""
    out = io_module.StringIO()
    argv = ["--base-url", base_url, "--database-url", database_url, "list", *filters]
    begin = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    elapsed = time.perf_counter() - begin
    if code != 0:
        raise RuntimeError(f"checkmate {' '.join(argv)} exited {code}")
    return elapsed, max(0, len(out.getvalue().splitlines()) - 1)  # less the header line


def time_filters(database_url: str, runs: int) -> dict[str, tuple[float, int]]:
    """Median seconds and rows printed per filter of :data:`FILTERS` (interleaved runs, one warm-up)."""
    samples: dict[str, list[float]] = {label: [] for label in FILTERS}
    rows: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as base:
        for label, filters in FILTERS.items():
            rows[label] = list_seconds(database_url, filters, base)[1]
        for _ in range(runs):
            for label, filters in FILTERS.items():
                samples[label].append(list_seconds(database_url, filters, base)[0])
    return {label: (statistics.median(values), rows[label]) for label, values in samples.items()}


@contextlib.contextmanager
def seeded_registry(server: str, tasks: int) -> Iterator[tuple[str, float]]:
    """A scratch database on ``server`` holding ``tasks`` registered tasks; yields (URL, seeding seconds)."""
    from support.pg import fresh_database

    with fresh_database(server, prefix="checkmate_bench_registry") as url:
        yield url, seed(url, tasks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000, help="registered tasks")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per filter (the median is reported)")
    args = parser.parse_args(argv)
    server = os.environ.get("CHECKMATE_BENCH_POSTGRES_URL")
    if not server:
        print("checkmate list bench skipped: set CHECKMATE_BENCH_POSTGRES_URL to a PostgreSQL server")
        return 0
    with seeded_registry(server, args.tasks) as (url, seconds):
        print(f"checkmate list over {args.tasks:,} registered tasks on PostgreSQL (seeded in {seconds:.1f} s)")
        for label, (median, rows) in time_filters(url, args.runs).items():
            print(f"  {label:<18} {median * 1e3:>8.1f} ms  ({rows} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
