"""Folder primitives of the file backend: the flock guard, and folders made and synced durably.

``flock`` is released by the kernel when its holder dies, so a crashed process never leaves a lock
behind; waiting polls with a deadline so a stopped (not dead) holder cannot block a caller forever.
"""

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from airflow_checkmate.checkmate.exceptions import BindException

GUARD_WAIT_SECONDS = 60.0


def flock(fd: int, what: Path | str, exclusive: bool) -> None:
    """Take ``flock`` on ``fd`` (shared or exclusive), polling up to GUARD_WAIT_SECONDS."""
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    try:
        fcntl.flock(fd, mode)  # the uncontended case: no clock read
        return
    except BlockingIOError:
        pass
    deadline = time.monotonic() + GUARD_WAIT_SECONDS
    delay = 0.0005
    while True:
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
        try:
            fcntl.flock(fd, mode)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise BindException(
                    f"storage {what} stayed locked for {GUARD_WAIT_SECONDS:.0f} s by another process "
                    "(stopped or hung?); try again later"
                ) from None


@contextlib.contextmanager
def folder_guard(folder: Path | str, *, exclusive: bool) -> Iterator[int]:
    """Hold ``flock`` on ``folder`` for the block; yields the folder's open descriptor."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        flock(fd, folder, exclusive)
        yield fd
    finally:
        os.close(fd)


def fsync_folder(folder: Path | str) -> None:
    """fsync a folder, so the names created or renamed in it survive a power loss."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_folder(folder: Path, *, durable: bool) -> None:
    """Create ``folder`` (0700) and its missing parents. When durable, fsync the parent of each one
    made: what is fsynced inside a new task folder is lost with it if its own entry never reached disk."""
    missing = []
    current = folder
    while not current.is_dir() and current.parent != current:
        missing.append(current)
        current = current.parent
    if not missing:
        return
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if durable:
        for made in reversed(missing):
            fsync_folder(made.parent)
