"""The benchmark scripts run (a tiny smoke run each), so they cannot rot; their figures are not checked."""

import subprocess

import pytest

from support.processes import run_python


def run_bench(*args: str, hide_dbos: bool = False, postgres: str = "") -> subprocess.CompletedProcess[str]:
    """Run a bench module in a child Python; ``hide_dbos`` makes ``import dbos`` fail as if not installed.

    ``postgres``: the server for the benchmark's PostgreSQL parts (none by default).
    """
    if hide_dbos:
        module, *rest = args
        code = f"import sys; sys.modules['dbos'] = None; from {module} import main; sys.exit(main({rest!r}))"
        command = ["-c", code]
    else:
        command = ["-m", *args]
    proc = run_python(*command, timeout=300, env={"CHECKMATE_BENCH_POSTGRES_URL": postgres})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def table_rows(stdout: str) -> list[list[str]]:
    """The lines of a printed table whose first field is a number."""
    rows = [line.split() for line in stdout.splitlines() if line.strip()]
    return [row for row in rows if row[0].replace(".", "", 1).isdigit()]


@pytest.mark.slow
def test_backends_benchmark_prints_a_row_per_backend() -> None:
    """``python -m bench.backends`` on a few stages: file, SQLite and the local S3 server."""
    proc = run_bench("bench.backends", "--stages", "3", "--rounds", "1")
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("backend"))
    rows = [line.split()[0] for line in lines[header + 1 :] if line and not line.startswith("(")]
    assert rows == ["file", "sqlite", "s3"], proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("hide_dbos", [False, True], ids=["as-installed", "without-dbos"])
def test_overhead_benchmark_prints_engine_floor_dbos_and_targets(hide_dbos: bool) -> None:
    """``python -m bench.overhead`` on tiny tasks: a row per N, the scaling line and a verdict per target.

    Without DBOS (CI's ``make test`` does not install the bench extra) its column reads n/a and the
    output says how to install it; with DBOS hidden the run must still succeed.
    """
    proc = run_bench("bench.overhead", "--stages", "2", "4", "--rounds", "1", hide_dbos=hide_dbos)
    rows = table_rows(proc.stdout)
    assert [row[0] for row in rows] == ["2", "4"], proc.stdout
    engine_floor = [row[4] for row in rows]
    assert all(cell.endswith("x") and float(cell[:-1]) > 0 for cell in engine_floor), proc.stdout
    assert "scaling: per-stage cost at N=4 is" in proc.stdout
    verdicts = [line for line in proc.stdout.splitlines() if line.startswith("  ") and "<=" in line]
    assert len(verdicts) == 3, proc.stdout
    assert all(line.rstrip().endswith(("target met", "target missed", "n/a")) for line in verdicts), proc.stdout
    dbos_missing = "pip install -e '.[bench]'" in proc.stdout
    if hide_dbos:
        assert dbos_missing and all(row[3] == "n/a" and row[5] == "n/a" for row in rows), proc.stdout
    else:
        assert dbos_missing == all(row[3] == "n/a" for row in rows), proc.stdout


@pytest.mark.slow
def test_resume_benchmark_prints_fresh_and_each_k() -> None:
    """``python -m bench.resume`` on a task of 6 stages: the fresh row and one row per k."""
    proc = run_bench("bench.resume", "--stages", "6", "--complete", "0", "3", "5", "--rounds", "1")
    names = [line.split()[0] for line in proc.stdout.splitlines() if line.strip().startswith(("fresh", "k="))]
    assert names == ["fresh", "k=0", "k=3", "k=5"], proc.stdout


@pytest.mark.slow
def test_large_state_benchmark_prints_a_row_per_size_and_kind() -> None:
    """``python -m bench.large_state`` with 0.1 MB states: write, resume and peak RSS per row, a verdict each."""
    proc = run_bench("bench.large_state", "--sizes-mb", "0.1", "--rounds", "1")
    rows = table_rows(proc.stdout)
    assert [(row[0], row[1]) for row in rows] == [("0.1", "str"), ("0.1", "list")], proc.stdout
    assert all(float(row[2]) > 0 and float(row[4]) > 0 for row in rows), proc.stdout
    assert all(row[-1] in ("met", "missed") for row in rows), proc.stdout


@pytest.mark.slow
def test_profile_prints_the_io_census_and_a_profile() -> None:
    """``python -m bench.profile`` on 3 stages: the census rows (bind, per stage, unbind) and one profile."""
    proc = run_bench("bench.profile", "--stages", "3", "--stage-budget", "3", "--top", "3")
    census = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith(("bind", "per stage", "unbind"))]
    assert census == ["bind", "per", "unbind"], proc.stdout
    assert "Profile: N=3" in proc.stdout


def test_startup_benchmark_prints_every_case() -> None:
    """``python -m bench.startup`` with one round: a row per case and the connection's added cost."""
    proc = run_bench("bench.startup", "--rounds", "1")
    for case in ("bare interpreter", "import airflow_checkmate.checkmate", "checkmate list (explicit URLs)"):
        assert case in proc.stdout, proc.stdout
    assert "CPU: the connection adds" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_targets_benchmark_prints_the_machine_and_a_verdict_per_target(postgres_url: str) -> None:
    """``python -m bench.targets`` on tiny sizes, files and PostgreSQL: the machine line, every figure, verdicts."""
    sizes = ["--stages", "3", "--rounds", "1", "--resume-stages", "3", "--list-tasks", "300"]
    proc = run_bench("bench.targets", *sizes, postgres=postgres_url)
    assert proc.stdout.startswith("machine: "), proc.stdout
    assert "PostgreSQL" in proc.stdout.splitlines()[0], proc.stdout
    lines = [line.strip() for line in proc.stdout.splitlines() if line.startswith("  ")]
    targets = [line for line in lines if "target <=" in line]
    labels = ("files: engine / ", "PostgreSQL: engine / ", "CPU: engine per stage", "checkmate list ")
    assert [sum(line.startswith(label) for line in targets) for label in labels] == [2, 2, 1, 4], proc.stdout
    assert all(line.endswith(("PASS", "FAIL", "n/a")) for line in targets), proc.stdout
    resumes = [line for line in lines if line.startswith("resume, 3 COMPLETE stages")]
    if any("(no git" in line for line in resumes):  # a clone without main's commit: this tree alone
        assert len(resumes) == 2, proc.stdout
    else:  # files and PostgreSQL: this tree's ms, main's ms, the ratio with its verdict
        assert len(resumes) == 6, proc.stdout
        assert sum(": now / main" in line and "target <=" in line for line in resumes) == 2, proc.stdout


@pytest.mark.slow
def test_registry_list_benchmark_prints_a_row_per_filter(postgres_url: str) -> None:
    """``python -m bench.registry_list`` over 300 tasks: each filter lists rows (the DAG ones included)."""
    proc = run_bench("bench.registry_list", "--tasks", "300", "--runs", "1", postgres=postgres_url)
    rows = [line.split("(")[-1] for line in proc.stdout.splitlines() if line.endswith(" rows)")]
    assert len(rows) == 4 and all(not row.startswith("0 ") for row in rows), proc.stdout
