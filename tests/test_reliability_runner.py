"""``python -m reliability`` (what ``make reliability`` runs): campaigns by name, a summary, the exit code."""

import subprocess

from support.processes import run_python


def _run(*names: str) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "reliability", *names, timeout=300)


def test_runs_the_named_campaign_and_prints_its_table_and_a_summary() -> None:
    proc = _run("hostile")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "=== reliability.hostile ===" in proc.stdout
    assert "violations: 0" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].split()[:2] == ["hostile", "ok"]


def test_an_unknown_campaign_is_a_usage_error() -> None:
    proc = _run("hostile", "nonsense")
    assert proc.returncode == 2
    assert "unknown campaign(s) ['nonsense']" in proc.stderr
    assert "=== reliability" not in proc.stdout  # nothing ran


def test_help_lists_the_campaigns_and_runs_nothing() -> None:
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    assert (
        "usage: python -m reliability" in proc.stdout
        and "kill, kill_journal, race, zombie, faults, hostile" in proc.stdout
    )
    assert "=== reliability" not in proc.stdout
