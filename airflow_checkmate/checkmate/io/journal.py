"""The append-only journal that holds a task folder's objects: append, cheap re-reads, compaction.

Every object written in a folder ``<base>/<task_id>/`` lives in the folder's journal (``.~journal``,
hidden and never a valid object name, see ``journal_format``); one checkpoint is one record, appended
with one ``write`` and made durable with one ``fdatasync``. The folder is fsynced only when the journal
is created and after a compaction renames a new one in.

Why concurrent writers are safe (the holder appending and compacting, a cancel request from another
process appending at the same time, readers anywhere):

- Appenders hold the folder's flock *shared* (so a fenced append checks the lease under it, and lease
  changes, which take it exclusively, cannot interleave) and the journal file's own flock *exclusive*
  while they check the tail and append, so two appends never interleave and a torn tail found under it
  was left by a dead writer: it is cut off before the next record is written.
- Compaction holds the folder's flock *exclusively*: no append is in progress. It writes the live
  objects to a temp file, fsyncs it, renames it over the journal and fsyncs the folder. A reader opens
  either the old file or the new one; both are complete.
- Readers take no lock. They stop at a torn tail (an append in progress looks like one) and remember the
  file's identity and the offset they read to, so a poll reads only the bytes appended since.
"""

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from airflow_checkmate.checkmate.exceptions import TaskIOException
from airflow_checkmate.checkmate.io import journal_format as fmt
from airflow_checkmate.checkmate.io.file_lock import flock, folder_guard, fsync_folder

JOURNAL_NAME = ".~journal"
TMP_SUFFIX = ".tmp"
#: A journal is compacted once it exceeds twice its live objects plus this much.
COMPACT_SLACK = 64 * 1024
_CACHE_SIZE = 64


@dataclass
class _Seen(fmt.Replay):
    """A journal as last read: its incarnation, stat identity and size (past ``end`` = a torn tail)."""

    ident: bytes = b""
    key: tuple[int, int, int, int] = (0, 0, 0, 0)
    size: int = 0
    records: int = 0


def _key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns)


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _names(path: str, entries: Sequence[fmt.Entry]) -> str:
    """The objects of a checkpoint as paths, for messages."""
    folder = os.path.dirname(path)
    return ", ".join(os.path.join(folder, name) for name, _ in entries)


def write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view) :]


class Journals:
    """The journals of one TaskIOFile, with what was last read of each (so re-reads are cheap)."""

    def __init__(self, *, durable: bool, write: Callable[[int, bytes], None] = write_all) -> None:
        self.durable = durable
        self._write = write  # how a record is written (a test probe may fail it as a full disk would)
        self._cache: dict[str, _Seen] = {}
        self._mutex = threading.Lock()  # the cache is shared by the instance's threads

    def snapshot(self, folder: str) -> dict[str, bytes]:
        """The folder's live objects (name within the folder -> bytes); empty if it has no journal."""
        path = os.path.join(folder, JOURNAL_NAME)
        with self._mutex:
            seen = self._current(path)
            return dict(seen.objects) if seen else {}

    def get(self, folder: str, name: str) -> bytes | None:
        """One live object's bytes, or None."""
        with self._mutex:
            seen = self._current(os.path.join(folder, JOURNAL_NAME))
            return seen.objects.get(name) if seen else None

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
                    live = [(n, d) for n, d in entries if seen.objects.get(n) != d]
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

    def _write_record(self, fd: int, path: str, seen: _Seen, entries: Sequence[fmt.Entry]) -> None:
        record = fmt.encode_record(entries)
        try:
            self._write(fd, record)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, seen.end)
            raise TaskIOException(
                f"cannot store {_names(path, entries)} (appending to journal {path}): {exc}; their previous "
                "versions are unchanged"
            ) from exc
        seen.apply(entries)
        seen.end += len(record)
        seen.records += 1
        seen.size = seen.end
        seen.key = _key(os.fstat(fd))
        if self.durable:
            try:
                os.fdatasync(fd)
            except OSError as exc:
                raise TaskIOException(
                    f"stored {_names(path, entries)} (appended to journal {path}), but syncing it failed: {exc}; "
                    "the new versions are what readers see now but may not survive a power loss"
                ) from exc

    def compact(self, folder: str, check: Callable[[], None] | None) -> None:
        """Rewrite the journal as one record of its live objects (remove it if none are live)."""
        path = os.path.join(folder, JOURNAL_NAME)
        try:
            guard = folder_guard(folder, exclusive=True)
            guard.__enter__()
        except FileNotFoundError:
            return
        try:
            if check is not None:
                check()
            with self._mutex:
                seen = self._current(path)
                if seen is None or (seen.records <= 1 and seen.size == seen.end):
                    return
                for name in os.listdir(folder):  # what compactions and creations killed mid-way left
                    if name.startswith(JOURNAL_NAME + ".") and name.endswith(TMP_SUFFIX):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(os.path.join(folder, name))
                if not seen.objects:
                    os.unlink(path)
                    self._cache.pop(path, None)
                else:
                    self._rewrite(folder, path, seen)
                if self.durable:
                    fsync_folder(folder)
        except OSError as exc:
            raise TaskIOException(f"cannot compact journal {path}: {exc}; it is unchanged") from exc
        finally:
            guard.__exit__(None, None, None)

    def _rewrite(self, folder: str, path: str, seen: _Seen) -> None:
        record = fmt.encode_record(sorted(seen.objects.items()))
        header = fmt.new_header()
        tmp = self._new_file(folder, header + record)
        os.replace(tmp, path)
        fresh = _Seen(objects=seen.objects, live_bytes=seen.live_bytes, ident=fmt.parse_header(header, path))
        fresh.end = fresh.size = len(header) + len(record)
        fresh.records = 1
        fresh.key = _key(os.stat(path))
        self._cache[path] = fresh

    def remove_if_empty(self, folder: str) -> bool:
        """Under the folder's exclusive flock (the caller's): remove a journal with no live object.
        False if live objects remain."""
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
        tmp = self._new_file(folder, fmt.new_header())
        try:
            os.link(tmp, path)  # never replaces: a journal made meanwhile by another writer wins
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        if self.durable:
            fsync_folder(folder)
        return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)

    def _new_file(self, folder: str, content: bytes) -> str:
        """A complete, synced temp file in ``folder`` holding ``content``; returns its path."""
        tmp = os.path.join(folder, f"{JOURNAL_NAME}.{os.urandom(6).hex()}{TMP_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, content)
            if self.durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def _current(self, path: str) -> _Seen | None:
        """The journal at ``path`` as it is now (None if absent); reads only what changed since last time."""
        seen = self._cache.get(path)
        try:
            if seen is not None and seen.size == seen.end and _key(os.stat(path)) == seen.key:
                return seen
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            self._cache.pop(path, None)
            return None
        try:
            return self._refresh(path, fd)
        finally:
            os.close(fd)

    def _refresh(self, path: str, fd: int) -> _Seen:
        st = os.fstat(fd)
        seen = self._cache.get(path)
        if (
            seen is not None
            and seen.key[:2] == (st.st_dev, st.st_ino)
            and st.st_size >= seen.end
            and fmt.parse_header(os.pread(fd, fmt.HEADER_SIZE, 0), path) == seen.ident
        ):
            if st.st_size != seen.end:
                self._read_from(seen, fd, path, st.st_size)
            seen.key, seen.size = _key(st), st.st_size
            return seen
        data = _pread_all(fd, st.st_size, 0)
        seen = _Seen(ident=fmt.parse_header(data, path), key=_key(st), size=st.st_size)
        self._read_from(seen, fd, path, st.st_size, memoryview(data)[fmt.HEADER_SIZE :])
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[path] = seen
        return seen

    @staticmethod
    def _read_from(seen: _Seen, fd: int, path: str, size: int, data: memoryview | None = None) -> None:
        raw = data if data is not None else _pread_all(fd, size - seen.end, seen.end)
        seen.records += fmt.read_records(seen, raw, seen.end, path)
