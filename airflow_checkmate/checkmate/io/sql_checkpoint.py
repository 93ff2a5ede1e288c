"""One checkpoint (writes and removals of objects, with an optional fence) as the fewest SQL round trips.

PostgreSQL: ONE statement run in autocommit, so one round trip and one commit. A CTE locks the lease
row ``FOR SHARE`` and checks its token; the DELETE and the multi-row upsert run only if it did, and the
statement returns whether the lease was held. A row lock taken by a statement lasts until it commits,
so a takeover (an UPDATE of the lease row) waits for the checkpoint and then sees it; a checkpoint
started after a takeover re-reads the lease row's committed version and changes nothing.

SQLite has no data-modifying CTEs and no row locks: ``BEGIN IMMEDIATE`` takes the database's write
lock, the lease is read, and the changes follow in the same transaction (all local calls, no network).
"""

import time

from sqlalchemy import text
from sqlalchemy.engine import Connection

from airflow_checkmate.checkmate.io.base import Fence
from airflow_checkmate.checkmate.io.checkpoint import Checkpoint
from airflow_checkmate.checkmate.names import validate_obj_name

TABLE = "checkmate_objects"

# An object written over a lease is no lease any more: its token goes too.
_UPSERT = (
    f"INSERT INTO {TABLE} (name, task_key, data, lease_token, updated_at) {{rows}} "
    "ON CONFLICT (name) DO UPDATE SET data = excluded.data, lease_token = NULL, updated_at = excluded.updated_at"
)
_LEASE_HELD = f"SELECT lease_token FROM {TABLE} WHERE name = :lock"


def _params(checkpoint: Checkpoint) -> dict[str, object]:
    """Bind parameters of the rows: ``n0, k0, d0`` ... for writes, ``r0`` ... for removals."""
    now = time.time()
    found: dict[str, object] = {"now": now}
    for i, (name, data) in enumerate(checkpoint.writes.items()):
        found.update({f"n{i}": name, f"k{i}": validate_obj_name(name)[0], f"d{i}": data})
    found.update({f"r{i}": name for i, name in enumerate(checkpoint.removals)})
    return found


def postgres_statement(checkpoint: Checkpoint, fence: Fence | None) -> str:
    """The one statement applying ``checkpoint``; it returns one row ``(lease held, rows removed)``."""
    lease = (
        f"SELECT 1 FROM {TABLE} WHERE name = :lock AND lease_token = :token FOR SHARE"
        if fence is not None
        else "SELECT 1"
    )
    parts = [f"lease AS ({lease})"]
    if checkpoint.removals:
        names = ", ".join(f":r{i}" for i in range(len(checkpoint.removals)))
        parts.append(
            f"gone AS (DELETE FROM {TABLE} WHERE name IN ({names}) AND EXISTS (SELECT 1 FROM lease) RETURNING 1)"
        )
    if checkpoint.writes:
        values = ", ".join(f"(:n{i}, :k{i}, CAST(:d{i} AS BYTEA))" for i in range(len(checkpoint.writes)))
        rows = (
            f"SELECT v.name, v.task_key, v.data, NULL, :now FROM (VALUES {values}) AS v(name, task_key, data) "
            "WHERE EXISTS (SELECT 1 FROM lease)"
        )
        parts.append(f"put AS ({_UPSERT.format(rows=rows)})")
    removed = "(SELECT count(*) FROM gone)" if checkpoint.removals else "0"
    # data-modifying CTEs run to completion whether read or not
    return f"WITH {', '.join(parts)} SELECT (SELECT count(*) FROM lease), {removed}"


def apply_postgres(conn: Connection, checkpoint: Checkpoint, fence: Fence | None) -> tuple[bool, int]:
    """Run the checkpoint's statement on an autocommit connection: (lease held, rows removed)."""
    params = _params(checkpoint)
    if fence is not None:
        params.update(lock=fence.lock_name, token=fence.token)
    row = conn.execute(text(postgres_statement(checkpoint, fence)), params).one()
    return bool(row[0]), int(row[1])


def apply_sqlite(conn: Connection, checkpoint: Checkpoint, fence: Fence | None) -> tuple[bool, int]:
    """Apply the checkpoint inside the caller's ``BEGIN IMMEDIATE`` transaction: (lease held, rows removed)."""
    if fence is not None:
        token = conn.execute(text(_LEASE_HELD), {"lock": fence.lock_name}).scalar()
        if token != fence.token:
            return False, 0
    params = _params(checkpoint)
    removed = 0
    if checkpoint.removals:
        names = ", ".join(f":r{i}" for i in range(len(checkpoint.removals)))
        removed = conn.execute(text(f"DELETE FROM {TABLE} WHERE name IN ({names})"), params).rowcount
    if checkpoint.writes:
        values = ", ".join(f"(:n{i}, :k{i}, :d{i}, NULL, :now)" for i in range(len(checkpoint.writes)))
        conn.execute(text(_UPSERT.format(rows=f"VALUES {values}")), params)
    return True, removed
