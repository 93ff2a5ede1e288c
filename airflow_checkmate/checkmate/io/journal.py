"""The append-only journal that holds a task folder's objects: appends and compaction.

Every object written in a folder ``<base>/<task_id>/`` lives in the folder's journal (``.~journal``,
hidden and never a valid object name, see ``journal_format``); one checkpoint is one record, appended
with one ``writev`` and made durable with one ``fdatasync``. The folder is fsynced only when the journal
is created and after a compaction renames a new one in.

Why concurrent writers are safe (the holder appending and compacting, a cancel request from another
process appending at the same time, readers anywhere):

- Appenders hold the folder's flock *shared* (so a fenced append checks the lease under it, and lease
  changes, which take it exclusively, cannot interleave) and the journal file's own flock *exclusive*
  while they check the tail and append, so two appends never interleave and a torn tail found under it
  was left by a dead writer: it is cut off before the next record is written.
- Compaction holds the folder's flock *exclusively*: no append is in progress. It writes the live
  objects to a temp file, fsyncs it, renames it over the journal and fsyncs the folder. A reader opens
  either the old file or the new one; both are complete, and records are never rewritten in place.
- Readers take no lock (see ``journal_read``): they stop at a torn tail, which an append in progress
  looks like, and read objects in the file they found them in.
"""

import contextlib
import os
from collections.abc import Callable, Sequence

from airflow_checkmate.checkmate.exceptions import TaskIOException
from airflow_checkmate.checkmate.io import journal_format as fmt
from airflow_checkmate.checkmate.io.file_lock import flock, folder_guard, fsync_folder
from airflow_checkmate.checkmate.io.journal_read import JOURNAL_NAME as JOURNAL_NAME
from airflow_checkmate.checkmate.io.journal_read import TMP_SUFFIX as TMP_SUFFIX
from airflow_checkmate.checkmate.io.journal_read import JournalReader, Seen, stat_key

#: A journal is compacted once it exceeds twice its live objects plus this much.
COMPACT_SLACK = 64 * 1024
#: A rewrite of an object with the same bytes is left out of a checkpoint up to this size (it is compared).
_SAME_BYTES_LIMIT = 1 << 20

Writer = Callable[[int, Sequence[bytes]], None]


def _iov_max() -> int:
    try:
        return max(int(os.sysconf("SC_IOV_MAX")), 16)
    except (ValueError, OSError):
        return 1024


#: writev refuses more pieces than this (EINVAL): a checkpoint of many objects (a reset, a cleanup) has more.
IOV_MAX = _iov_max()


def write_pieces(fd: int, pieces: Sequence[bytes]) -> None:
    """Write ``pieces`` in order with one ``writev`` (the rest with ``write`` if it was cut short).

    More pieces than one ``writev`` takes are joined first: one copy of a record of many small objects.
    """
    if len(pieces) > IOV_MAX:
        pieces = [b"".join(pieces)]
    written = os.writev(fd, pieces)
    total = sum(len(p) for p in pieces)
    if written < total:
        view = memoryview(b"".join(pieces))[written:]
        while view:
            view = view[os.write(fd, view) :]


class Journals(JournalReader):
    """The journals of one TaskIOFile: appends and compactions, on top of the reader's cache."""

    def __init__(self, *, durable: bool, write: Writer = write_pieces) -> None:
        super().__init__()
        self.durable = durable
        self._write = write  # how a record is written (a test probe may fail it as a full disk would)

    def append(self, folder: str, entries: Sequence[fmt.Entry], check: Callable[[], None] | None) -> int:
        """Append one checkpoint (``check`` runs first under the folder's shared flock; it raises to refuse).

        Entries that change nothing (removing an absent object, rewriting the same bytes) are left out, so
        the file stays byte-identical; returns how many entries were written. May compact.
        """
        path = os.path.join(folder, JOURNAL_NAME)
        with folder_guard(folder, exclusive=False):
            if check is not None:
                check()
            fd = self._open_for_append(folder, path, create=any(d is not None for _, d in entries))
            if fd is None:
                return 0  # only removals, and there is no journal to remove from
            try:
                flock(fd, path, exclusive=True)
                with self._mutex:
                    seen = self._refresh(path, fd)
                    live = [(n, d) for n, d in entries if not _unchanged(fd, seen, n, d)]
                    if not live:
                        return 0
                    if seen.size > seen.end:
                        os.ftruncate(fd, seen.end)  # a dead writer's torn record
                    self._write_record(fd, path, seen, live)
                    grown = seen.end - fmt.HEADER_SIZE > 2 * seen.live_bytes + COMPACT_SLACK
            finally:
                os.close(fd)
        if grown:
            self.compact(folder, None)
        return len(live)

    def _write_record(self, fd: int, path: str, seen: Seen, entries: Sequence[fmt.Entry]) -> None:
        pieces, located = fmt.encode_record(entries)
        try:
            self._write(fd, pieces)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, seen.end)
            raise TaskIOException(
                f"cannot store {_names(path, entries)} (appending to journal {path}): {exc}; their previous "
                "versions are unchanged"
            ) from exc
        seen.apply(located, seen.end)
        seen.end += sum(len(p) for p in pieces)
        seen.records += 1
        seen.size = seen.end
        seen.key = stat_key(os.fstat(fd))
        if self.durable:
            try:
                os.fdatasync(fd)
            except OSError as exc:
                raise TaskIOException(
                    f"stored {_names(path, entries)} (appended to journal {path}), but syncing it failed: {exc}; "
                    "the new versions are what readers see now but may not survive a power loss"
                ) from exc

    def compact(self, folder: str, check: Callable[[], None] | None) -> None:
        """Rewrite the journal as one record per live object (remove it if none is live)."""
        path = os.path.join(folder, JOURNAL_NAME)
        try:
            guard = folder_guard(folder, exclusive=True)
            guard.__enter__()
        except FileNotFoundError:
            return
        try:
            if check is not None:
                check()
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                with self._mutex:
                    seen = self._refresh(path, fd)
                    if seen.dead_bytes() == 0 and seen.size == seen.end:
                        return
                    self._clear_temps(folder)
                    if seen.objects:
                        self._rewrite(folder, path, fd, seen)
                    else:
                        os.unlink(path)
                        self._cache.pop(path, None)
            finally:
                os.close(fd)
            if self.durable:
                fsync_folder(folder)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise TaskIOException(f"cannot compact journal {path}: {exc}; it is unchanged") from exc
        finally:
            guard.__exit__(None, None, None)

    def _rewrite(self, folder: str, path: str, old: int, seen: Seen) -> None:
        """Write the live objects (read one at a time from ``old``) to a new file; rename it over ``path``."""
        header = fmt.new_header()
        fresh = Seen(ident=header[-6:])
        tmp = os.path.join(folder, f"{JOURNAL_NAME}.compact.{os.urandom(6).hex()}{TMP_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            write_pieces(fd, [header])
            for name, (offset, size) in sorted(seen.objects.items()):
                pieces, located = fmt.encode_record([(name, fmt.pread_all(old, size, offset))])
                write_pieces(fd, pieces)
                fresh.apply(located, fresh.end)
                fresh.end += sum(len(p) for p in pieces)
                fresh.records += 1
            if self.durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, path)
        fresh.size = fresh.end
        fresh.key = stat_key(os.stat(path))
        self._cache[path] = fresh

    @staticmethod
    def _clear_temps(folder: str) -> None:
        """Remove what compactions and journal creations killed mid-way left (none runs now: the caller
        holds the folder's exclusive flock)."""
        for name in os.listdir(folder):
            if name.startswith(JOURNAL_NAME + ".") and name.endswith(TMP_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))

    def remove_if_empty(self, folder: str) -> bool:
        """Under the folder's exclusive flock (the caller's): remove a journal with no live object and the
        temp files of dead writers. False if live objects remain."""
        path = os.path.join(folder, JOURNAL_NAME)
        with self._mutex:
            seen = self._current(path)
            if seen is not None and seen.objects:
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self._cache.pop(path, None)
            return True

    def _open_for_append(self, folder: str, path: str, *, create: bool) -> int | None:
        try:
            return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                return None
        tmp = os.path.join(folder, f"{JOURNAL_NAME}.new.{os.urandom(6).hex()}{TMP_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            write_pieces(fd, [fmt.new_header()])
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces: a journal made meanwhile by another writer wins
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        if self.durable:
            fsync_folder(folder)
        return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)


def _unchanged(fd: int, seen: fmt.Replay, name: str, data: bytes | None) -> bool:
    """True if writing ``data`` (None: removing) would leave object ``name`` as it is."""
    where = seen.objects.get(name)
    if data is None or where is None:
        return data is None and where is None
    return where[1] == len(data) <= _SAME_BYTES_LIMIT and fmt.pread_all(fd, where[1], where[0]) == data


def _names(path: str, entries: Sequence[fmt.Entry]) -> str:
    """The objects of a checkpoint as paths, for messages (the first few of a large one)."""
    folder = os.path.dirname(path)
    shown = ", ".join(os.path.join(folder, name) for name, _ in entries[:5])
    return shown if len(entries) <= 5 else f"{shown} and {len(entries) - 5} more objects"
