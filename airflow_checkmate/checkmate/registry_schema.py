"""The task registry's tables, their indexes and the migrations between schema versions.

Listing is what the registry is for, so every common filter has an index that returns rows already in
the listing's order (newest update first) and lets a query stop after ``limit`` rows, also over
100,000 tasks: by status through ``(cleaned, status, updated_at)``, by tag (a DAG is the tag
``dag:<dag_id>``) through ``(tag, cleaned, updated_at)`` on the tag rows, which carry a copy of their
task's ``cleaned`` and ``updated_at`` for that reason (the registry writes both in one transaction).

Version 2 added those copies and indexes; :data:`MIGRATIONS` brings a version 1 database up to it.
"""

import datetime as dt
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    false,
    text,
)
from sqlalchemy.engine import Connection

from airflow_checkmate.checkmate.names import TASK_ID_MAX_LENGTH
from airflow_checkmate.checkmate.sqldb import Migration

SCHEMA_VERSION = 2
LABEL_MAX_LENGTH = 100


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp on every database (SQLite stores it without the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return None if value is None else value.astimezone(dt.timezone.utc)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


metadata = MetaData()
tasks = Table(
    "checkmate_tasks",
    metadata,
    Column("task_id", String(TASK_ID_MAX_LENGTH), primary_key=True),
    Column("base_url", String(1024), nullable=False),
    Column("checkmate_factory", String(512), nullable=True),
    Column("factory_kwargs", Text, nullable=False, default="{}"),
    Column("status", String(16), nullable=False),
    Column("queue", String(LABEL_MAX_LENGTH), nullable=False),
    Column("description", Text, nullable=True),
    Column("cleaned", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("lock_holder", String(512), nullable=True),
    Column("stages_done", Integer, nullable=False, default=0),
    Column("stages_total", Integer, nullable=False, default=0),
    Column("current_stage", String(200), nullable=True),
    Index("ix_checkmate_tasks_listing", "cleaned", "queue", "status", "updated_at"),
    Index("ix_checkmate_tasks_status", "cleaned", "status", "updated_at"),
    Index("ix_checkmate_tasks_updated", "updated_at"),
    Index("ix_checkmate_tasks_created", "created_at"),
)
task_tags = Table(
    "checkmate_task_tags",
    metadata,
    Column("tag", String(LABEL_MAX_LENGTH), primary_key=True),
    Column("task_id", String(TASK_ID_MAX_LENGTH), primary_key=True),
    # copies of the task row's values, so a tag's newest tasks come straight from one index
    Column("cleaned", Boolean, nullable=False, server_default=false()),
    Column("updated_at", UTCDateTime, nullable=True),  # nullable: a version 1 table gains it by ALTER TABLE
    Index("ix_checkmate_task_tags_task", "task_id"),
    Index("ix_checkmate_task_tags_listing", "tag", "cleaned", "updated_at"),
)

#: The version 2 indexes (created by the migration in a version 1 database).
_V2_INDEXES = ("ix_checkmate_tasks_status", "ix_checkmate_task_tags_listing")


def _to_v2(conn: Connection) -> None:
    """Add the tag rows' copies of ``cleaned`` and ``updated_at``, fill them in, add the listing indexes."""
    stamp = task_tags.c.updated_at.type.compile(dialect=conn.dialect)
    conn.execute(text("ALTER TABLE checkmate_task_tags ADD COLUMN cleaned BOOLEAN NOT NULL DEFAULT false"))
    conn.execute(text(f"ALTER TABLE checkmate_task_tags ADD COLUMN updated_at {stamp}"))
    conn.execute(
        text(
            "UPDATE checkmate_task_tags SET "
            "cleaned = (SELECT t.cleaned FROM checkmate_tasks t WHERE t.task_id = checkmate_task_tags.task_id), "
            "updated_at = (SELECT t.updated_at FROM checkmate_tasks t WHERE t.task_id = checkmate_task_tags.task_id) "
            "WHERE task_id IN (SELECT task_id FROM checkmate_tasks)"
        )
    )
    for table in (tasks, task_tags):
        for index in table.indexes:
            if index.name in _V2_INDEXES:
                index.create(conn, checkfirst=True)


MIGRATIONS: tuple[Migration, ...] = ((2, _to_v2),)
