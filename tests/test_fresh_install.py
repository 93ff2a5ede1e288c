"""``make install-check``: the wheel installs in fresh virtualenvs without a constraints file, in time.

Runs only when asked (CHECKMATE_INSTALL_CHECK=1, as ``make install-check`` sets it): it needs the
package index and several minutes, which ``make test`` does not spend. Each case (``[s3]``,
``[postgres]``, the plain package, the plain package on the lowest declared Airflow) must install
within 3 minutes and import every provider module; the table printed says how long each took.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from support.processes import ROOT

pytestmark = pytest.mark.skipif(
    os.environ.get("CHECKMATE_INSTALL_CHECK") != "1",
    reason="needs the package index and minutes: run `make install-check` (sets CHECKMATE_INSTALL_CHECK=1)",
)


def index_reachable() -> bool:
    """Whether pip's index answers (the check resolves real releases, so a local wheel folder is not enough)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "pip"], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0


@pytest.mark.timeout(3600)
def test_every_extra_installs_fresh_within_three_minutes() -> None:
    if not index_reachable():
        pytest.skip(f"no package index reachable from {socket.gethostname()}: pip index versions pip failed")
    proc = subprocess.run(
        [sys.executable, "-m", "support.fresh_install"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-6000:]
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.endswith(" ok")}
    assert set(rows) == {"s3", "postgres", "plain", "airflow-floor"}, proc.stdout
