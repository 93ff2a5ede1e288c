"""Storage faults under a running task: the seeded subset of ``reliability.faults`` plus regression tests.

Each campaign case runs a task with a fault injected at the OS boundary (or a real full tmpfs, or the
PostgreSQL server dropping the task's connections), then resumes it with the fault gone; the campaign
records a violation for an unclear error, a lost or changed stored object, a COMPLETE stage that ran
again, or a failed resume. Every case also asserts its fault really fired, so none can pass vacuously.
"""

import errno
import os
from pathlib import Path

import pytest

from airflow_checkmate.checkmate import CheckMateEngine, StageStatus, TaskIOException, TaskIOFile
from reliability import fault_journal, fault_pg, fault_tmpfs, faults
from reliability.fault_inject import Fault, injected
from reliability.fault_stages import expected_result, make_stages, resume
from reliability.report import Report
from support.stored_objects import get_object

FEW_POSITIONS = [faults.Position("bind: task.json", "task.json"), *faults.positions(2)[2:]]


def _report() -> Report:
    return Report("faults (test subset)", faults.COLUMNS)


def _assert_clean(report: Report, rows: int) -> None:
    assert report.violations == [], report.render()
    assert len(report.rows) == rows, report.render()


@pytest.mark.parametrize("kind", faults.WRITE_KINDS)
def test_write_fault_at_bind_and_each_checkpoint_errors_clearly_and_resumes(tmp_path: Path, kind: str) -> None:
    report = _report()
    cases = [faults.LEASE_AT_BIND] if kind in faults.RENAME_KINDS else FEW_POSITIONS
    for position in cases:
        assert faults.file_case(report, tmp_path, kind, position, stages=2) == 1, position
    _assert_clean(report, len(cases))
    assert all("TaskIOException" in str(row[4]) for row in report.rows), report.render()


def test_lease_release_failing_at_unbind_errors_clearly_and_resumes(tmp_path: Path) -> None:
    report = _report()
    assert faults.file_case(report, tmp_path, "eio-unlink", faults.UNBIND, stages=2) == 1
    _assert_clean(report, 1)


def test_torn_tail_is_ignored_and_flipped_byte_refused_by_name_in_the_journal(tmp_path: Path) -> None:
    report = _report()
    assert fault_journal.journal_cases(report, tmp_path, stages=2) == 2
    _assert_clean(report, 2)


def test_slow_disk_completes(tmp_path: Path) -> None:
    report = _report()
    assert faults.file_case(report, tmp_path, "slow-fsync", faults.EVERYWHERE, stages=2, seed=7) > 0
    _assert_clean(report, 1)
    assert report.rows[0][4] == "completed"


def test_real_full_filesystem(tmp_path: Path) -> None:
    report = _report()
    fired = fault_tmpfs.tmpfs_cases(report, tmp_path, stages=2)
    if fired == 0 and "skipped" in str(report.rows[0][4]):
        pytest.skip(str(report.rows[0][4]))
    assert fired == 2
    _assert_clean(report, 2)


def test_postgres_connections_dropped_mid_task(postgres_url: str) -> None:
    report = _report()
    fired = fault_pg.pg_cases(report, postgres_url, stages=2, positions=["mid-stage s2", "before unbind"])
    assert fired >= 4  # every case terminated at least one backend
    _assert_clean(report, 4)
    outcomes = [str(row[4]) for row in report.rows]
    assert outcomes[:2] == ["completed", "completed"]  # the pool reconnects
    assert all("TaskIOException" in o and "OperationalError" in o for o in outcomes[2:])


# ------------------------------------------------------------------------------- regressions


def _engine(io: TaskIOFile, task_id: str) -> CheckMateEngine:
    return CheckMateEngine(io, task_id, make_stages(task_id, 2))


def test_regression_lease_removal_io_error_is_a_taskioexception(tmp_path: Path) -> None:
    """Was a bare OSError out of unbind: lease_swap let any error but FileNotFoundError through."""
    io = TaskIOFile(tmp_path, lease_seconds=faults.LEASE_SECONDS)
    engine = _engine(io, "unlink")
    with injected(Fault("eio-unlink", "task.lock"), tmp_path) as fault:
        engine.bind()
        engine.execute()
        with pytest.raises(TaskIOException, match=r"cannot change lease .*task\.lock.*Input/output error") as exc:
            engine.unbind()
    assert fault.fired == 1
    assert isinstance(exc.value.__cause__, OSError)
    assert exc.value.__cause__.errno == errno.EIO
    assert not engine.bound
    assert (tmp_path / "unlink" / "task.lock").exists()  # "the lease is unchanged" is true
    assert resume(io, "unlink", 2, lock_timeout=faults.LEASE_SECONDS * 3) == ""


def test_regression_sync_failure_does_not_claim_the_old_version_is_kept(tmp_path: Path) -> None:
    """Was "its previous version is unchanged" although the new version was already in place: now the
    journal's fdatasync after the append (a plain file's folder fsync after the rename, before)."""
    io = TaskIOFile(tmp_path)
    with injected(Fault("eio-fsync", "s2.stage.json", 2), tmp_path) as fault, _engine(io, "dirsync") as engine:
        with pytest.raises(TaskIOException, match="but syncing it failed") as exc:
            engine.execute()
        assert "unchanged" not in str(exc.value)
        assert engine.check_sync()  # memory holds what storage holds: the COMPLETE s2
        assert engine.stages[1].state.status is StageStatus.COMPLETE
    assert fault.fired == 1
    assert b'"COMPLETE"' in (get_object(tmp_path, "dirsync/s2.stage.json") or b"")
    with _engine(io, "dirsync") as again:
        assert again.status is StageStatus.COMPLETE
        assert again.task_result == expected_result(2)


def test_regression_file_where_the_task_folder_should_be_is_a_taskioexception(tmp_path: Path) -> None:
    """Was a bare FileExistsError out of bind: lease_create did not wrap errors making the folder."""
    io = TaskIOFile(tmp_path)
    (tmp_path / "blocked").write_text("not a folder")
    engine = _engine(io, "blocked")
    with pytest.raises(TaskIOException, match=r"cannot create lease .*blocked/task\.lock.*File exists"):
        engine.bind()
    assert not engine.bound
    assert (tmp_path / "blocked").read_text() == "not a folder"
    os.unlink(tmp_path / "blocked")
    assert resume(io, "blocked", 2, lock_timeout=1.0) == ""
