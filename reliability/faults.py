"""Campaign 4: storage faults under a running task — full disk, I/O errors, torn and slow writes, dropped database.

Why: a durable-execution engine is only as good as what it does when its storage fails. For every
fault and every write position (bind, each stage's RUNNING and COMPLETE checkpoint, unbind) a task of a
few stages runs once with the fault, then once more with it gone, and the campaign checks:

- the run either completes (slow disk, a dropped connection the pool recovers from) or raises
  ``TaskIOException`` (the contract's "storage failed to store or remove an object") naming the object
  and the OS/database error, chained from it; a raw ``OSError`` or SQLAlchemy error is a violation;
- a message that promises "its previous version is unchanged" is true;
- everything stored before the fault is still there and parses, no temp file is left, and every stage
  that was COMPLETE at the fault is byte-identical after the resume and never ran again;
- the resume completes with the right result.

File faults are injected at the OS boundary (see :mod:`reliability.fault_inject`), a torn tail and a
flipped byte are put in a task's journal (see :mod:`reliability.fault_journal`), plus a real full
filesystem (a 256 KiB tmpfs) when this machine lets us mount one; PostgreSQL faults are real dropped
backends (see :mod:`reliability.fault_pg`). ``python -m reliability.faults --help`` for options.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from airflow_checkmate.checkmate import TaskIOException, TaskIOFile
from reliability import fault_stages
from reliability.fault_inject import KINDS, Fault, injected, snapshot, stored, temp_files
from reliability.fault_stages import RunOutcome, complete_stages, make_stages, resume, run_task
from reliability.report import Report

COLUMNS = ("backend", "fault", "position", "fired", "outcome", "resumed ok", "stored objects intact")
LEASE_SECONDS = 2.0  # short, so a lease a failed unbind could not remove expires within the resume's wait
WRITE_KINDS = ("enospc-write", "half-write", "eio-fsync", "eio-replace", "eio-dirsync")
#: Faults of a rename and the folder fsync after it: only the lease is still replaced by a rename (a task's
#: objects are appended to its journal), so these hit the lease's writes.
RENAME_KINDS = ("eio-replace", "eio-dirsync")
UNCHANGED_CLAIM = "previous version is unchanged"


@dataclass(frozen=True)
class Position:
    """Where a fault hits: the ``occurrence``-th write of object ``target`` (a basename)."""

    label: str
    target: str
    occurrence: int = 1


def positions_for(kind: str, stages: int) -> list[Position]:
    """The write positions a kind of fault applies to."""
    return [LEASE_AT_BIND] if kind in RENAME_KINDS else positions(stages)


def positions(stages: int) -> list[Position]:
    """Every write of a task run: the lease and task record at bind, each stage's two checkpoints."""
    found = [Position("bind: task.lock", "task.lock"), Position("bind: task.json", "task.json")]
    for k in range(1, stages + 1):
        found.append(Position(f"s{k} RUNNING", f"s{k}.stage.json", 1))
        found.append(Position(f"s{k} COMPLETE", f"s{k}.stage.json", 2))
    return found


UNBIND = Position("unbind: lock release", "task.lock")
LEASE_AT_BIND = Position("bind: task.lock", "task.lock")
EVERYWHERE = Position("every fsync", "", 0)


def gist(exc: BaseException | None, *prefixes: str, width: int = 150) -> str:
    """``ClassName: message`` on one line, without the store's path or database URL, for the table."""
    if exc is None:
        return "completed"
    text = " ".join(str(exc).split())
    for prefix in prefixes:
        text = text.replace(prefix, "")
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= width else text[: width - 3] + "..."


def evaluate(
    report: Report,
    label: str,
    task_id: str,
    fault_at: dict[str, bytes] | None,
    after_run: dict[str, bytes],
    after_resume: dict[str, bytes],
    outcome: RunOutcome,
    resume_error: str,
    expect: str,
    stages: int,
) -> tuple[str, str]:
    """Check one faulty run and its resume; returns the 'resumed ok' and 'stored objects intact' cells.

    ``expect``: ``"complete"``, or the text the error must contain (the OS or database error).
    """
    error = outcome.error
    if expect == "complete":
        report.check(error is None, f"{label}: expected to complete, raised {gist(error)}")
    elif error is None:
        report.violation(f"{label}: the fault fired but the run completed as if nothing happened")
    elif not isinstance(error, TaskIOException) or expect not in str(error):
        report.violation(f"{label}: unclear error from {outcome.where}: {gist(error, width=300)}")
    elif error.__cause__ is None:
        report.violation(f"{label}: {type(error).__name__} is not chained from the storage error")
    lost: list[str] = []
    before = {n: b for n, b in (fault_at or {}).items() if not n.endswith("task.lock")}
    claims_unchanged = error is not None and UNCHANGED_CLAIM in str(error)
    for name in sorted(set(before) | {n for n in stored(after_run) if not n.endswith("task.lock")}):
        raw, now = before.get(name), after_run.get(name)
        if raw is not None and now is None:
            lost.append(f"{name} lost")
        elif raw is not None and now != raw and complete_stages({name: raw}, task_id):
            lost.append(f"COMPLETE {name} changed")
        if claims_unchanged and name in str(error) and now != raw:
            report.violation(f"{label}: the error says {name}'s {UNCHANGED_CLAIM}, but it was replaced")
    for name, raw in stored(after_run).items():
        try:
            json.loads(raw)
        except ValueError:
            lost.append(f"{name} corrupt")
    lost.extend(f"temp file {n} left" for n in temp_files(after_run))
    done = complete_stages(before, task_id)
    for name, raw in done.items():
        if after_resume.get(name) != raw:
            lost.append(f"COMPLETE {name} not identical after resume")
        runs = fault_stages.STARTS[f"{task_id}/{name.rsplit('/', 1)[-1].split('.')[0]}"]
        if runs != 1:
            lost.append(f"COMPLETE {name} ran {runs} times")
    for message in lost:
        report.violation(f"{label}: {message}")
    report.check(not resume_error, f"{label}: resume failed: {resume_error}")
    resumed = "yes" if not resume_error else "NO"
    intact = f"yes ({len(before)} objects, {len(done)} COMPLETE)" if not lost else "NO: " + "; ".join(lost)[:80]
    return resumed, intact


def file_case(report: Report, workdir: Path, kind: str, position: Position, stages: int, seed: int = 0) -> int:
    """One fault at one position on TaskIOFile; returns how often the fault fired."""
    slug = f"{kind}-{position.label}".replace(" ", "-").replace(":", "").replace(".", "-")
    base = Path(tempfile.mkdtemp(prefix="faults-", dir=workdir)) / "store"
    io = TaskIOFile(base, lease_seconds=LEASE_SECONDS)
    fault = Fault(kind, position.target, position.occurrence, seed)
    with injected(fault, base):
        outcome = run_task(io, slug, make_stages(slug, stages))
    after_run = snapshot(base)
    resume_error = resume(io, slug, stages, lock_timeout=LEASE_SECONDS * 3)
    code = KINDS[kind][1]
    expect = "complete" if kind == "slow-fsync" else os.strerror(code)
    if fault.snapshot is None and kind == "slow-fsync":
        fault.snapshot = {}
    label = f"file {kind} at {position.label}"
    report.check(fault.fired > 0, f"{label}: the fault never fired (the case proved nothing)")
    resumed, intact = evaluate(
        report, label, slug, fault.snapshot, after_run, snapshot(base), outcome, resume_error, expect, stages
    )
    cell = gist(outcome.error, f"{base}/{slug}/")
    report.row(
        "file",
        kind,
        position.label,
        fault.fired,
        f"{outcome.where}: {cell}" if outcome.where else cell,
        resumed,
        intact,
    )
    return fault.fired


def file_cases(report: Report, workdir: Path, stages: int, kinds: list[str], seed: int) -> int:
    """Every kind at every position it applies to; returns the number of faults fired."""
    fired = 0
    for kind in kinds:
        if kind in WRITE_KINDS:
            cases = positions_for(kind, stages)
        elif kind == "eio-unlink":
            cases = [UNBIND]
        else:
            cases = [EVERYWHERE]
        for position in cases:
            fired += file_case(report, workdir, kind, position, stages, seed)
    return fired


def main(argv: list[str] | None = None) -> int:
    from reliability import fault_journal, fault_pg, fault_tmpfs
    from support import pg

    parser = argparse.ArgumentParser(prog="python -m reliability.faults", description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=3, help="stages per task (default 3)")
    parser.add_argument("--kinds", nargs="*", default=[k for k in KINDS if k != "real-enospc"], choices=list(KINDS))
    parser.add_argument("--seed", type=int, default=0, help="seed of the slow disk's delays")
    parser.add_argument("--postgres-url", default=None, help="PostgreSQL server (a fresh database is made on it)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["file", "tmpfs", "postgresql"])
    args = parser.parse_args(argv)
    logging.getLogger("airflow_checkmate").setLevel(logging.ERROR)  # expected warnings (takeovers, recoveries)
    report = Report("Fault injection in TaskIO: each fault at each write position, then a resume", COLUMNS)
    with tempfile.TemporaryDirectory(prefix="checkmate-faults-") as tmp:
        if "file" not in args.skip:
            file_cases(report, Path(tmp), args.stages, args.kinds, args.seed)
            fault_journal.journal_cases(report, Path(tmp), args.stages)
        if "tmpfs" not in args.skip:
            fault_tmpfs.tmpfs_cases(report, Path(tmp), args.stages)
    server = pg.server_url(args.postgres_url)
    if "postgresql" in args.skip:
        pass
    elif server is None:
        report.row("postgresql", "(all)", "-", 0, f"skipped: no server ({', '.join(pg.ENV_VARS)} unset)", "-", "-")
    else:
        with pg.fresh_database(server, prefix="checkmate_faults") as url:
            fault_pg.pg_cases(report, url, args.stages)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
