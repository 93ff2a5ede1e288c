"""What starting costs: ``python -m bench.startup``.

Each case is a new Python process, timed from spawn to exit (wall clock), in interleaved rounds; medians
are reported, and each case's cost above a bare interpreter (``python -c pass``):

- ``import airflow_checkmate.checkmate``: the engine package (its names load on first use);
- the engine in use: ``from airflow_checkmate.checkmate import CheckMateEngine, BaseStage, TaskIO``;
- ``checkmate list`` with ``--base-url`` and ``--database-url`` (file state, a SQLite registry): no Airflow;
- ``checkmate list`` through an Airflow connection (``AIRFLOW_CONN_CHECKMATE_DEFAULT``, same URLs);
- the connection lookup alone, ``BaseHook.get_connection("checkmate_default")``, which is what the
  connection adds: the last two rows should differ by little more than the row before them.

Targets (issue 13): the import under 0.3 s above bare; ``checkmate list`` with explicit URLs under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKMATE = [sys.executable, "-m", "airflow_checkmate.cli"]
LOOKUP = "from airflow.sdk import BaseHook; BaseHook.get_connection('checkmate_default')"


def cases(root: Path) -> dict[str, list[str]]:
    urls = ["--base-url", str(root / "state"), "--database-url", f"sqlite:///{root / 'registry.db'}"]
    return {
        "bare interpreter": [sys.executable, "-c", "pass"],
        "import airflow_checkmate.checkmate": [sys.executable, "-c", "import airflow_checkmate.checkmate"],
        "import the engine's classes": [
            sys.executable,
            "-c",
            "from airflow_checkmate.checkmate import CheckMateEngine, BaseStage, TaskIO",
        ],
        "checkmate list (explicit URLs)": [*CHECKMATE, *urls, "list"],
        "checkmate list (Airflow connection)": [*CHECKMATE, "list"],
        "connection lookup alone": [sys.executable, "-c", LOOKUP],
    }


def environment(root: Path) -> dict[str, str]:
    """No project settings from the caller; the connection defined in the environment, as a user may."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "CHECKMATE_", "AIRFLOW__"))}
    extra = {"base_url": str(root / "state"), "database_url": f"sqlite:///{root / 'registry.db'}"}
    env["AIRFLOW_CONN_CHECKMATE_DEFAULT"] = json.dumps({"conn_type": "checkmate", "extra": extra})
    env["AIRFLOW_HOME"] = str(root / "airflow")
    return env


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of one run: CPU time shows less of a busy machine's load."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (the median is reported)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = environment(root)
        runs = cases(root)
        for argv_ in runs.values():  # warm the page cache and create the registry once
            timed(argv_, env)
        wall: dict[str, list[float]] = {name: [] for name in runs}
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, argv_ in runs.items():
                seconds, cpu_seconds = timed(argv_, env)
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)
    median = {name: statistics.median(values) for name, values in wall.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    bare, bare_cpu = median["bare interpreter"], median_cpu["bare interpreter"]
    load = os.getloadavg()[0]
    python = sys.version.split()[0]
    print(f"Start-up, median of {args.rounds} rounds (new process each; Python {python}; load average {load:.1f})\n")
    print(f"{'case':<38} {'wall s':>8} {'above bare':>11} {'cpu s':>8} {'above bare':>11}")
    for name, value in median.items():
        used = median_cpu[name]
        print(f"{name:<38} {value:>8.3f} {value - bare:>11.3f} {used:>8.3f} {used - bare_cpu:>11.3f}")
    conn_cost = median_cpu["checkmate list (Airflow connection)"] - median_cpu["checkmate list (explicit URLs)"]
    print(
        f"\nCPU: the connection adds {conn_cost:.3f} s to `checkmate list`; "
        f"the lookup alone costs {median_cpu['connection lookup alone'] - bare_cpu:.3f} s above bare"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
