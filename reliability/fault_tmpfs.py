"""A real full disk for the fault campaign: TaskIOFile on a 256 KiB tmpfs that a filler file has filled.

Nothing is faked here: the kernel returns ENOSPC. The filler leaves either no room at all (the task
cannot even take its lease) or less room than one large stage checkpoint needs (the COMPLETE write of
a stage with a 160 KiB state fails); removing the filler is "the fault removed". Mounting needs root
and a sandbox that allows it; where it is refused the row says so and nothing else runs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from airflow_checkmate.checkmate import TaskIOFile
from reliability.fault_inject import Fault, injected, snapshot
from reliability.fault_stages import make_stages, resume, run_task
from reliability.faults import LEASE_SECONDS, evaluate, gist
from reliability.report import Report

SIZE = "256k"
BLOB = 160 * 1024
ROOM_FOR_SMALL_WRITES = 96 * 1024


@contextlib.contextmanager
def tmpfs(workdir: Path) -> Iterator[Path]:
    """A freshly mounted tmpfs of SIZE; unmounted on exit. Raises OSError with the reason if refused."""
    point = Path(tempfile.mkdtemp(prefix="tmpfs-", dir=workdir))
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        point.rmdir()
        raise OSError(f"cannot run mount: {exc}") from exc
    if done.returncode != 0:
        point.rmdir()
        raise OSError(f"mount -t tmpfs refused: {(done.stderr or done.stdout).strip() or done.returncode}")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            point.rmdir()


def fill(filler: Path, leave: int) -> None:
    """Take all free space but ``leave`` bytes (0: every last block, until the kernel says ENOSPC)."""
    stat = os.statvfs(filler.parent)
    want = max(0, stat.f_bavail * stat.f_frsize - leave) if leave else None
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as f:
        written = 0
        while want is None or written < want:
            try:
                written += f.write(chunk if want is None else chunk[: want - written])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break


def tmpfs_case(report: Report, point: Path, label: str, leave: int, blobs: dict[str, int], stages: int) -> int:
    slug = "tmpfs-" + label.split()[0].replace(":", "")
    base, filler = point / slug, point / f"filler-{slug}"
    io = TaskIOFile(base, lease_seconds=LEASE_SECONDS)
    fill(filler, leave)
    fault = Fault("real-enospc")
    with injected(fault, base):
        outcome = run_task(io, slug, make_stages(slug, stages, blobs=blobs))
    after_run = snapshot(base)
    filler.unlink()
    resume_error = resume(io, slug, stages, lock_timeout=LEASE_SECONDS * 3)
    name = f"tmpfs real ENOSPC at {label}"
    report.check(fault.fired > 0, f"{name}: the filesystem never reported ENOSPC (the case proved nothing)")
    resumed, intact = evaluate(
        report, name, slug, fault.snapshot, after_run, snapshot(base), outcome, resume_error,
        os.strerror(errno.ENOSPC), stages,
    )  # fmt: skip
    report.row(
        "file on tmpfs",
        "real-enospc",
        label,
        fault.fired,
        f"{outcome.where}: {gist(outcome.error, f'{base}/{slug}/')}",
        resumed,
        intact,
    )
    shutil.rmtree(base, ignore_errors=True)
    return fault.fired


def tmpfs_cases(report: Report, workdir: Path, stages: int) -> int:
    """The two real-ENOSPC rows, or one 'skipped' row with the reason the mount was refused."""
    with contextlib.ExitStack() as stack:
        try:
            point = stack.enter_context(tmpfs(workdir))
        except OSError as exc:
            report.row("file on tmpfs", "real-enospc", "-", 0, f"skipped: {exc}", "-", "-")
            return 0
        fired = tmpfs_case(report, point, "bind (filesystem full)", 0, {}, stages)
        if stages >= 2:
            fired += tmpfs_case(report, point, "s2 COMPLETE (160 KiB state)", ROOM_FOR_SMALL_WRITES,
                                {"s2": BLOB}, stages)  # fmt: skip
        return fired
