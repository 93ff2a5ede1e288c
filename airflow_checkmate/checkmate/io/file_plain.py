"""Whole-file atomic replacement, for what the file backend keeps outside the journals: leases and
objects with no folder (a probe at the top level).

Temp file, fsync, rename, fsync of the folder (when durable): a reader sees the old or the new file, and
after a power loss one of them survives. A fenced replacement runs its check and the rename under the
folder's shared flock, so a lease change (exclusive) cannot fall between them.
"""

import contextlib
import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from airflow_checkmate.checkmate.exceptions import TaskIOException
from airflow_checkmate.checkmate.io.file_lock import flock, fsync_folder, make_folder
from airflow_checkmate.checkmate.io.journal import TMP_SUFFIX, Writer, write_pieces


def atomic_write(
    path: str,
    payload: bytes,
    *,
    durable: bool,
    check: Callable[[], None] | None = None,
    write: Writer = write_pieces,
) -> None:
    """Replace the file at ``path`` with ``payload``; ``check`` (a fence) runs just before the rename."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.urandom(6).hex()}{TMP_SUFFIX}")
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            make_folder(Path(folder), durable=durable)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            write(fd, [payload])
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if check is None:
            os.replace(tmp, path)
            if durable:
                _sync_renamed(path, folder)
            return
        # One descriptor of the folder serves the fence's flock and then the folder's fsync; the lock is
        # dropped before the fsync.
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            flock(dir_fd, folder, exclusive=False)
            try:
                check()
                os.replace(tmp, path)
            finally:
                fcntl.flock(dir_fd, fcntl.LOCK_UN)
            if durable:
                _sync_renamed(path, dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise TaskIOException(
                f"cannot write stored object {path}: {exc}; its previous version is unchanged"
            ) from exc
        raise


def _sync_renamed(path: str, folder: str | int) -> None:
    """fsync the folder (a path, or an open descriptor of it) after ``path`` was renamed into it."""
    try:
        if isinstance(folder, int):
            os.fsync(folder)
        else:
            fsync_folder(folder)
    except OSError as exc:  # past the rename: the new version is what readers see now
        raise TaskIOException(
            f"stored object {path} was replaced, but syncing its folder failed: {exc}; the new "
            "version is in place but may not survive a power loss"
        ) from exc
