"""TaskIO: the storage interface every backend implements, and the factory that picks one by URL."""

import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from airflow_checkmate.checkmate.exceptions import (
    LeaseLostException,
    PersistenceDataNotFoundException,
    TaskEngineException,
)

DEFAULT_LEASE_SECONDS = 30.0

#: URL scheme -> "module:Class" of the backend; imported only when a URL of that scheme is used.
BACKENDS: dict[str, str] = {
    "": "airflow_checkmate.checkmate.io.file:TaskIOFile",
    "file": "airflow_checkmate.checkmate.io.file:TaskIOFile",
    **dict.fromkeys(
        ("sqlite", "postgres", "postgresql", "postgresql+psycopg2", "postgresql+psycopg", "postgresql+pg8000"),
        "airflow_checkmate.checkmate.io.sql:TaskIOSQL",
    ),
    **dict.fromkeys(
        ("s3", "s3a", "gs", "gcs", "abfs", "abfss", "az"),
        "airflow_checkmate.checkmate.io.objectstorage:TaskIOObjectStorage",
    ),
}


def _redacted(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``, for messages."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return "<unparseable URL>"
    return url.replace(f":{password}@", ":***@") if password else url


@dataclass(frozen=True)
class Fence:
    """Proof of holding a task's bind lease: writes carrying it are refused once the lease is lost."""

    lock_name: str
    token: str


class TaskIO(ABC):
    """Storage of a task's objects (JSON text under the task id as a prefix) plus lease primitives.

    Writes replace a whole object atomically: a reader sees the old or the new version, never a mix.
    A write or remove given a :class:`Fence` happens only while that fence's lease is still held,
    checked atomically with the write; otherwise it raises LeaseLostException and changes nothing.
    """

    scheme: ClassVar[str] = ""

    def __init__(self, base_url: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        if not lease_seconds or lease_seconds <= 0:
            raise TaskEngineException(f"lease_seconds must be positive, got {lease_seconds!r}")
        self.base_url = base_url
        self.lease_seconds = float(lease_seconds)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    @staticmethod
    def from_base_url(url: str, **kwargs: Any) -> "TaskIO":
        """Build the backend for ``url`` by its scheme (a plain path means local files)."""
        scheme = urlsplit(url).scheme.lower() if "://" in url else ""
        target = BACKENDS.get(scheme)
        if target is None:
            known = ", ".join(sorted(f"{s}://" for s in BACKENDS if s))
            raise TaskEngineException(
                f"no CheckMate storage backend for URL scheme {scheme!r} in {_redacted(url)!r}; known: {known} "
                "or a plain path"
            )
        module, _, name = target.partition(":")
        backend: type[TaskIO] = getattr(importlib.import_module(module), name)
        return backend(url, **kwargs)

    def read(self, obj_name: str) -> str:
        """Read an object's text; raise PersistenceDataNotFoundException if it is missing or unreadable."""
        raw = self.read_bytes(obj_name)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PersistenceDataNotFoundException(
                f"stored object {self.build_url(obj_name)} is not UTF-8 text ({exc}); it was left in place. "
                "Restore it, or clean the task to start over"
            ) from exc

    @abstractmethod
    def read_bytes(self, obj_name: str) -> bytes:
        """Read an object's bytes (what parsers take without another copy)."""

    @abstractmethod
    def write(self, obj_name: str, data: str | bytes, *, fence: Fence | None = None) -> None:
        """Replace an object atomically; raise TaskIOException on a storage failure."""

    def commit(self, writes: Sequence[tuple[str, bytes | None]], *, fence: Fence | None = None) -> None:
        """Apply one checkpoint: writes (bytes) and removals (None) of objects of one task, in order.

        Backends that can make it atomic do (the file journal, one SQL transaction): a reader and a
        crash see all of it or none of it. This default applies the writes one by one, so a crash may
        leave a prefix applied; callers order a checkpoint so that every prefix is a valid task.
        """
        for name, data in writes:
            if data is None:
                self.remove(name, fence=fence)
            else:
                self.write(name, data, fence=fence)

    def read_prefix(self, prefix: str) -> dict[str, bytes]:
        """Every object whose name starts with ``prefix`` (a task's objects), name -> bytes, in one pass.

        On backends with atomic checkpoints the result is one checkpoint, never a mix of two. An
        object removed between listing and reading is left out.
        """
        found: dict[str, bytes] = {}
        for name in self.list(prefix):
            try:
                found[name] = self.read_bytes(name)
            except PersistenceDataNotFoundException:
                if self.exists(name):
                    raise
        return found

    @abstractmethod
    def exists(self, obj_name: str) -> bool:
        """True if the object exists."""

    @abstractmethod
    def remove(self, obj_name: str, *, fence: Fence | None = None) -> bool:
        """Remove an object; False if it did not exist."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Names of the objects that start with ``prefix``, sorted."""

    @abstractmethod
    def build_url(self, obj_name: str) -> str:
        """The URL (or path) of an object, for people and links."""

    @abstractmethod
    def lease_read(self, lock_name: str) -> str | None:
        """The lease object's raw text, or None if there is none."""

    @abstractmethod
    def lease_create(self, lock_name: str, data: str) -> bool:
        """Create the lease object only if absent, atomically; False if it exists."""

    @abstractmethod
    def lease_swap(self, lock_name: str, expected: str, new: str | None) -> bool:
        """Compare-and-swap: replace (or with ``new=None`` remove) the lease only if it still reads
        ``expected``; False otherwise."""

    def reopen_args(self) -> tuple[str, dict[str, Any]] | None:
        """``(url, options)`` that open this same store in another process (the lease watcher), or None.

        The URL may carry a password: pass it through a pipe, never a command line.
        """
        return None

    def prune(self, prefix: str) -> None:
        """Remove leftovers (temporary files, empty folders) under a prefix with no live lease.

        A no-op on stores without folders.
        """

    def compact(self, prefix: str, *, fence: Fence | None = None) -> None:
        """Shrink what a task's checkpoints left behind to its live objects (the file journal rewrites
        itself); called at unbind. A no-op on stores that replace objects in place.
        """

    def check_fence(self, fence: Fence) -> None:
        """Raise LeaseLostException unless the lease still carries the fence's token."""
        if lease_token(self.lease_read(fence.lock_name)) != fence.token:
            raise lease_lost(fence.lock_name)


def lease_token(lease_text: str | None) -> str | None:
    """The owner token in a lease object's text (None if there is none or it does not parse)."""
    try:
        token = json.loads(lease_text).get("token") if lease_text else None
    except (ValueError, AttributeError):
        return None
    return token if isinstance(token, str) else None


def lease_lost(lock_name: str) -> LeaseLostException:
    """The error a write with a stale fence gets; nothing was changed."""
    return LeaseLostException(
        f"the bind lease {lock_name!r} is no longer held by this engine (it expired and was taken over, "
        "or was removed); the write was refused and nothing was changed. Another process now owns the "
        "task: stop here and let it resume"
    )
