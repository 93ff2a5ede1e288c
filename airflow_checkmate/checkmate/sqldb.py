"""SQLAlchemy plumbing shared by the database storage backend and the task registry.

One SQLAlchemy engine per process and URL. SQLite runs in WAL mode with ``synchronous=FULL`` (a commit
survives power loss) and takes its write lock at ``BEGIN IMMEDIATE``, so a read-check-write transaction
never interleaves with another writer; reads run as single autocommit statements. PostgreSQL uses
READ COMMITTED transactions and row locks (the task storage runs single statements in autocommit), and a
pooled connection is pinged only after it sat idle, not at every checkout. Every schema is versioned in
``checkmate_schema``.
"""

import contextlib
import importlib.util
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, event, select, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError, NoSuchModuleError, SQLAlchemyError

from airflow_checkmate.checkmate.exceptions import TaskEngineException, TaskIOException

SCHEMA_TABLE = "checkmate_schema"
PING_AFTER_IDLE = 1.0  # seconds a pooled PostgreSQL connection may idle before it is pinged at checkout
_IDLE_SINCE = "checkmate_idle_since"
_WRITE = "checkmate_write"
_engines: dict[tuple[int, str, bool], Engine] = {}
_schemas: set[tuple[int, str, str]] = set()
_mutex = threading.Lock()

#: One migration step: (version it produces, function run inside the schema transaction).
Migration = tuple[int, Callable[[Connection], None]]


def parse_url(url: str) -> URL:
    """The SQLAlchemy URL of a supported database (``sqlite:///path``, ``postgresql://...``)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise TaskEngineException(f"not a database URL: {safe_url(url)!r} ({exc})") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise TaskEngineException(
            f"database URL {safe_url(url)!r}: CheckMate supports sqlite:///path and postgresql://..., not {backend!r}"
        )
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise TaskEngineException(
            f"database URL {url!r} names no file; use sqlite:////absolute/path.db (an in-memory database "
            "would lose every task when the process ends)"
        )
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername=f"postgresql+{_postgres_driver()}")
    return parsed


def _postgres_driver() -> str:
    """psycopg (3) when installed, else psycopg2 (what Airflow's postgres provider brings)."""
    for module in ("psycopg", "psycopg2"):
        if importlib.util.find_spec(module) is not None:
            return module
    raise TaskIOException(
        "no PostgreSQL driver is installed: install airflow-provider-checkmate[postgres] (psycopg), or psycopg2"
    )


def safe_url(url: str | URL) -> str:
    """The URL with its password hidden, for logs, messages and stored rows."""
    try:
        return (url if isinstance(url, URL) else make_url(url)).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def get_engine(url: str, durable: bool = True) -> Engine:
    """The process's SQLAlchemy engine for ``url`` (created on first use)."""
    key = (os.getpid(), url, durable)
    with _mutex:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = _create(parse_url(url), durable)
    return engine


def _create(url: URL, durable: bool) -> Engine:
    try:
        if url.get_backend_name() == "postgresql":
            engine = create_engine(url, pool_size=2, max_overflow=8)
            _ping_when_idle(engine)
            return engine
        database = Path(str(url.database)).expanduser()
        database.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        engine = create_engine(url.set(database=str(database)), connect_args={"timeout": 60})
    except (NoSuchModuleError, ImportError) as exc:
        raise TaskIOException(
            f"no driver for {safe_url(url)}: {exc}. For PostgreSQL install airflow-provider-checkmate[postgres]"
        ) from exc
    except OSError as exc:
        raise TaskIOException(f"cannot create the SQLite database {url.database}: {exc}") from exc
    synchronous = "FULL" if durable else "OFF"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver's own BEGIN handling off: we issue BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_WRITE):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection is alive before use only if it sat idle for ``PING_AFTER_IDLE`` seconds.

    A ping on every checkout (``pool_pre_ping``) is a round trip per statement, as much as the statement
    itself on a busy task; a connection used a moment ago is alive. A dead one is replaced by the pool.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get(_IDLE_SINCE, 0.0) < PING_AFTER_IDLE:
            return
        try:
            cursor = dbapi_conn.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            dbapi_conn.rollback()  # the ping may have opened a transaction: leave the connection idle
        except Exception as exc:  # any failure of a trivial statement means this connection is unusable
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


@contextlib.contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A write transaction: committed on success, rolled back on any exception."""
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE: True})
        with conn.begin():
            yield conn


@contextlib.contextmanager
def read_conn(engine: Engine) -> Iterator[Connection]:
    """A connection for reads (autocommit statements on SQLite)."""
    with engine.connect() as conn:
        yield conn


@contextlib.contextmanager
def db_errors(what: str) -> Iterator[None]:
    """Turn a database error into TaskIOException naming what failed (the transaction was rolled back)."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise TaskIOException(f"{what} failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc


_schema_meta = MetaData()
_schema_table = Table(
    SCHEMA_TABLE,
    _schema_meta,
    Column("component", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
)


def ensure_schema(
    engine: Engine, component: str, metadata: MetaData, version: int, migrations: tuple[Migration, ...] = ()
) -> None:
    """Create ``component``'s tables on first use, or migrate them up to ``version``; once per process.

    Refuses a database whose schema is newer than this code reads, so an old worker never writes rows
    a newer one laid out differently.
    """
    key = (os.getpid(), str(engine.url), component)
    if key in _schemas:
        return
    with db_errors(f"preparing the {component} tables in {safe_url(engine.url)}"), write_tx(engine) as conn:
        if conn.dialect.name == "postgresql":  # concurrent first users: one creates, the others wait
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": zlib.crc32(b"checkmate_schema")})
        _schema_meta.create_all(conn, checkfirst=True)
        found = conn.execute(select(_schema_table.c.version).where(_schema_table.c.component == component)).scalar()
        if found is None:
            metadata.create_all(conn, checkfirst=True)
            conn.execute(_schema_table.insert().values(component=component, version=version))
        elif found > version:
            raise TaskEngineException(
                f"the {component} tables in {safe_url(engine.url)} have schema version {found}; this "
                f"CheckMate reads version {version}. Upgrade airflow-provider-checkmate on this machine"
            )
        elif found < version:
            for step_version, step in migrations:
                if found < step_version <= version:
                    step(conn)
            conn.execute(_schema_table.update().where(_schema_table.c.component == component).values(version=version))
    _schemas.add(key)
