"""Reading a task folder's journal without locks, cheaply enough to poll.

A reader remembers, per journal, the file's identity (device, inode, incarnation id), how far it read
and where each live object sits (never the objects' bytes: a task of large states stays a few copies of
them in memory). A poll costs one ``stat``; when the file grew, only the appended records are read; when
a compaction replaced it, it is read again. Objects are read where they sit, in the file they were found
in, so a caller gets one checkpoint even while a compaction renames a new file in. A torn tail (an
append in progress, or a dead writer's) is not read; a damaged record raises (see ``journal_format``).
"""

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from airflow_checkmate.checkmate.io import journal_format as fmt

JOURNAL_NAME = ".~journal"
TMP_SUFFIX = ".tmp"
_CACHE_SIZE = 256


@dataclass
class Seen(fmt.Replay):
    """A journal as last read: its incarnation, stat identity and size (past ``end`` = a torn tail)."""

    ident: bytes = b""
    key: tuple[int, int, int, int] = (0, 0, 0, 0)
    size: int = 0


def stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns)


class JournalReader:
    """What was last read of each journal, shared by the threads of one TaskIOFile."""

    def __init__(self) -> None:
        self._cache: dict[str, Seen] = {}
        self._mutex = threading.Lock()

    def read(self, folder: str, names: Sequence[str] | None = None) -> dict[str, bytes]:
        """Live objects of the folder's journal (all, or those of ``names`` that exist), from one checkpoint.

        The objects are read through the descriptor the journal was scanned with: a compaction renames a
        new file in, and this one keeps the bytes the offsets point at.
        """
        path = os.path.join(folder, JOURNAL_NAME)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            with self._mutex:
                self._cache.pop(path, None)
            return {}
        try:
            with self._mutex:
                objects = self._refresh(path, fd).objects
                wanted = dict(objects) if names is None else {n: objects[n] for n in names if n in objects}
            return {name: fmt.pread_all(fd, size, offset) for name, (offset, size) in wanted.items()}
        finally:
            os.close(fd)

    def has(self, folder: str, name: str) -> bool:
        with self._mutex:
            seen = self._current(os.path.join(folder, JOURNAL_NAME))
            return seen is not None and name in seen.objects

    def names(self, folder: str) -> list[str]:
        with self._mutex:
            seen = self._current(os.path.join(folder, JOURNAL_NAME))
            return list(seen.objects) if seen else []

    def _current(self, path: str) -> Seen | None:
        """The journal at ``path`` as it is now (None if absent); reads only what changed since last time."""
        seen = self._cache.get(path)
        try:
            if seen is not None and seen.size == seen.end and stat_key(os.stat(path)) == seen.key:
                return seen
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            self._cache.pop(path, None)
            return None
        try:
            return self._refresh(path, fd)
        finally:
            os.close(fd)

    def _refresh(self, path: str, fd: int) -> Seen:
        st = os.fstat(fd)
        seen = self._cache.get(path)
        if (
            seen is None
            or seen.key[:2] != (st.st_dev, st.st_ino)
            or st.st_size < seen.end
            or fmt.parse_header(fmt.pread_all(fd, fmt.HEADER_SIZE, 0), path) != seen.ident
        ):
            seen = Seen(ident=fmt.parse_header(fmt.pread_all(fd, fmt.HEADER_SIZE, 0), path))
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[path] = seen
        fmt.scan(seen, fd, st.st_size, path)
        seen.key, seen.size = stat_key(st), st.st_size
        return seen
