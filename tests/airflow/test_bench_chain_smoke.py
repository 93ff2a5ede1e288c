"""``python -m bench.airflow_chain`` runs end to end on a tiny job (one stack start, N=3, one run of each DAG).

The figures are not checked, only that the table has both shapes in both scenarios and the ratios are positive;
the script itself fails when a run does not succeed or a stage does not complete exactly once.
"""

import re
import subprocess

import pytest

from support.processes import start_python

pytestmark = [pytest.mark.slow, pytest.mark.live_airflow, pytest.mark.timeout(420)]


def test_chain_benchmark_prints_both_shapes_and_ratios() -> None:
    proc = start_python("-m", "bench.airflow_chain", "--stages", "3", "--runs", "1")
    try:
        out, err = proc.communicate(timeout=330)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM, not SIGKILL: the script then stops the Airflow stack it started
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:] + err[-6000:]
    header = out.index("\nscenario ")
    rows = [line.split() for line in out[header:].splitlines()[2:6]]
    assert [row[:2] for row in rows] == [
        ["success", "chained"],
        ["success", "CheckMate"],
        ["fail_once", "chained"],
        ["fail_once", "CheckMate"],
    ], out
    assert all(float(row[-4]) > 0 and row[-1] == "0" for row in rows), out  # wall s > 0; no completed stage redone
    ratios = [float(r) for r in re.findall(r"^ratio \w+: chained/CheckMate wall time = ([0-9.]+)x$", out, re.M)]
    assert len(ratios) == 2 and all(r > 0 for r in ratios), out
