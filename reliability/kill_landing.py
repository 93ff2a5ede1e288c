"""Where in the file journal's work a SIGKILL landed: sampled from ``/proc`` just before the signal, and
read afterwards from what it left behind (a torn tail, a compaction's or a new journal's temp file).

The sample is the system call each thread of the process is blocked in (``/proc/PID/task/*/syscall``) and
the file its descriptor argument names: a write to the journal is an append, an ``fdatasync`` of it is the
window between a record written and made durable, anything on a ``.~journal.compact.*.tmp`` (or a rename
while one exists) is a compaction, on a ``.~journal.new.*.tmp`` (or a link) the creation of a journal. A
thread busy on a CPU reads as ``running`` and samples as nothing; the evidence left in the folder does not
depend on that.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from airflow_checkmate.checkmate.io.journal import JOURNAL_NAME, TMP_SUFFIX
from airflow_checkmate.checkmate.io.journal_format import HEADER_SIZE, Replay, parse_header, pread_all, scan

# x86_64 system call numbers (the sample is skipped on other machines).
_WRITES = {1, 18, 20}  # write, pwrite64, writev
_SYNCS = {74, 75}  # fsync, fdatasync
_RENAMES = {82, 264, 316}  # rename, renameat, renameat2
_LINKS = {86, 265}  # link, linkat
_X86_64 = platform.machine() == "x86_64"


def in_flight(pid: int, folder: Path) -> str:
    """What journal work ``pid`` is in right now in the task ``folder``: ``append``, ``fdatasync``,
    ``compaction``, ``creation`` (of a new journal) or ``""``."""
    if not _X86_64:
        return ""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return ""
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                fields = f.read().split()
            nr = int(fields[0])
            if nr < 0:
                continue
            if nr in _RENAMES:  # a compaction's, or the lease's
                return "compaction" if "compaction temp" in left_behind(folder) else ""
            if nr in _LINKS:  # a new journal put in place
                return "creation" if "creation temp" in left_behind(folder) else ""
            name = os.path.basename(os.readlink(f"/proc/{pid}/fd/{int(fields[1], 16)}"))
        except (OSError, ValueError, IndexError):  # "running", a thread gone, a descriptor closed meanwhile
            continue
        if name.startswith(JOURNAL_NAME + ".compact.") and name.endswith(TMP_SUFFIX):
            return "compaction"
        if name.startswith(JOURNAL_NAME + ".new.") and name.endswith(TMP_SUFFIX):
            return "creation"
        if name == JOURNAL_NAME and nr in _WRITES:
            return "append"
        if name == JOURNAL_NAME and nr in _SYNCS:
            return "fdatasync"
    return ""


def left_behind(folder: Path) -> list[str]:
    """Evidence in a task folder of an interrupted journal operation: ``torn tail``, ``compaction temp``,
    ``creation temp`` (of a new journal)."""
    found = []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    if any(n.startswith(JOURNAL_NAME + ".compact.") and n.endswith(TMP_SUFFIX) for n in names):
        found.append("compaction temp")
    if any(n.startswith(JOURNAL_NAME + ".new.") and n.endswith(TMP_SUFFIX) for n in names):
        found.append("creation temp")
    if JOURNAL_NAME in names and torn_bytes(folder / JOURNAL_NAME):
        found.append("torn tail")
    return found


def torn_bytes(path: Path) -> int:
    """How many bytes past the journal's last complete record (0: it ends on a record)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        parse_header(pread_all(fd, HEADER_SIZE, 0), str(path))
        replay = Replay()
        size = os.fstat(fd).st_size
        scan(replay, fd, size, str(path))
        return size - replay.end
    finally:
        os.close(fd)
