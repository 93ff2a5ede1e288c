"""Damage in a task's file journal, for the fault campaign: a torn tail and a flipped byte.

- *torn tail*: after a task ran, the first half of one more record is appended (what a writer killed
  mid-append leaves). The next bind must ignore it: the task binds as stored, every COMPLETE stage is
  byte-identical and runs never again, and the next append cuts the torn bytes off.
- *flipped byte*: one byte inside a complete record (a stored stage's bytes) is flipped, as bit rot
  would. Binding must refuse with PersistenceDataNotFoundException naming the object read, the journal and
  the byte offset, and the way out; the file is left byte-identical. With the byte restored, the task
  resumes with nothing it had acknowledged lost.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from airflow_checkmate.checkmate import PersistenceDataNotFoundException, TaskIOFile
from airflow_checkmate.checkmate.io.journal import JOURNAL_NAME
from airflow_checkmate.checkmate.io.journal_format import HEADER_SIZE, Replay, encode_record, pread_all, scan
from reliability import fault_stages
from reliability.fault_inject import snapshot
from reliability.fault_stages import complete_stages, make_stages, resume, run_task
from reliability.report import Report

LEASE_SECONDS = 2.0


def _ran(report: Report, workdir: Path, slug: str, stages: int) -> tuple[TaskIOFile, Path]:
    base = Path(tempfile.mkdtemp(prefix="journal-faults-", dir=workdir)) / "store"
    io = TaskIOFile(base, lease_seconds=LEASE_SECONDS)
    outcome = run_task(io, slug, make_stages(slug, stages))
    report.check(outcome.completed, f"file {slug}: the run before the damage failed: {outcome.error}")
    return io, base / slug / JOURNAL_NAME


def _located(journal: Path, name: str) -> tuple[int, int]:
    fd = os.open(journal, os.O_RDONLY)
    try:
        replay = Replay()
        scan(replay, fd, os.fstat(fd).st_size, str(journal))
        return replay.objects[name]
    finally:
        os.close(fd)


def _unchanged(report: Report, label: str, slug: str, before: dict[str, bytes], after: dict[str, bytes]) -> str:
    lost = [n for n, raw in complete_stages(before, slug).items() if after.get(n) != raw]
    lost += [f"{n} ran again" for n in complete_stages(before, slug) if fault_stages.STARTS[_key(slug, n)] != 1]
    for problem in lost:
        report.violation(f"{label}: COMPLETE {problem}")
    return f"yes ({len(complete_stages(before, slug))} COMPLETE)" if not lost else "NO: " + "; ".join(lost)[:80]


def _key(slug: str, name: str) -> str:
    return f"{slug}/{name.rsplit('/', 1)[-1].split('.')[0]}"


def torn_tail(report: Report, workdir: Path, stages: int) -> int:
    slug, label = "torn-tail", "file torn tail in the journal"
    io, journal = _ran(report, workdir, slug, stages)
    before = snapshot(journal.parent.parent)
    pieces, _ = encode_record([("s1.stage.json", b'{"torn": true}'), ("task.json", b"{}")])
    record = b"".join(pieces)
    with open(journal, "ab") as f:
        f.write(record[: len(record) // 2])
    error = resume(io, slug, stages, lock_timeout=LEASE_SECONDS * 3)
    report.check(not error, f"{label}: the bind after the torn append failed: {error}")
    intact = _unchanged(report, label, slug, before, snapshot(journal.parent.parent))
    TaskIOFile(journal.parent.parent).write(f"{slug}/after.json", b"{}")
    fd = os.open(journal, os.O_RDONLY)
    try:
        replay = Replay()
        size = os.fstat(fd).st_size
        scan(replay, fd, size, str(journal))
    finally:
        os.close(fd)
    report.check(replay.end == size, f"{label}: the next append left the torn bytes in place")
    report.row("file", "torn-tail", "after the last record", 1, "ignored at bind", "yes" if not error else "NO", intact)
    return 1


def flipped_byte(report: Report, workdir: Path, stages: int) -> int:
    slug, label = "flipped-byte", "file flipped byte in the journal"
    io, journal = _ran(report, workdir, slug, stages)
    before = snapshot(journal.parent.parent)
    offset, _ = _located(journal, "s1.stage.json")
    fd = os.open(journal, os.O_RDWR)
    try:
        original = pread_all(fd, 1, offset + 3)
        os.pwrite(fd, bytes([original[0] ^ 0x20]), offset + 3)
    finally:
        os.close(fd)
    damaged = journal.read_bytes()
    outcome = run_task(TaskIOFile(journal.parent.parent, lease_seconds=LEASE_SECONDS), slug, make_stages(slug, stages))
    error = outcome.error
    message = str(error)
    clear = (
        isinstance(error, PersistenceDataNotFoundException)
        and str(journal) in message
        and "byte offset" in message
        and "checkmate reset" in message
        and "s1.stage.json" in message  # the damaged object
    )
    report.check(clear, f"{label}: unclear error from {outcome.where}: {type(error).__name__}: {message[:300]}")
    report.check(journal.read_bytes() == damaged, f"{label}: the damaged journal was changed")
    fd = os.open(journal, os.O_RDWR)
    try:
        os.pwrite(fd, original, offset + 3)
    finally:
        os.close(fd)
    resumed = resume(io, slug, stages, lock_timeout=LEASE_SECONDS * 3)
    report.check(not resumed, f"{label}: the resume with the byte restored failed: {resumed}")
    intact = _unchanged(report, label, slug, before, snapshot(journal.parent.parent))
    cell = f"{outcome.where}: {type(error).__name__}: damaged at byte offset" if clear else f"{outcome.where}: {error}"
    report.row("file", "flipped-byte", f"s1's bytes (offset {offset - HEADER_SIZE}+)", 1, cell, "yes", intact)
    return 1


def journal_cases(report: Report, workdir: Path, stages: int) -> int:
    """Both cases; returns how many damages were made."""
    return torn_tail(report, workdir, stages) + flipped_byte(report, workdir, stages)
