"""Conditional writes of an object store: what the bind lease and fenced writes need, one policy per store.

S3 has them (``If-None-Match: *`` to create only if absent, ``If-Match: <ETag>`` to replace or delete
only the version one has seen). A store without them gets :class:`NoConditionalWrites`, which refuses
locking with an error naming the alternatives: it never runs unlocked silently.
"""

from typing import Any

from fsspec.asyn import sync

from airflow_checkmate.checkmate.exceptions import TaskIOException

try:  # botocore's own errors (no endpoint, no credentials) are not OSErrors
    from botocore.exceptions import BotoCoreError

    STORE_ERRORS: tuple[type[Exception], ...] = (OSError, BotoCoreError)
except ImportError:  # pragma: no cover - without the s3 extra there is no botocore
    STORE_ERRORS = (OSError,)

#: Schemes whose fsspec filesystem is s3fs.
S3_SCHEMES = frozenset({"s3", "s3a", "s3n"})
SINGLE_PUT = 5 * 2**30  # S3's limit for one PUT; below it s3fs never splits a write into parts


class ConditionFailed(Exception):
    """The object was not in the state the condition asked for (HTTP 412, or 409 on a concurrent race)."""


class ConditionalWrites:
    """Create-if-absent, replace-if-unchanged and delete-if-unchanged on one store, keyed by ETag."""

    available = True

    def read(self, path: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag from one request, or None if it does not exist."""
        raise NotImplementedError

    def create(self, path: str, data: bytes) -> str:
        """Write only if absent; the new ETag. Raises ConditionFailed if the object exists."""
        raise NotImplementedError

    def replace(self, path: str, data: bytes, etag: str) -> str:
        """Write only if the object still has ``etag``; the new ETag. Raises ConditionFailed otherwise."""
        raise NotImplementedError

    def delete(self, path: str, etag: str) -> None:
        """Delete only if the object still has ``etag``. Raises ConditionFailed otherwise."""
        raise NotImplementedError


class NoConditionalWrites(ConditionalWrites):
    """A store without conditional writes: usable without a lock, refused for locking."""

    available = False

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme

    def _refused(self) -> TaskIOException:
        return TaskIOException(
            f"CheckMate cannot lock tasks on {self.scheme}:// storage: it has no conditional writes, so two "
            "workers could both take a task. Keep the stage state on s3://, or in a database "
            "(base_url postgresql://...) whose lease row locks it, or bind with no_lock=True where one "
            "process at a time runs each task"
        )

    def read(self, path: str) -> tuple[bytes, str] | None:
        raise self._refused()

    def create(self, path: str, data: bytes) -> str:
        raise self._refused()

    def replace(self, path: str, data: bytes, etag: str) -> str:
        raise self._refused()

    def delete(self, path: str, etag: str) -> None:
        raise self._refused()


class S3ConditionalWrites(ConditionalWrites):
    """S3's conditional requests, sent through the s3fs filesystem that ObjectStoragePath opened."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        bucket, key, _ = self.fs.split_path(path)
        try:
            return sync(self.fs.loop, self._request, method, bucket, key, kwargs)
        except FileNotFoundError:
            raise
        except OSError as exc:
            cause = getattr(exc, "__cause__", None)
            code = getattr(cause, "response", {}).get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or isinstance(exc, FileExistsError):
                raise ConditionFailed(f"{method} {path}: {code or exc}") from exc
            raise
        finally:
            self.fs.invalidate_cache(path)

    async def _request(self, method: str, bucket: str, key: str, kwargs: dict[str, Any]) -> Any:
        response = await self.fs._call_s3(method, Bucket=bucket, Key=key, **kwargs)
        if "Body" in response:  # a streamed body must be read in the loop that opened it
            async with response["Body"] as body:
                response["Body"] = await body.read()
        return response

    def read(self, path: str) -> tuple[bytes, str] | None:
        try:
            response = self._call("get_object", path)
        except FileNotFoundError:
            return None
        return bytes(response["Body"]), str(response["ETag"])

    def create(self, path: str, data: bytes) -> str:
        return str(self._call("put_object", path, Body=data, IfNoneMatch="*")["ETag"])

    def replace(self, path: str, data: bytes, etag: str) -> str:
        try:
            return str(self._call("put_object", path, Body=data, IfMatch=etag)["ETag"])
        except FileNotFoundError as exc:
            raise ConditionFailed(f"put_object {path}: it was removed") from exc

    def delete(self, path: str, etag: str) -> None:
        try:
            self._call("delete_object", path, IfMatch=etag)
        except FileNotFoundError as exc:
            raise ConditionFailed(f"delete_object {path}: it was removed") from exc


def conditional_writes(scheme: str, fs: Any) -> ConditionalWrites:
    """The policy for a store, by scheme."""
    return S3ConditionalWrites(fs) if scheme in S3_SCHEMES else NoConditionalWrites(scheme)
