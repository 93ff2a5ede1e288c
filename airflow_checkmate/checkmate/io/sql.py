"""TaskIOSQL: a task's objects as rows of one table in SQLite or PostgreSQL.

Workers that share no disk share the database, so any of them can resume a task another started.
The bind lock is a lease row in the same table, changed only by compare-and-swap on its whole text.
A fenced write locks that lease row (``FOR SHARE`` on PostgreSQL, the database write lock on SQLite),
checks the token and writes the object in the same transaction: a takeover waits for it to commit and
then sees it, and a write after a takeover is refused.

A checkpoint (:meth:`TaskIOSQL.commit`; a single write or removal is one too) is one transaction: on
PostgreSQL one statement in autocommit, so one round trip (:mod:`.sql_checkpoint`). Reads, lease
creation and lease swaps are single statements too, one round trip each; ``read_prefix`` is one SELECT
by task key, so it sees one checkpoint, never a mix of two.
"""

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Column, Float, Index, LargeBinary, MetaData, String, Table, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from airflow_checkmate.checkmate import sqldb
from airflow_checkmate.checkmate.exceptions import PersistenceDataNotFoundException, TaskIOException
from airflow_checkmate.checkmate.io.base import DEFAULT_LEASE_SECONDS, Fence, TaskIO, lease_lost, lease_token
from airflow_checkmate.checkmate.io.checkpoint import Checkpoint
from airflow_checkmate.checkmate.io.sql_checkpoint import apply_postgres, apply_sqlite
from airflow_checkmate.checkmate.names import validate_obj_name

SCHEMA_VERSION = 1
T = TypeVar("T")

metadata = MetaData()
objects = Table(
    "checkmate_objects",
    metadata,
    Column("name", String(512), primary_key=True),
    Column("task_key", String(255), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("lease_token", String(64), nullable=True),
    Column("updated_at", Float, nullable=False),
    Index("ix_checkmate_objects_task_key", "task_key"),
)


class TaskIOSQL(TaskIO):
    """Task I/O implementation for a relational database (SQLAlchemy): ``sqlite:///`` or ``postgresql://``.

    :param base_url: the database URL; its password is hidden in ``base_url`` and every message.
    :param lease_seconds: how long a bind lease lives without a heartbeat. Leases compare wall clocks
        of the workers, so keep their clocks in sync (NTP) when they run on several hosts.
    :param durable: SQLite only: ``False`` skips fsync at commit (PostgreSQL follows its own settings).
    """

    scheme = "sql"

    def __init__(
        self, base_url: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS, durable: bool = True, **_: Any
    ) -> None:
        super().__init__(sqldb.safe_url(sqldb.parse_url(base_url)), lease_seconds=lease_seconds)
        self.engine = sqldb.get_engine(base_url, durable)
        self._reopen = (base_url, {"lease_seconds": lease_seconds, "durable": durable})
        sqldb.ensure_schema(self.engine, "objects", metadata, SCHEMA_VERSION)
        self._postgres = self.engine.dialect.name == "postgresql"
        self._insert = postgresql.insert if self._postgres else sqlite.insert
        # single statements need no transaction: on PostgreSQL autocommit saves a BEGIN and a COMMIT round trip
        self._single = self.engine.execution_options(isolation_level="AUTOCOMMIT") if self._postgres else self.engine

    def reopen_args(self) -> tuple[str, dict[str, Any]]:
        return self._reopen

    def build_url(self, obj_name: str) -> str:
        """The database URL (password hidden) with the object's name as the fragment."""
        return f"{self.base_url}#{obj_name}"

    @staticmethod
    def _key(obj_name: str) -> str:
        return validate_obj_name(obj_name)[0]

    def _fetch(self, obj_name: str) -> bytes | None:
        """The object's bytes in one statement, or None if it does not exist."""
        self._key(obj_name)
        query = select(objects.c.data).where(objects.c.name == obj_name)
        data = self._run(f"reading {self.build_url(obj_name)}", lambda conn: conn.execute(query).scalar())
        return None if data is None else bytes(data)

    def read_bytes(self, obj_name: str) -> bytes:
        data = self._fetch(obj_name)
        if data is None:
            raise PersistenceDataNotFoundException(f"stored object {self.build_url(obj_name)} does not exist")
        return data

    def exists(self, obj_name: str) -> bool:
        self._key(obj_name)
        query = select(objects.c.name).where(objects.c.name == obj_name)
        return self._run(f"looking up {self.build_url(obj_name)}", lambda conn: conn.execute(query).first()) is not None

    def list(self, prefix: str) -> list[str]:
        """Names of stored objects starting with ``prefix``; a prefix with a ``/`` reads one task's rows."""
        query = select(objects.c.name)
        if "/" in prefix:
            query = query.where(objects.c.task_key == self._key(prefix.partition("/")[0]))
        found = self._run(f"listing {self.base_url}", lambda conn: conn.execute(query).scalars().all())
        return sorted(n for n in found if n.startswith(prefix))

    def write(self, obj_name: str, data: str | bytes, *, fence: Fence | None = None) -> None:
        """Insert or replace the object's row; with a fence, only while the lease row carries its token."""
        self._apply(
            Checkpoint.of([(obj_name, data)]),
            fence,
            f"writing {self.build_url(obj_name)} (its previous version is unchanged)",
        )

    def remove(self, obj_name: str, *, fence: Fence | None = None) -> bool:
        return self._apply(Checkpoint.of([(obj_name, None)]), fence, f"removing {self.build_url(obj_name)}") > 0

    def commit(self, writes: Sequence[tuple[str, bytes | None]], *, fence: Fence | None = None) -> None:
        """Apply the checkpoint in one transaction (one statement, one round trip, on PostgreSQL)."""
        checkpoint = Checkpoint.of(writes)
        if checkpoint.writes or checkpoint.removals:
            self._apply(checkpoint, fence, f"committing a checkpoint of {len(writes)} object(s) to {self.base_url}")

    def read_prefix(self, prefix: str) -> dict[str, bytes]:
        """Every object starting with ``prefix``, from one SELECT (by task key when the prefix has a ``/``)."""
        query = select(objects.c.name, objects.c.data)
        if "/" in prefix:
            query = query.where(objects.c.task_key == self._key(prefix.partition("/")[0]))
        found = self._run(f"reading {self.base_url}#{prefix}*", lambda conn: conn.execute(query).all())
        return {name: bytes(data) for name, data in sorted(found) if name.startswith(prefix)}

    def _apply(self, checkpoint: Checkpoint, fence: Fence | None, what: str) -> int:
        """Apply a checkpoint atomically with its fence check; the number of rows removed."""
        if fence is not None:
            self._key(fence.lock_name)
        apply = apply_postgres if self._postgres else apply_sqlite
        held, removed = self._run(what, lambda conn: apply(conn, checkpoint, fence), write=True)
        if not held:
            raise lease_lost(fence.lock_name if fence is not None else "")
        return removed

    def lease_read(self, lock_name: str) -> str | None:
        data = self._fetch(lock_name)  # one statement: a lease released and retaken meanwhile reads as either
        try:
            return None if data is None else data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PersistenceDataNotFoundException(
                f"lease {self.build_url(lock_name)} is not UTF-8 text ({exc}); it was left in place"
            ) from exc

    def lease_create(self, lock_name: str, data: str) -> bool:
        values = {
            "name": lock_name,
            "task_key": self._key(lock_name),
            "data": data.encode("utf-8"),
            "lease_token": lease_token(data),
            "updated_at": time.time(),
        }
        statement = (
            self._insert(objects)
            .values(**values)
            .on_conflict_do_nothing(index_elements=[objects.c.name])
            .returning(objects.c.name)
        )
        what = f"creating lease {self.build_url(lock_name)}"
        if self._run(what, lambda conn: conn.execute(statement).first(), write=True) is not None:
            return True
        # a create retried after a dropped connection finds its own lease (its token is unique)
        return self._fetch(lock_name) == data.encode("utf-8")

    def lease_swap(self, lock_name: str, expected: str, new: str | None) -> bool:
        self._key(lock_name)
        match = (objects.c.name == lock_name) & (objects.c.data == expected.encode("utf-8"))
        if new is None:
            statement: Any = delete(objects).where(match)
        else:
            statement = (
                update(objects)
                .where(match)
                .values(data=new.encode("utf-8"), lease_token=lease_token(new), updated_at=time.time())
            )
        what = f"changing lease {self.build_url(lock_name)}"
        if self._run(what, lambda conn: conn.execute(statement).rowcount, write=True) == 1:
            return True
        # a swap retried after a dropped connection finds its own new text (its token and heartbeat are unique)
        return new is not None and self._fetch(lock_name) == new.encode("utf-8")

    def check_fence(self, fence: Fence) -> None:
        self._key(fence.lock_name)
        super().check_fence(fence)  # one SELECT: a check is a moment's answer; the writes carry their own

    def _run(self, what: str, call: Callable[[Connection], T], *, write: bool = False) -> T:
        """Run one statement (a write: one transaction); once more if the database dropped the connection.

        Pooled connections are pinged only after idling (:func:`sqldb.get_engine`), so a server restart
        shows up here. Every statement of this class may run twice: reads and checkpoints are idempotent,
        and the lease methods recognise their own landed change.
        """
        for attempt in (1, 2):
            try:
                with sqldb.db_errors(what), self._connect(write) as conn:
                    return call(conn)
            except TaskIOException as exc:
                dropped = isinstance(exc.__cause__, DBAPIError) and exc.__cause__.connection_invalidated
                if attempt == 2 or not dropped:
                    raise
        raise AssertionError("unreachable")

    def _connect(self, write: bool) -> "contextlib.AbstractContextManager[Connection]":
        """Autocommit on PostgreSQL (one round trip a statement); a ``BEGIN IMMEDIATE`` write on SQLite."""
        return sqldb.write_tx(self.engine) if write and not self._postgres else self._single.connect()
