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
