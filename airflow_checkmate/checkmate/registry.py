"""TaskRegistry: one relational row per managed task, so tasks can be listed, found and acted on.

The row is an index, not the source of truth: a task's stage state lives in its storage (TaskIO).
It records where that storage is, the ``checkmate_factory`` path that rebuilds the task, its status,
queue, tags, description, the cleaned flag, created/updated timestamps (UTC) and the lock holder.
"""

import datetime as dt
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel
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
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, RowMapping

from airflow_checkmate.checkmate import sqldb
from airflow_checkmate.checkmate.exceptions import TaskEngineException
from airflow_checkmate.checkmate.names import TASK_ID_MAX_LENGTH, validate_task_id
from airflow_checkmate.checkmate.status import StageStatus

SCHEMA_VERSION = 1
DEFAULT_QUEUE_NAME = "default"
LABEL_MAX_LENGTH = 100
_LABEL_RE = re.compile(r"[A-Za-z0-9._:=/@+-]+")
SORT_KEYS = ("task_id", "status", "queue", "created_at", "updated_at")


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
    Index("ix_checkmate_tasks_updated", "updated_at"),
    Index("ix_checkmate_tasks_created", "created_at"),
)
task_tags = Table(
    "checkmate_task_tags",
    metadata,
    Column("tag", String(LABEL_MAX_LENGTH), primary_key=True),
    Column("task_id", String(TASK_ID_MAX_LENGTH), primary_key=True),
    Index("ix_checkmate_task_tags_task", "task_id"),
)


class TaskRecord(BaseModel):
    """A registry row."""

    task_id: str
    base_url: str
    checkmate_factory: str | None = None
    factory_kwargs: dict[str, Any] = {}
    status: StageStatus
    queue: str = DEFAULT_QUEUE_NAME
    tags: list[str] = []
    description: str | None = None
    cleaned: bool = False
    created_at: dt.datetime
    updated_at: dt.datetime
    lock_holder: str | None = None
    stages_done: int = 0
    stages_total: int = 0
    current_stage: str | None = None


def validate_label(kind: str, value: object) -> str:
    """A queue name or tag: 1-100 of letters, digits and ``._:=/@+-``."""
    if not isinstance(value, str) or not _LABEL_RE.fullmatch(value) or len(value) > LABEL_MAX_LENGTH:
        raise TaskEngineException(
            f"invalid {kind} {str(value)[:80]!r}: use 1-{LABEL_MAX_LENGTH} letters, digits or any of ._:=/@+-"
        )
    return value


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class TaskRegistry:
    """The managed-task registry in a SQLite or PostgreSQL database (tables created on first use).

    :param url: ``sqlite:////path/registry.db`` or ``postgresql://user@host/db``.
    """

    def __init__(self, url: str, *, durable: bool = True) -> None:
        self.url = sqldb.safe_url(sqldb.parse_url(url))
        self.engine = sqldb.get_engine(url, durable)
        sqldb.ensure_schema(self.engine, "registry", metadata, SCHEMA_VERSION)

    def __repr__(self) -> str:
        return f"TaskRegistry({self.url!r})"

    def _errors(self, what: str) -> Any:
        return sqldb.db_errors(f"task registry {self.url}: {what}")

    def register(self, record: TaskRecord) -> None:
        """Insert the task's row, or update every field of it but ``created_at``."""
        values = record.model_dump(exclude={"tags"})
        values["factory_kwargs"] = json.dumps(record.factory_kwargs, sort_keys=True)
        with self._errors(f"registering {record.task_id}"), sqldb.write_tx(self.engine) as conn:
            found = conn.execute(select(tasks.c.created_at).where(tasks.c.task_id == record.task_id)).first()
            if found is None:
                conn.execute(insert(tasks).values(**values))
            else:
                values.pop("created_at")
                conn.execute(update(tasks).where(tasks.c.task_id == record.task_id).values(**values))
            self._set_tags(conn, record.task_id, record.tags)

    @staticmethod
    def _set_tags(conn: Connection, task_id: str, tags: Iterable[str]) -> None:
        conn.execute(delete(task_tags).where(task_tags.c.task_id == task_id))
        rows = [{"tag": tag, "task_id": task_id} for tag in sorted(set(tags))]
        if rows:
            conn.execute(insert(task_tags), rows)

    def update(self, task_id: str, **fields: Any) -> bool:
        """Change some fields of a row (``updated_at`` too); False if the task is not registered."""
        unknown = set(fields) - set(tasks.c.keys())
        if unknown:
            raise TaskEngineException(f"unknown registry fields: {sorted(unknown)}")
        fields.setdefault("updated_at", now())
        with self._errors(f"updating {task_id}"), sqldb.write_tx(self.engine) as conn:
            return bool(conn.execute(update(tasks).where(tasks.c.task_id == task_id).values(**fields)).rowcount)

    def get(self, task_id: str) -> TaskRecord | None:
        """The task's row, or None if it is not registered."""
        validate_task_id(task_id)
        found = self.list_tasks(task_ids=[task_id], include_cleaned=True, limit=1)
        return found[0] if found else None

    def list_tasks(
        self,
        *,
        task_ids: Sequence[str] | None = None,
        queue: str | None = None,
        statuses: Sequence[StageStatus] | None = None,
        tags: Sequence[str] | None = None,
        since: dt.datetime | None = None,
        before: dt.datetime | None = None,
        include_cleaned: bool = False,
        limit: int | None = 100,
        sort: str = "-updated_at",
    ) -> list[TaskRecord]:
        """Rows matching every filter given: any of ``statuses``, all of ``tags``, updated in [since, before).

        :param sort: a column of :data:`SORT_KEYS`, prefixed with ``-`` for descending order.
        """
        key = sort.lstrip("-")
        if key not in SORT_KEYS:
            raise TaskEngineException(
                f"cannot sort by {sort!r}; use one of {', '.join(SORT_KEYS)} (prefix - to reverse)"
            )
        if limit is not None and limit < 1:
            raise TaskEngineException(f"limit must be at least 1, got {limit}")
        query = select(tasks)
        if task_ids is not None:
            query = query.where(tasks.c.task_id.in_(list(task_ids)))
        if not include_cleaned:
            query = query.where(tasks.c.cleaned.is_(False))
        if queue is not None:
            query = query.where(tasks.c.queue == queue)
        if statuses:
            query = query.where(tasks.c.status.in_([str(s) for s in statuses]))
        for tag in tags or ():
            query = query.where(tasks.c.task_id.in_(select(task_tags.c.task_id).where(task_tags.c.tag == tag)))
        if since is not None:
            query = query.where(tasks.c.updated_at >= since)
        if before is not None:
            query = query.where(tasks.c.updated_at < before)
        column = tasks.c[key]
        query = query.order_by(column.desc() if sort.startswith("-") else column.asc(), tasks.c.task_id)
        if limit is not None:
            query = query.limit(limit)
        with self._errors("listing tasks"), sqldb.read_conn(self.engine) as conn:
            rows = conn.execute(query).mappings().all()
            ids = [row["task_id"] for row in rows]
            tag_rows = conn.execute(select(task_tags).where(task_tags.c.task_id.in_(ids))).all() if ids else []
        tags_of: dict[str, list[str]] = {}
        for tag, task_id in tag_rows:
            tags_of.setdefault(task_id, []).append(tag)
        return [self._record(row, sorted(tags_of.get(row["task_id"], []))) for row in rows]

    @staticmethod
    def _record(row: RowMapping, tags: list[str]) -> TaskRecord:
        values = dict(row)
        values["factory_kwargs"] = json.loads(values.get("factory_kwargs") or "{}")
        return TaskRecord(**values, tags=tags)
