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
from sqlalchemy import Select, delete, insert, select, update
from sqlalchemy.engine import Connection, RowMapping

from airflow_checkmate.checkmate import sqldb
from airflow_checkmate.checkmate.exceptions import TaskEngineException
from airflow_checkmate.checkmate.names import validate_task_id
from airflow_checkmate.checkmate.registry_schema import (
    LABEL_MAX_LENGTH,
    MIGRATIONS,
    SCHEMA_VERSION,
    metadata,
    task_tags,
    tasks,
)
from airflow_checkmate.checkmate.status import StageStatus

DEFAULT_QUEUE_NAME = "default"
DAG_TAG_PREFIX = "dag:"
_LABEL_RE = re.compile(r"[A-Za-z0-9._:=/@+-]+")
SORT_KEYS = ("task_id", "status", "queue", "created_at", "updated_at")
#: Row fields the tag rows keep a copy of (see registry_schema).
_TAG_COPIES = ("cleaned", "updated_at")


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


def dag_tag(dag_id: str) -> str:
    """The tag the operator gives the tasks of an Airflow DAG, so they can be listed by DAG."""
    return validate_label("tag", f"{DAG_TAG_PREFIX}{dag_id}")


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class TaskRegistry:
    """The managed-task registry in a SQLite or PostgreSQL database (tables created on first use).

    :param url: ``sqlite:////path/registry.db`` or ``postgresql://user@host/db``.
    """

    def __init__(self, url: str, *, durable: bool = True) -> None:
        self.url = sqldb.safe_url(sqldb.parse_url(url))
        self.engine = sqldb.get_engine(url, durable)
        sqldb.ensure_schema(self.engine, "registry", metadata, SCHEMA_VERSION, MIGRATIONS)

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
            self._set_tags(conn, record, record.tags)

    @staticmethod
    def _set_tags(conn: Connection, record: TaskRecord, tags: Iterable[str]) -> None:
        conn.execute(delete(task_tags).where(task_tags.c.task_id == record.task_id))
        copies = {"cleaned": record.cleaned, "updated_at": record.updated_at}
        rows = [{"tag": tag, "task_id": record.task_id, **copies} for tag in sorted(set(tags))]
        if rows:
            conn.execute(insert(task_tags), rows)

    def update(self, task_id: str, **fields: Any) -> bool:
        """Change some fields of a row (``updated_at`` too); False if the task is not registered."""
        unknown = set(fields) - set(tasks.c.keys())
        if unknown:
            raise TaskEngineException(f"unknown registry fields: {sorted(unknown)}")
        fields.setdefault("updated_at", now())
        copies = {key: fields[key] for key in _TAG_COPIES if key in fields}
        with self._errors(f"updating {task_id}"), sqldb.write_tx(self.engine) as conn:
            found = bool(conn.execute(update(tasks).where(tasks.c.task_id == task_id).values(**fields)).rowcount)
            if found and copies:
                conn.execute(update(task_tags).where(task_tags.c.task_id == task_id).values(**copies))
            return found

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
        query, updated, cleaned, other_tags = self._listing_source(list(tags or ()), key)
        if task_ids is not None:
            query = query.where(tasks.c.task_id.in_(list(task_ids)))
        if not include_cleaned:
            query = query.where(cleaned.is_(False))
        if queue is not None:
            query = query.where(tasks.c.queue == queue)
        if statuses:
            query = query.where(tasks.c.status.in_([str(s) for s in statuses]))
        for tag in other_tags:
            query = query.where(tasks.c.task_id.in_(select(task_tags.c.task_id).where(task_tags.c.tag == tag)))
        if since is not None:
            query = query.where(updated >= since)
        if before is not None:
            query = query.where(updated < before)
        column = updated if key == "updated_at" else tasks.c[key]
        query = query.order_by(column.desc() if sort.startswith("-") else column.asc(), tasks.c.task_id)
        if limit is not None:
            query = query.limit(limit)
        with self._errors("listing tasks"), sqldb.read_conn(self.engine) as conn:
            rows = conn.execute(query).mappings().all()
            ids = [row["task_id"] for row in rows]
            of_ids = select(task_tags.c.tag, task_tags.c.task_id).where(task_tags.c.task_id.in_(ids))
            tag_rows = conn.execute(of_ids).all() if ids else []
        tags_of: dict[str, list[str]] = {}
        for tag, task_id in tag_rows:
            tags_of.setdefault(task_id, []).append(tag)
        return [self._record(row, sorted(tags_of.get(row["task_id"], []))) for row in rows]

    @staticmethod
    def _listing_source(tags: list[str], key: str) -> tuple[Select[Any], Any, Any, list[str]]:
        """The rows to filter, the ``updated_at`` and ``cleaned`` columns to filter and sort them by, and
        the tags left to filter on.

        Listed by tag in update order, the rows come from the first tag's rows (which carry copies of
        both columns): its index yields them newest first, so the query stops after ``limit`` rows
        however many tasks there are. Otherwise, straight from the task rows.
        """
        if not tags or key != "updated_at":
            return select(tasks), tasks.c.updated_at, tasks.c.cleaned, tags
        lead = task_tags.alias("lead_tag")
        query = select(tasks).join(lead, lead.c.task_id == tasks.c.task_id).where(lead.c.tag == tags[0])
        return query, lead.c.updated_at, lead.c.cleaned, tags[1:]

    @staticmethod
    def _record(row: RowMapping, tags: list[str]) -> TaskRecord:
        values = dict(row)
        values["factory_kwargs"] = json.loads(values.get("factory_kwargs") or "{}")
        return TaskRecord(**values, tags=tags)
