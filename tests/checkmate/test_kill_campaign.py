"""A seeded subset of the kill campaign (``reliability.kill``): real processes SIGKILLed at random moments.

Each task (7 journal stages) is run by a child process killed with SIGKILL after a seeded random delay,
over and over, then let finish; half the tasks end every run with ``unbind(clean=True)``. Between a kill
and the next resume the campaign reads the storage around the engine and checks what
``reliability/kill.py`` documents: valid checkpoints, no COMPLETE stage run again or lost, the next bind
loading exactly the stored state (finishing an interrupted cleanup), dead holders' leases taken over at
once and recorded, the crash-free final result.

Here: file storage (150 kills), PostgreSQL (a fresh database, 60 kills) and S3 (the session's moto
server, 20 kills). Each test asserts the campaign found no violation, and that the kills really landed in
each phase (binding, mid-stage, mid-write, unbind, cleanup), so it cannot pass without having tried.
``python -m reliability.kill`` runs 1000 kills per backend.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from reliability import kill, kill_child
from reliability.kill_store import Store, file_store, postgres_store, s3_store
from reliability.report import Report
from support.pg import fresh_database
from support.processes import S3_CONN_ID

pytestmark = pytest.mark.slow

ALL_PHASES = ("bind", "mid-stage", "mid-write", "unbind", "cleanup")


@pytest.fixture(scope="module")
def forkserver():
    # The S3 stack is preloaded too (a second a process otherwise): one forkserver serves all three tests.
    return kill_child.forkserver(s3=True)


def _campaign(
    ctx, store: Store, tmp: Path, kills: int, kills_per_task: int, seed: int, must_rerun: bool = True
) -> kill.Stats:
    began = time.monotonic()
    stats, timing = kill.run_backend(ctx, store, kills, tmp, seed=seed, kills_per_task=kills_per_task)
    report = Report(f"{store.name} kill campaign (seeded subset)", ["", store.name])
    kill.rows(report, [(store.name, stats, timing, time.monotonic() - began)])
    kill.violations(report, store.name, stats)
    print("\n" + report.render())
    assert not report.violations, "\n".join(report.violations)
    assert stats.kills >= kills
    assert stats.reruns > 0 or not must_rerun, "no interrupted stage was run again: the kills interrupted nothing"
    return stats


def test_file_kill_campaign(forkserver, tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    stats = _campaign(forkserver, file_store(tmp_path / "store"), tmp_path, 150, kill.KILLS_PER_TASK, seed=0)
    missed = [p for p in ALL_PHASES if not stats.phases[p]]
    assert not missed, f"no kill landed in {missed}: {dict(stats.phases)}"
    assert stats.cleanups_finished > 0, "no cleanup was interrupted after it persisted 'cleaning'"
    # A task's checkpoints are appended to its journal (no temp file): kills aimed at its fdatasync land there.
    assert stats.journal["in fdatasync"] > 0, f"no kill landed in the journal's fdatasync: {dict(stats.journal)}"


def test_postgresql_kill_campaign(forkserver, tmp_path: Path, postgres_url: str) -> None:
    # A database of its own, as `reliability.kill` uses: the store reads once no other session of its
    # database is left (a killed child's last statement may still commit), and the session database
    # keeps the pooled connections of earlier tests open.
    with fresh_database(postgres_url, prefix="checkmate_kill") as url, postgres_store(url) as store:
        stats = _campaign(forkserver, store, tmp_path, 60, kill.KILLS_PER_TASK, seed=0)
    missed = [p for p in ALL_PHASES if not stats.phases[p]]
    assert not missed, f"no kill landed in {missed}: {dict(stats.phases)}"
    assert stats.cleanups_finished > 0, "no cleanup was interrupted after it persisted 'cleaning'"


def test_s3_kill_campaign(forkserver, tmp_path: Path, s3_url: str, s3_endpoint: str) -> None:
    # 20 kills are too few to promise every phase, or a stage interrupted and run again: a bind on moto takes
    # 1.5-3 s, so most kills land there (two full-suite runs found none mid-stage). The kills must land in
    # more than one phase and leave no violation; `reliability.kill` aims a thousand at every phase.
    stats = _campaign(
        forkserver, s3_store(s3_url, s3_endpoint, S3_CONN_ID), tmp_path, 20, 5, seed=200, must_rerun=False
    )
    assert stats.phases["bind"] + stats.phases["mid-stage"] > 0, dict(stats.phases)
    assert sum(1 for count in stats.phases.values() if count) >= 2, dict(stats.phases)
