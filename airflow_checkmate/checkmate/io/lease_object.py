"""The bind lease of object storage: one object changed only by conditional requests (S3's ETags).

It remembers the version (bytes and ETag) it last read or wrote, so a renewal (read the lease, then
swap it) is two requests: the swap's ``If-Match`` uses the ETag of the read. When that version is not
the one expected, or the condition fails, the swap reads the lease again and compares its text, exactly
as without the memory: a swap happens only over the exact ``expected`` text.
"""

import contextlib
from collections.abc import Callable, Iterator

from airflow_checkmate.checkmate.exceptions import TaskIOException
from airflow_checkmate.checkmate.io.conditions import STORE_ERRORS, ConditionalWrites, ConditionFailed


class LeaseObject:
    """Create-if-absent and compare-and-swap of lease objects, each at ``path_of(lock_name)``."""

    def __init__(
        self,
        conditions: ConditionalWrites,
        path_of: Callable[[str], str],
        failed: Callable[[str], Callable[[Exception], TaskIOException]],
    ) -> None:
        self.conditions = conditions
        self.path_of = path_of
        self.failed = failed  # failed(lock_name)(exc): the TaskIOException naming the lease
        self._seen: dict[str, tuple[bytes, str]] = {}  # lock name -> (bytes, ETag) last read or written

    def read(self, lock_name: str) -> str | None:
        with self._errors(lock_name):
            found = self.conditions.read(self.path_of(lock_name))
        self._remember(lock_name, found)
        return None if found is None else found[0].decode("utf-8", "replace")

    def create(self, lock_name: str, data: str) -> bool:
        payload = data.encode("utf-8")
        with self._errors(lock_name):
            try:
                etag = self.conditions.create(self.path_of(lock_name), payload)
            except ConditionFailed:
                return False
        self._remember(lock_name, (payload, etag))
        return True

    def swap(self, lock_name: str, expected: str, new: str | None) -> bool:
        wanted = expected.encode("utf-8")
        seen = self._seen.get(lock_name)
        with self._errors(lock_name):
            if seen is not None and seen[0] == wanted and self._swap_over(lock_name, seen[1], new):
                return True
            found = self.conditions.read(self.path_of(lock_name))
            self._remember(lock_name, found)
            return found is not None and found[0] == wanted and self._swap_over(lock_name, found[1], new)

    def _swap_over(self, lock_name: str, etag: str, new: str | None) -> bool:
        """Replace (or remove) the version with ``etag``; False if the lease is no longer that version."""
        path = self.path_of(lock_name)
        self._seen.pop(lock_name, None)
        try:
            if new is None:
                self.conditions.delete(path, etag)
            else:
                payload = new.encode("utf-8")
                self._remember(lock_name, (payload, self.conditions.replace(path, payload, etag)))
        except ConditionFailed:
            return False
        return True

    def _remember(self, lock_name: str, found: tuple[bytes, str] | None) -> None:
        if found is None:
            self._seen.pop(lock_name, None)
        else:
            self._seen[lock_name] = found

    @contextlib.contextmanager
    def _errors(self, lock_name: str) -> Iterator[None]:
        try:
            yield
        except STORE_ERRORS as exc:
            raise self.failed(lock_name)(exc) from exc
