"""A fresh PostgreSQL database for one campaign, created on the server and dropped when the campaign ends.

The server comes from ``--postgres-url`` or CHECKMATE_RELIABILITY_POSTGRES_URL, then
CHECKMATE_TEST_POSTGRES_URL (what ``.ci/run`` sets). Campaigns never write into the database the URL
names: a database of their own keeps the server as they found it, even after a failed run.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

ENV_VARS = ("CHECKMATE_RELIABILITY_POSTGRES_URL", "CHECKMATE_TEST_POSTGRES_URL")


def server_url(explicit: str | None = None) -> str | None:
    """The PostgreSQL server to use, or None when none is configured."""
    if explicit:
        return explicit
    return next((os.environ[v] for v in ENV_VARS if os.environ.get(v)), None)


@contextlib.contextmanager
def fresh_database(server: str, prefix: str = "checkmate_rel") -> Iterator[str]:
    """Yield the URL of a new, empty database on ``server``; it is dropped (even if in use) on exit."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from airflow_checkmate.checkmate import sqldb

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(sqldb.parse_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
