"""Listing by tag and by DAG stays right as rows change, a version 1 registry is migrated, and ``--dag``.

Listed by tag, rows come from the tag rows' copies of ``cleaned`` and ``updated_at`` (registry_schema):
these tests change rows through every write path and check the listing against the rows themselves,
on SQLite and PostgreSQL.
"""

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Index, Integer, MetaData, String, Table, create_engine, insert, text

from airflow_checkmate import cli
from airflow_checkmate.checkmate import StageStatus, TaskRecord, TaskRegistry, sqldb
from airflow_checkmate.checkmate import registry_schema as schema
from support.pg import fresh_database

S = StageStatus
T0 = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def record(task_id: str, hours: int, tags: list[str], **fields: object) -> TaskRecord:
    """A row updated ``hours`` after T0."""
    stamp = T0 + dt.timedelta(hours=hours)
    values: dict[str, object] = {"status": S.COMPLETE, "created_at": T0, "updated_at": stamp, **fields}
    return TaskRecord(task_id=task_id, base_url="/nowhere", tags=tags, **values)  # type: ignore[arg-type]


def listed(registry: TaskRegistry, **query: object) -> list[str]:
    return [r.task_id.split("-")[0] for r in registry.list_tasks(**query)]  # type: ignore[arg-type]


def test_listing_by_tag_follows_every_write(db_url: str) -> None:
    """Newest update first, cleaned rows out, after register, update, re-register with other tags."""
    uid = uuid.uuid4().hex[:8]
    registry = TaskRegistry(db_url)
    tag, other = f"team:{uid}", f"dag:d{uid}"
    for name, hours, tags in (("a", 1, [tag, other]), ("b", 2, [tag]), ("c", 3, [tag, other])):
        registry.register(record(f"{name}-{uid}", hours, tags))
    assert listed(registry, tags=[tag]) == ["c", "b", "a"]
    assert listed(registry, tags=[tag], sort="updated_at") == ["a", "b", "c"]
    assert listed(registry, tags=[tag, other]) == ["c", "a"] and listed(registry, tags=[other, tag]) == ["c", "a"]
    assert listed(registry, tags=[tag], since=T0 + dt.timedelta(hours=2)) == ["c", "b"]
    assert listed(registry, tags=[tag], before=T0 + dt.timedelta(hours=2)) == ["a"]

    assert registry.update(f"a-{uid}", status="ERROR", updated_at=T0 + dt.timedelta(hours=4))
    assert listed(registry, tags=[tag]) == ["a", "c", "b"]
    assert listed(registry, tags=[tag], statuses=[S.ERROR]) == ["a"]
    assert registry.update(f"c-{uid}", cleaned=True)  # updated_at: now, after every T0 stamp
    assert listed(registry, tags=[tag]) == ["a", "b"]
    assert listed(registry, tags=[tag], include_cleaned=True) == ["c", "a", "b"]
    assert listed(registry, tags=[other]) == ["a"]

    registry.register(record(f"c-{uid}", 5, [other]))  # registered again: not cleaned, without `tag`
    assert listed(registry, tags=[tag]) == ["a", "b"] and listed(registry, tags=[other]) == ["c", "a"]
    # the row and the listing agree on every field, whichever index served it
    assert registry.list_tasks(tags=[other]) == registry.list_tasks(task_ids=[f"a-{uid}", f"c-{uid}"])


def version_1_registry(url: str) -> None:
    """Lay out the registry as version 1 did (tag rows without copies), with three tasks in it."""
    v1 = MetaData()
    tasks = schema.tasks.to_metadata(v1)
    tasks.indexes = {index for index in tasks.indexes if index.name != "ix_checkmate_tasks_status"}
    tags = Table(
        "checkmate_task_tags",
        v1,
        Column("tag", String(100), primary_key=True),
        Column("task_id", String(200), primary_key=True),
        Index("ix_checkmate_task_tags_task", "task_id"),
    )
    versions = Table(
        sqldb.SCHEMA_TABLE, v1, Column("component", String(64), primary_key=True), Column("version", Integer)
    )
    engine = create_engine(sqldb.parse_url(url))
    try:
        v1.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(versions).values(component="registry", version=1))
            for name, hours, cleaned in (("old", 1, False), ("new", 2, False), ("gone", 3, True)):
                row = record(name, hours, [], cleaned=cleaned).model_dump(exclude={"tags", "factory_kwargs"})
                conn.execute(insert(tasks).values(**row, factory_kwargs="{}"))
                conn.execute(insert(tags).values(tag="dag:etl", task_id=name))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database no registry has used: a new SQLite file, or a new PostgreSQL database (dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'v1.db'}"
        return
    with fresh_database(request.getfixturevalue("postgres_url"), prefix="checkmate_v1") as url:
        yield url


def test_version_1_registry_is_migrated(empty_db_url: str) -> None:
    """Opening a version 1 registry brings it to the current version; every row and tag is kept and listable."""
    version_1_registry(empty_db_url)
    registry = TaskRegistry(empty_db_url)
    with registry.engine.connect() as conn:
        version = conn.execute(text(f"SELECT version FROM {sqldb.SCHEMA_TABLE}")).scalar()
    assert version == schema.SCHEMA_VERSION
    assert listed(registry, tags=["dag:etl"]) == ["new", "old"]
    assert listed(registry, tags=["dag:etl"], include_cleaned=True) == ["gone", "new", "old"]
    assert listed(registry, statuses=[S.COMPLETE], include_cleaned=True) == ["gone", "new", "old"]
    assert registry.update("old", updated_at=T0 + dt.timedelta(hours=9))
    assert listed(registry, tags=["dag:etl"]) == ["old", "new"]


def test_cli_lists_and_selects_by_dag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--dag ID`` is the tag the operator adds (dag:ID), for list and batch commands; a bad id: usage error."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    registry = TaskRegistry(url)
    for name, hours, dag in (("a", 1, "etl"), ("b", 2, "report"), ("c", 3, "etl")):
        registry.register(record(name, hours, [f"dag:{dag}", "team:data"]))
    flags = ["--base-url", str(tmp_path / "store"), "--database-url", url]

    assert cli.main([*flags, "list", "--dag", "etl", "--json"]) == 0
    assert [row["task_id"] for row in json.loads(capsys.readouterr().out)] == ["c", "a"]
    assert cli.main([*flags, "list", "--dag", "etl", "--tag", "team:data", "--json"]) == 0
    assert [row["task_id"] for row in json.loads(capsys.readouterr().out)] == ["c", "a"]
    assert cli.main([*flags, "cancel", "--dag", "report"]) == 0  # a dry run: it names what it would cancel
    out = capsys.readouterr().out
    assert "b" in out.split() and "a" not in out.split() and "c" not in out.split(), out

    with pytest.raises(SystemExit) as exc:
        cli.main([*flags, "list", "--dag", "bad dag!"])
    assert exc.value.code == 2 and "--dag: invalid tag 'dag:bad dag!'" in capsys.readouterr().err
    assert listed(registry, include_cleaned=True) == ["c", "b", "a"]  # nothing changed
