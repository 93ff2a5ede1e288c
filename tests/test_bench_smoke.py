"""The benchmark scripts run (a tiny smoke run each), so they cannot rot; their figures are not checked."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_env


@pytest.mark.slow
def test_backends_benchmark_prints_a_row_per_backend() -> None:
    """``python -m bench.backends`` on a few stages: file, SQLite and the local S3 server."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.backends", "--stages", "3", "--rounds", "1"],
        cwd=ROOT,
        env={**child_env(), "CHECKMATE_BENCH_POSTGRES_URL": ""},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("backend"))
    rows = [line.split()[0] for line in lines[header + 1 :] if line and not line.startswith("(")]
    assert rows == ["file", "sqlite", "s3"], proc.stdout


@pytest.mark.slow
def test_overhead_benchmark_prints_engine_floor_and_scaling() -> None:
    """``python -m bench.overhead`` on tiny tasks: a row per N and the scaling line."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.overhead", "--stages", "2", "4", "--rounds", "1"],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["2", "4"], proc.stdout
    assert all(row[-1].endswith("x") and float(row[-1][:-1]) > 0 for row in rows), proc.stdout
    assert "scaling: per-stage cost at N=4" in proc.stdout
