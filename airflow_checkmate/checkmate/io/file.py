"""TaskIOFile: a task's objects on a local (POSIX) filesystem, one append-only journal per task folder.

The objects of ``<base>/<task_id>/`` live in that folder's journal (see ``journal``): a checkpoint is
one appended record, atomic for readers and crashes, made durable (when ``durable``, the default) by
one ``fdatasync``. The bind lease (``task.lock``) stays a plain file, replaced atomically (``file_plain``),
and so do objects with no folder. Files are created 0600, folders 0700. Fenced writes and lease changes
are serialised by ``flock`` on the task's folder, which the kernel releases when a holder dies: a
fenced write checks the lease token and appends under a shared flock, a lease change takes it
exclusively, so a write after a takeover is refused (LeaseLostException) and changes nothing.
"""

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from airflow_checkmate.checkmate.exceptions import PersistenceDataNotFoundException, TaskIOException
from airflow_checkmate.checkmate.io.base import Fence, TaskIO
from airflow_checkmate.checkmate.io.file_lock import folder_guard, make_folder
from airflow_checkmate.checkmate.io.file_plain import atomic_write
from airflow_checkmate.checkmate.io.journal import JOURNAL_NAME, TMP_SUFFIX, Journals, write_pieces
from airflow_checkmate.checkmate.io.journal_format import Entry
from airflow_checkmate.checkmate.names import validate_obj_name

#: Validated object paths kept per instance: a checkpoint touches the same few names many times.
_PATH_CACHE_SIZE = 4096
#: The errors ``Path.is_file`` reads as "not a file" (pathlib's _IGNORED_ERRNOS); others raise.
_NOT_THERE_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP})
_RETRIES = 5


class TaskIOFile(TaskIO):
    """Task I/O implementation for file-based storage.

    :param base_url: ``file:///abs/path`` or a plain path; created (0700) if missing.
    :param lease_seconds: how long a bind lease lives without a heartbeat.
    :param durable: fsync every checkpoint (the default); ``False`` trades crash safety for speed.
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
        self._base_str = str(self.base)
        self._paths: dict[str, str] = {}
        self._journals = Journals(durable=durable, write=self._write_all)
        try:
            make_folder(self.base, durable=durable)
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

    def _journaled(self, obj_name: str) -> tuple[str, str] | None:
        """``(folder, name in it)`` of an object kept in a journal; None for a top-level object."""
        folder, name = os.path.split(self._str_path(obj_name))
        return None if folder == self._base_str else (folder, name)

    def _write_all(self, fd: int, pieces: Sequence[bytes]) -> None:
        """Write a journal record or a plain file's bytes (a test probe fails it as a full disk would)."""
        write_pieces(fd, pieces)

    def reopen_args(self) -> tuple[str, dict[str, Any]]:
        return str(self.base), {"lease_seconds": self.lease_seconds, "durable": self.durable}

    def build_url(self, obj_name: str) -> str:
        """Return the filesystem path of an object (inside its folder's journal, for a task's objects)."""
        return str(self._path(obj_name))

    def read_bytes(self, obj_name: str) -> bytes:
        path = self._str_path(obj_name)
        where = self._journaled(obj_name)
        if where is not None:
            try:
                data = self._journals.read(where[0], [where[1]]).get(where[1])
            except (PersistenceDataNotFoundException, OSError) as exc:
                raise PersistenceDataNotFoundException(f"cannot read stored object {path}: {exc}") from exc
            if data is not None:
                return data
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise PersistenceDataNotFoundException(f"stored object {path} does not exist") from None
        except OSError as exc:
            raise PersistenceDataNotFoundException(f"cannot read stored object {path}: {exc}") from exc

    def exists(self, obj_name: str) -> bool:
        where = self._journaled(obj_name)
        if where is not None:
            try:
                if self._journals.has(*where):
                    return True
            except PersistenceDataNotFoundException as exc:
                raise PersistenceDataNotFoundException(
                    f"cannot look up stored object {self._str_path(obj_name)}: {exc}"
                ) from exc
        try:
            return stat.S_ISREG(os.stat(self._str_path(obj_name)).st_mode)
        except OSError as exc:
            if exc.errno in _NOT_THERE_ERRNOS:
                return False
            raise

    def list(self, prefix: str) -> list[str]:
        """Names of stored objects starting with ``prefix`` (temporary files are never listed)."""
        return sorted(name for name, _ in self._walk_named(prefix, read=False))

    def read_prefix(self, prefix: str) -> dict[str, bytes]:
        """A folder's journal objects come from one read of it: one checkpoint, never a mix of two."""
        return dict(self._walk_named(prefix, read=True))

    def _walk_named(self, prefix: str, *, read: bool) -> Iterator[tuple[str, bytes]]:
        """``_walk``, its errors naming the objects asked for."""
        try:
            yield from self._walk(prefix, read=read)
        except PersistenceDataNotFoundException as exc:
            raise PersistenceDataNotFoundException(
                f"cannot read stored objects {os.path.join(self.base, prefix)}*: {exc}"
            ) from exc

    def _walk(self, prefix: str, *, read: bool) -> Iterator[tuple[str, bytes]]:
        folder, _, _ = prefix.rpartition("/")
        root = self._path(folder) if folder else self.base
        for dirpath, dirnames, filenames in os.walk(root):
            rel = Path(dirpath).relative_to(self.base).as_posix()
            rel = "" if rel == "." else rel + "/"
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            if rel and JOURNAL_NAME in filenames:
                found = self._journals.read(dirpath) if read else dict.fromkeys(self._journals.names(dirpath), b"")
                for name, data in found.items():
                    if (rel + name).startswith(prefix):
                        yield rel + name, data
            for name in filenames:
                if not name.startswith(".") and (rel + name).startswith(prefix):
                    if not read:
                        yield rel + name, b""
                        continue
                    with contextlib.suppress(FileNotFoundError), open(os.path.join(dirpath, name), "rb") as f:
                        yield rel + name, f.read()

    def write(self, obj_name: str, data: str | bytes, *, fence: Fence | None = None) -> None:
        """Replace an object atomically, checking the fence (if given) atomically with the write."""
        self.commit([(obj_name, data.encode("utf-8") if isinstance(data, str) else data)], fence=fence)

    def commit(self, writes: Sequence[tuple[str, bytes | None]], *, fence: Fence | None = None) -> None:
        """One checkpoint: the objects of one task folder go to its journal as one record (atomic).

        Objects of several folders are applied folder by folder, in order of first appearance.
        """
        groups: dict[str, list[Entry]] = {}
        for obj_name, data in writes:
            where = self._journaled(obj_name)
            if where is None:
                self._plain_commit(obj_name, data, fence)
            else:
                groups.setdefault(where[0], []).append((where[1], data))
        for folder, entries in groups.items():
            self._append(folder, entries, fence)

    def _append(self, folder: str, entries: Sequence[Entry], fence: Fence | None) -> int:
        check = None if fence is None else lambda: self.check_fence(fence)
        for _ in range(_RETRIES):
            try:
                return self._journals.append(folder, entries, check)
            except FileNotFoundError:  # no folder yet, or it was pruned meanwhile: make it again
                if all(data is None for _, data in entries):
                    if check is not None:
                        check()
                    return 0
                try:
                    make_folder(Path(folder), durable=self.durable)
                except OSError as exc:
                    raise TaskIOException(f"cannot create folder {folder}: {exc}; nothing was changed") from exc
            except OSError as exc:
                raise TaskIOException(f"cannot write to journal in {folder}: {exc}; nothing was changed") from exc
        raise TaskIOException(f"cannot write to folder {folder}: it keeps disappearing")

    def _plain_commit(self, obj_name: str, data: bytes | None, fence: Fence | None) -> None:
        if data is None:
            self.remove(obj_name, fence=fence)
        else:
            check = None if fence is None else lambda: self.check_fence(fence)
            atomic_write(self._str_path(obj_name), data, durable=self.durable, check=check, write=self._write_all)

    def remove(self, obj_name: str, *, fence: Fence | None = None) -> bool:
        where = self._journaled(obj_name)
        if where is not None and self._append(where[0], [(where[1], None)], fence):
            return True
        path = self._path(obj_name)
        try:
            if fence is None:
                path.unlink()
            else:
                with folder_guard(path.parent, exclusive=False):
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
        for _ in range(_RETRIES):
            try:
                make_folder(path.parent, durable=self.durable)
                with folder_guard(path.parent, exclusive=True):
                    if path.exists():
                        return False
                    try:
                        atomic_write(str(path), data.encode("utf-8"), durable=self.durable, write=self._write_all)
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
            with folder_guard(path.parent, exclusive=True):
                if self.lease_read(lock_name) != expected:
                    return False
                if new is None:
                    path.unlink()
                else:
                    # Durable like every lease write: a renewal or takeover torn by a power loss would
                    # leave a lease nobody can parse, which only a manual unlock clears.
                    atomic_write(str(path), new.encode("utf-8"), durable=self.durable, write=self._write_all)
                return True
        except FileNotFoundError:
            return False
        except OSError as exc:  # removing the lease failed (an I/O error): it is still held, unchanged
            raise TaskIOException(f"cannot change lease {path}: {exc}; the lease is unchanged") from exc

    def compact(self, prefix: str, *, fence: Fence | None = None) -> None:
        """Rewrite the task folder's journal as its live objects only (atomic rename); called at unbind."""
        check = None if fence is None else lambda: self.check_fence(fence)
        self._journals.compact(self._str_path(prefix.rstrip("/")), check)

    def prune(self, prefix: str) -> None:
        """Remove a task folder with no live object and no lease: its empty journal, temporary files
        left by crashed writers, and the folder itself."""
        folder = self._path(prefix.rstrip("/"))
        try:
            with folder_guard(folder, exclusive=True):
                if any(not n.startswith(".") for n in os.listdir(folder)):
                    return
                if not self._journals.remove_if_empty(str(folder)):
                    return
                for name in os.listdir(folder):
                    if name.endswith(TMP_SUFFIX):
                        with contextlib.suppress(FileNotFoundError):
                            (folder / name).unlink()
                folder.rmdir()
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise TaskIOException(f"cannot remove folder {folder}: {exc}") from exc
