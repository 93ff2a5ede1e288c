"""TaskIOSQL: a task's objects as rows of one table in SQLite or PostgreSQL.

Workers that share no disk share the database, so any of them can resume a task another started.
The bind lock is a lease row in the same table, changed only by compare-and-swap on its whole text.
A fenced write locks that lease row (``FOR SHARE`` on PostgreSQL, the database write lock on SQLite),
checks the token and writes the object in the same transaction: a takeover waits for it to commit and
then sees it, and a write after a takeover is refused.
"""

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Column, Float, Index, LargeBinary, MetaData, String, Table, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from airflow_checkmate.checkmate import sqldb
from airflow_checkmate.checkmate.exceptions import PersistenceDataNotFoundException
from airflow_checkmate.checkmate.io.base import DEFAULT_LEASE_SECONDS, Fence, TaskIO, lease_lost, lease_token
from airflow_checkmate.checkmate.names import validate_obj_name

SCHEMA_VERSION = 1

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
        self._insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert

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
        with sqldb.db_errors(f"reading {self.build_url(obj_name)}"), sqldb.read_conn(self.engine) as conn:
            data = conn.execute(select(objects.c.data).where(objects.c.name == obj_name)).scalar()
        return None if data is None else bytes(data)

    def read_bytes(self, obj_name: str) -> bytes:
        data = self._fetch(obj_name)
        if data is None:
            raise PersistenceDataNotFoundException(f"stored object {self.build_url(obj_name)} does not exist")
        return data

    def exists(self, obj_name: str) -> bool:
        self._key(obj_name)
        with sqldb.db_errors(f"looking up {self.build_url(obj_name)}"), sqldb.read_conn(self.engine) as conn:
            return conn.execute(select(objects.c.name).where(objects.c.name == obj_name)).first() is not None

    def list(self, prefix: str) -> list[str]:
        """Names of stored objects starting with ``prefix``; a prefix with a ``/`` reads one task's rows."""
        query = select(objects.c.name)
        if "/" in prefix:
            query = query.where(objects.c.task_key == self._key(prefix.partition("/")[0]))
        with sqldb.db_errors(f"listing {self.base_url}"), sqldb.read_conn(self.engine) as conn:
            found = conn.execute(query).scalars().all()
        return sorted(n for n in found if n.startswith(prefix))

    def write(self, obj_name: str, data: str | bytes, *, fence: Fence | None = None) -> None:
        """Insert or replace the object's row; with a fence, only while the lease row carries its token."""
        key = self._key(obj_name)
        payload = data.encode("utf-8") if isinstance(data, str) else data
        values = {"name": obj_name, "task_key": key, "data": payload, "lease_token": None, "updated_at": time.time()}
        statement = self._insert(objects).values(**values)
        statement = statement.on_conflict_do_update(
            index_elements=[objects.c.name],
            set_={  # an object written over a lease is no lease any more: its token goes too
                "data": statement.excluded.data,
                "lease_token": statement.excluded.lease_token,
                "updated_at": statement.excluded.updated_at,
            },
        )
        with self._fenced_tx(fence, f"writing {self.build_url(obj_name)} (its previous version is unchanged)") as conn:
            conn.execute(statement)

    def remove(self, obj_name: str, *, fence: Fence | None = None) -> bool:
        self._key(obj_name)
        with self._fenced_tx(fence, f"removing {self.build_url(obj_name)}") as conn:
            return conn.execute(delete(objects).where(objects.c.name == obj_name)).rowcount > 0

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
        with sqldb.db_errors(f"creating lease {self.build_url(lock_name)}"), sqldb.write_tx(self.engine) as conn:
            return conn.execute(statement).first() is not None

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
        with sqldb.db_errors(f"changing lease {self.build_url(lock_name)}"), sqldb.write_tx(self.engine) as conn:
            return bool(conn.execute(statement).rowcount == 1)

    def check_fence(self, fence: Fence) -> None:
        with self._fenced_tx(fence, f"checking lease {self.build_url(fence.lock_name)}"):
            pass

    @contextlib.contextmanager
    def _fenced_tx(self, fence: Fence | None, what: str) -> Iterator[Connection]:
        """A write transaction that, with a fence, first locks the lease row and checks it carries the token.

        The row lock lasts until the transaction ends, so a takeover waits for the write and then sees it.
        """
        if fence is not None:
            self._key(fence.lock_name)
        with sqldb.db_errors(what), sqldb.write_tx(self.engine) as conn:
            if fence is not None:
                query = select(objects.c.lease_token).where(objects.c.name == fence.lock_name)
                if conn.execute(query.with_for_update(read=True)).scalar() != fence.token:
                    raise lease_lost(fence.lock_name)
            yield conn
