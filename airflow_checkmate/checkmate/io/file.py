"""TaskIOFile: a task's objects as files on a local (POSIX) filesystem.

Writes are atomic and, when ``durable`` (the default), survive power loss: temp file, fsync, rename,
fsync of the folder. Files are created 0600, folders 0700. The lease and fenced writes are serialised
by ``flock`` on the task's folder, which the kernel releases when a holder dies: a fenced write checks
the lease token and renames under a shared flock, a lease change takes it exclusively.
"""

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from airflow_checkmate.checkmate.exceptions import (
    BindException,
    PersistenceDataNotFoundException,
    TaskIOException,
)
from airflow_checkmate.checkmate.io.base import Fence, TaskIO
from airflow_checkmate.checkmate.names import validate_obj_name

_TMP_SUFFIX = ".tmp"
_GUARD_WAIT_SECONDS = 60.0
#: Validated object paths kept per instance: a checkpoint touches the same few names many times.
_PATH_CACHE_SIZE = 4096
#: The errors ``Path.is_file`` reads as "not a file" (pathlib's _IGNORED_ERRNOS); others raise.
_NOT_THERE_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP})


class TaskIOFile(TaskIO):
    """Task I/O implementation for file-based storage.

    :param base_url: ``file:///abs/path`` or a plain path; created (0700) if missing.
    :param lease_seconds: how long a bind lease lives without a heartbeat.
    :param durable: fsync every write (the default); ``False`` trades crash safety for speed.
    """

    scheme = "file"

    def __init__(
        self, base_url: str | os.PathLike[str], *, lease_seconds: float = 30.0, durable: bool = True, **_: Any
    ) -> None:
        url = os.fspath(base_url)
        path = url[len("file://") :] if url[:7].lower() == "file://" else url
        if not path:
            raise TaskIOException(f"TaskIOFile needs a folder, got {url!r}")
        self.base = Path(path).expanduser().resolve()
        super().__init__(f"file://{self.base}", lease_seconds=lease_seconds)
        self.durable = durable
        self._paths: dict[str, str] = {}
        try:
            self._make_folder(self.base)
        except OSError as exc:
            raise TaskIOException(f"cannot create the CheckMate storage folder {self.base}: {exc}") from exc

    def _path(self, obj_name: str) -> Path:
        return Path(self._str_path(obj_name))

    def _str_path(self, obj_name: str) -> str:
        """The object's validated path as a str, cached (validation and pathlib cost more than the I/O)."""
        path = self._paths.get(obj_name)
        if path is None:
            path = os.path.join(self.base, *validate_obj_name(obj_name))
            if len(self._paths) >= _PATH_CACHE_SIZE:
                self._paths.clear()
            self._paths[obj_name] = path
        return path

    def reopen_args(self) -> tuple[str, dict[str, Any]]:
        return str(self.base), {"lease_seconds": self.lease_seconds, "durable": self.durable}

    def build_url(self, obj_name: str) -> str:
        """Return the filesystem path of an object."""
        return str(self._path(obj_name))

    def read_bytes(self, obj_name: str) -> bytes:
        path = self._str_path(obj_name)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise PersistenceDataNotFoundException(f"stored object {path} does not exist") from None
        except OSError as exc:
            raise PersistenceDataNotFoundException(f"cannot read stored object {path}: {exc}") from exc

    def exists(self, obj_name: str) -> bool:
        try:
            return stat.S_ISREG(os.stat(self._str_path(obj_name)).st_mode)
        except OSError as exc:
            if exc.errno in _NOT_THERE_ERRNOS:
                return False
            raise

    def list(self, prefix: str) -> list[str]:
        """Names of stored objects starting with ``prefix`` (temporary files are never listed)."""
        folder, _, _ = prefix.rpartition("/")
        root = self._path(folder) if folder else self.base
        names: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root):
            rel = Path(dirpath).relative_to(self.base).as_posix()
            rel = "" if rel == "." else rel + "/"
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            names.extend(rel + f for f in filenames if not f.startswith(".") and (rel + f).startswith(prefix))
        return sorted(names)

    def write(self, obj_name: str, data: str | bytes, *, fence: Fence | None = None) -> None:
        """Replace an object atomically, checking the fence (if given) atomically with the rename."""
        path = self._str_path(obj_name)
        payload = data.encode("utf-8") if isinstance(data, str) else data
        self._atomic_write(path, payload, fence=fence)

    def remove(self, obj_name: str, *, fence: Fence | None = None) -> bool:
        path = self._path(obj_name)
        try:
            if fence is None:
                path.unlink()
            else:
                with self._guard(path.parent, exclusive=False):
                    self.check_fence(fence)
                    path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise TaskIOException(f"cannot remove stored object {path}: {exc}") from exc
        return True

    def lease_read(self, lock_name: str) -> str | None:
        try:
            with open(self._str_path(lock_name), "rb") as f:
                return f.read().decode("utf-8")  # checked before every fenced write: no text-mode layer
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise PersistenceDataNotFoundException(f"cannot read lease {lock_name!r}: {exc}") from exc

    def lease_create(self, lock_name: str, data: str) -> bool:
        path = self._path(lock_name)
        for _ in range(5):
            try:
                with self._guard(path.parent, exclusive=True, create=True):
                    if path.exists():
                        return False
                    try:
                        self._atomic_write(str(path), data.encode("utf-8"))
                    except TaskIOException:
                        # A failure past the rename (the folder's fsync) left this lease in place, held by
                        # a live pid: take it back, or this very process would wait out the whole lease.
                        with contextlib.suppress(OSError):
                            path.unlink()
                        raise
                    return True
            except FileNotFoundError:
                continue  # the folder was removed by a concurrent cleanup: make it again
            except OSError as exc:  # its folder could not be made or locked (full disk, I/O error)
                raise TaskIOException(f"cannot create lease {path}: {exc}; nothing was changed") from exc
        raise TaskIOException(f"cannot create lease {path}: its folder keeps disappearing")

    def lease_swap(self, lock_name: str, expected: str, new: str | None) -> bool:
        path = self._path(lock_name)
        try:
            with self._guard(path.parent, exclusive=True):
                if self.lease_read(lock_name) != expected:
                    return False
                if new is None:
                    path.unlink()
                else:
                    # Durable like every lease write: a renewal or takeover torn by a power loss would
                    # leave a lease nobody can parse, which only a manual unlock clears.
                    self._atomic_write(str(path), new.encode("utf-8"))
                return True
        except FileNotFoundError:
            return False
        except OSError as exc:  # removing the lease failed (an I/O error): it is still held, unchanged
            raise TaskIOException(f"cannot change lease {path}: {exc}; the lease is unchanged") from exc

    def prune(self, prefix: str) -> None:
        """Remove temporary files left by crashed writers and the task's folder, if no lease exists."""
        folder = self._path(prefix.rstrip("/"))
        try:
            with self._guard(folder, exclusive=True):
                if any(not n.startswith(".") for n in os.listdir(folder)):
                    return
                for name in os.listdir(folder):
                    if name.endswith(_TMP_SUFFIX):
                        with contextlib.suppress(FileNotFoundError):
                            (folder / name).unlink()
                folder.rmdir()
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise TaskIOException(f"cannot remove folder {folder}: {exc}") from exc

    @contextlib.contextmanager
    def _guard(self, folder: Path, *, exclusive: bool, create: bool = False) -> Iterator[None]:
        """Hold flock on ``folder``; waits (polling) so a stopped holder cannot block forever."""
        if create:
            self._make_folder(folder)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._flock(fd, folder, exclusive)
            yield
        finally:
            os.close(fd)

    def _make_folder(self, folder: Path) -> None:
        """Create ``folder`` and its missing parents. When durable, fsync the parent of each one made: the
        checkpoints fsynced inside a new task folder are lost with it if its own entry never reached disk."""
        missing = []
        current = folder
        while not current.is_dir() and current.parent != current:
            missing.append(current)
            current = current.parent
        if not missing:
            return
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.durable:
            for made in reversed(missing):
                self._fsync_folder(made.parent)

    @staticmethod
    def _flock(fd: int, folder: Path | str, exclusive: bool) -> None:
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline = time.monotonic() + _GUARD_WAIT_SECONDS
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, mode)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BindException(
                        f"storage folder {folder} stayed locked for {_GUARD_WAIT_SECONDS:.0f} s by "
                        "another process (stopped or hung?); try again later"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.02)

    def _atomic_write(
        self, path: str, payload: bytes, *, fence: Fence | None = None, durable: bool | None = None
    ) -> None:
        durable = self.durable if durable is None else durable
        folder, name = os.path.split(path)
        tmp = os.path.join(folder, f".{name}.{os.urandom(6).hex()}{_TMP_SUFFIX}")
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                self._make_folder(Path(folder))
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                self._write_all(fd, payload)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if fence is None:
                os.replace(tmp, path)
                if durable:
                    self._sync_renamed(path, folder)
            else:
                # One descriptor of the folder serves the fence's flock and then the folder's fsync (an
                # open less per checkpoint); the lock is dropped before the fsync, as the guard did.
                dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    self._flock(dir_fd, folder, exclusive=False)
                    try:
                        self.check_fence(fence)
                        os.replace(tmp, path)
                    finally:
                        fcntl.flock(dir_fd, fcntl.LOCK_UN)
                    if durable:
                        self._sync_renamed(path, dir_fd)
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

    def _write_all(self, fd: int, payload: bytes) -> None:
        view = memoryview(payload)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def _sync_renamed(self, path: str, folder: str | int) -> None:
        """fsync the folder (a path, or an open descriptor of it) after ``path`` was renamed into it."""
        try:
            if isinstance(folder, int):
                os.fsync(folder)
            else:
                self._fsync_folder(folder)
        except OSError as exc:  # past the rename: the new version is what readers see now
            raise TaskIOException(
                f"stored object {path} was replaced, but syncing its folder failed: {exc}; the new "
                "version is in place but may not survive a power loss"
            ) from exc

    @staticmethod
    def _fsync_folder(folder: Path | str) -> None:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
