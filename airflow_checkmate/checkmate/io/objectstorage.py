"""TaskIOObjectStorage: a task's objects in object storage, through Airflow's ObjectStoragePath (fsspec).

Every object is written whole with one PUT (atomic on S3; never temp-and-rename). Listing, existence
and removal use the store's prefix listing; nothing assumes folders. Locking needs conditional writes,
which S3 has (see :mod:`.conditions`); other stores work unlocked (``no_lock=True``) and refuse a lock.

Fencing on S3, exactly: every fenced checkpoint (a ``commit``; a single write or removal is one too)
(1) reads the lease and refuses if it no longer carries the holder's token, then (2) writes each object
conditionally on the ETag this holder last saw for it (``If-None-Match: *`` for one it saw absent). A
holder whose lease was taken over is therefore refused at its next checkpoint, except for one already
past step (1) when the takeover happened; each of its writes lands only if the new holder has not
written that object since, and the new holder's own next write of it then fails its condition
(LeaseLostException) instead of silently overwriting it. No write is ever lost without an error: two
holders never both succeed in writing over the same version. S3 has no multi-object transaction: the
objects of a checkpoint are written one by one in the caller's order, so a crash leaves a prefix.

Requests: a checkpoint is 1 GET (the lease) + 1 conditional PUT or DELETE per object; an object this
process has not read, written or seen in a listing of its prefix costs 1 GET more (after a bind, none
does). A lease renewal is 2 (GET, PUT ``If-Match`` that version); taking a free lease 1 PUT, releasing
it 1 DELETE; reading a task (``read_prefix``, at bind) 1 LIST + 1 GET per object.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

from airflow_checkmate.checkmate.exceptions import (
    LeaseLostException,
    PersistenceDataNotFoundException,
    TaskIOException,
)
from airflow_checkmate.checkmate.io.base import DEFAULT_LEASE_SECONDS, Fence, TaskIO
from airflow_checkmate.checkmate.io.checkpoint import Checkpoint
from airflow_checkmate.checkmate.io.conditions import SINGLE_PUT, STORE_ERRORS, ConditionFailed, conditional_writes
from airflow_checkmate.checkmate.io.lease_object import LeaseObject
from airflow_checkmate.checkmate.io.object_store import open_object_store
from airflow_checkmate.checkmate.names import validate_obj_name

_UNKNOWN = object()


class TaskIOObjectStorage(TaskIO):
    """Task I/O implementation for object storage: ``s3://bucket/prefix`` (and gs://, abfs:// unlocked).

    :param base_url: the store and prefix the task folders go under.
    :param conn_id: the Airflow connection with the store's credentials (e.g. an ``aws`` connection,
        whose extra may carry ``endpoint_url``); None uses the provider's default.
    :param lease_seconds: how long a bind lease lives without a heartbeat (wall clocks are compared).
    """

    scheme = "objectstorage"

    def __init__(
        self, base_url: str, *, conn_id: str | None = None, lease_seconds: float = DEFAULT_LEASE_SECONDS, **_: Any
    ) -> None:
        super().__init__(base_url.rstrip("/"), lease_seconds=lease_seconds)
        self.root = open_object_store(self.base_url, conn_id)
        self.fs = self.root.fs
        self.conditions = conditional_writes(self.root.protocol, self.fs)
        self._etags: dict[str, str | None] = {}  # last ETag seen per object name; None: seen absent
        self._listed: set[str] = set()  # prefixes listed whole: an object under one and not in _etags was absent
        self._lease = LeaseObject(
            self.conditions, self._path, lambda lock: partial(self._errors, f"the lease {self.build_url(lock)}")
        )

    def _path(self, obj_name: str) -> str:
        validate_obj_name(obj_name)
        return f"{self.root.path.rstrip('/')}/{obj_name}"

    def build_url(self, obj_name: str) -> str:
        return f"{self.base_url}/{obj_name}"

    def _errors(self, what: str, exc: Exception) -> TaskIOException:
        return TaskIOException(f"{what} failed: {type(exc).__name__}: {exc}")

    def read_bytes(self, obj_name: str) -> bytes:
        path = self._path(obj_name)
        found: tuple[bytes, str | None] | None
        try:
            if self.conditions.available:  # bytes and ETag from one request
                found = self.conditions.read(path)
            else:
                self.fs.invalidate_cache(path)
                found = (self.fs.cat_file(path), None)
        except FileNotFoundError:
            found = None
        except STORE_ERRORS as exc:  # the store failed, not the object: TaskIOException, as for writes
            raise self._errors(f"reading {self.build_url(obj_name)}", exc) from exc
        if found is None:
            self._etags[obj_name] = None
            raise PersistenceDataNotFoundException(f"stored object {self.build_url(obj_name)} does not exist")
        data, etag = found
        if etag is not None:
            self._etags[obj_name] = etag
        return bytes(data)

    def exists(self, obj_name: str) -> bool:
        path = self._path(obj_name)
        self.fs.invalidate_cache(path)
        try:
            return bool(self.fs.info(path).get("type", "file") == "file")
        except FileNotFoundError:
            return False
        except STORE_ERRORS as exc:
            raise self._errors(f"looking up {self.build_url(obj_name)}", exc) from exc

    def list(self, prefix: str) -> list[str]:
        """Names of the objects under the base that start with ``prefix`` (one prefix listing)."""
        folder, _, _ = prefix.rpartition("/")
        root = self.root.path.rstrip("/")
        start = f"{root}/{folder}" if folder else root
        if folder:
            validate_obj_name(folder)
        self.fs.invalidate_cache()
        try:
            found = self.fs.find(start, detail=True)
        except FileNotFoundError:
            found = {}
        except STORE_ERRORS as exc:
            raise self._errors(f"listing {self.base_url}/{prefix}", exc) from exc
        names = []
        base = root.lstrip("/") + "/"
        for path, info in found.items():
            name = path.lstrip("/")[len(base) :] if path.lstrip("/").startswith(base) else ""
            if name.startswith(prefix) and name and info.get("type", "file") == "file":
                names.append(name)
                if info.get("ETag"):
                    self._etags.setdefault(name, info["ETag"])
        self._listed.add(prefix)
        return sorted(names)

    def write(self, obj_name: str, data: str | bytes, *, fence: Fence | None = None) -> None:
        """Replace the object with one PUT; with a fence, only while the lease holds and the object is unchanged."""
        self._path(obj_name)
        if fence is not None:
            self.check_fence(fence)
        self._write(obj_name, data.encode("utf-8") if isinstance(data, str) else data, fenced=fence is not None)

    def commit(self, writes: Sequence[tuple[str, bytes | None]], *, fence: Fence | None = None) -> None:
        """One checkpoint: with a fence, one GET of the lease, then per object in order one conditional PUT
        or DELETE (plus one GET for an object this process has not seen). Not atomic: a crash or a refusal
        leaves a prefix applied, which the caller's order makes a valid task.
        """
        checkpoint = Checkpoint.of(writes)
        if fence is not None and checkpoint.changes:
            self.check_fence(fence)
        for name, data in checkpoint.changes.items():
            if data is None:
                self._remove(name, fenced=fence is not None)
            else:
                self._write(name, data, fenced=fence is not None)

    def _write(self, obj_name: str, payload: bytes, *, fenced: bool) -> None:
        """One PUT of the object; when fenced (the lease was just checked), conditional on the ETag last seen."""
        path = self._path(obj_name)
        try:
            if not fenced:
                self._put(path, payload)
                self._etags.pop(obj_name, None)
                return
            seen = self._seen(obj_name, path)
            etag = (
                self.conditions.create(path, payload) if seen is None else self.conditions.replace(path, payload, seen)
            )
            self._etags[obj_name] = etag
        except ConditionFailed as exc:
            raise self._changed(obj_name) from exc
        except STORE_ERRORS as exc:
            raise self._errors(f"writing {self.build_url(obj_name)} (its previous version is unchanged)", exc) from exc
        finally:
            self.fs.invalidate_cache(path)

    def _put(self, path: str, payload: bytes) -> None:
        try:
            self.fs.pipe_file(path, payload, chunksize=SINGLE_PUT)
        except FileNotFoundError:
            if self.root.protocol not in ("file", "local"):
                raise  # a missing bucket: never create one by mistake
            self.fs.makedirs(path.rpartition("/")[0], exist_ok=True)  # real folders: make the task's
            self.fs.pipe_file(path, payload, chunksize=SINGLE_PUT)

    def _seen(self, obj_name: str, path: str) -> str | None:
        """The ETag this process last saw for the object (looked up now if it never saw it)."""
        seen = self._etags.get(obj_name, _UNKNOWN)
        if seen is _UNKNOWN and any(obj_name.startswith(p) for p in self._listed):
            return None  # a listing of its prefix (the task's, at bind) did not show it: absent then
        if seen is _UNKNOWN:
            found = self.conditions.read(path)
            seen = found[1] if found else None
        return seen  # type: ignore[return-value]

    def _changed(self, obj_name: str) -> LeaseLostException:
        self._etags.pop(obj_name, None)
        return LeaseLostException(
            f"stored object {self.build_url(obj_name)} changed since this engine last read or wrote it: another "
            "process took over the task and wrote it. The write was refused and nothing was changed; stop here "
            "and let the task resume from what is stored"
        )

    def remove(self, obj_name: str, *, fence: Fence | None = None) -> bool:
        self._path(obj_name)
        if fence is not None:
            self.check_fence(fence)
        return self._remove(obj_name, fenced=fence is not None)

    def _remove(self, obj_name: str, *, fenced: bool) -> bool:
        """Delete the object; when fenced, conditional on the ETag last seen. False if it did not exist."""
        path = self._path(obj_name)
        try:
            if not fenced:
                self.fs.invalidate_cache(path)
                if not self.fs.isfile(path):
                    return False
                self.fs.rm_file(path)
                self._etags[obj_name] = None
                return True
            seen = self._etags.get(obj_name)
            if seen is None:  # never seen, or seen absent and maybe written since (a cancel request): look
                found = self.conditions.read(path)
                if found is None:
                    return False
                seen = found[1]
            self.conditions.delete(path, seen)
            self._etags[obj_name] = None
            return True
        except ConditionFailed as exc:
            raise self._changed(obj_name) from exc
        except FileNotFoundError:
            return False
        except STORE_ERRORS as exc:
            raise self._errors(f"removing {self.build_url(obj_name)}", exc) from exc
        finally:
            self.fs.invalidate_cache(path)

    def lease_read(self, lock_name: str) -> str | None:
        return self._lease.read(lock_name)

    def lease_create(self, lock_name: str, data: str) -> bool:
        return self._lease.create(lock_name, data)

    def lease_swap(self, lock_name: str, expected: str, new: str | None) -> bool:
        return self._lease.swap(lock_name, expected, new)

    def check_fence(self, fence: Fence) -> None:
        validate_obj_name(fence.lock_name)
        super().check_fence(fence)
