"""A file store's objects read and written from outside the engine, as a person, a bug or a crash would
leave them: a task's objects through its folder's journal, its lease as the plain file it is.

Every call opens a fresh TaskIOFile (no cache carried over), so what it returns is what is on disk now.
"""

from __future__ import annotations

from pathlib import Path

from airflow_checkmate.checkmate import TaskIOFile


def get_object(base: Path, obj_name: str) -> bytes | None:
    """A stored object's bytes (None if absent)."""
    io = TaskIOFile(base, durable=False)
    return io.read_bytes(obj_name) if io.exists(obj_name) else None


def put_object(base: Path, obj_name: str, data: bytes | None) -> None:
    """Write (or with None remove) a stored object behind the engine's back."""
    if obj_name.endswith(".lock"):
        path = base / obj_name
        path.write_bytes(data) if data is not None else path.unlink()
    else:
        TaskIOFile(base, durable=False).commit([(obj_name, data)])


def objects_under(base: Path, prefix: str = "") -> dict[str, bytes]:
    """Every stored object whose name starts with ``prefix``: name -> bytes."""
    return TaskIOFile(base, durable=False).read_prefix(prefix)


def files_under(base: Path) -> list[str]:
    """The names of the stored objects under ``base``, and of any temp file left."""
    temps = [p.relative_to(base).as_posix() for p in base.rglob("*.tmp")]
    return sorted([*TaskIOFile(base, durable=False).list(""), *temps])
