"""The CheckMate UI's shape: what the plugin registers, packaged assets, escaping, the list's DAG filter."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from airflow_checkmate.checkmate.registry import TaskRecord, TaskRegistry, now
from airflow_checkmate.plugins import access, app, pages, task_data
from airflow_checkmate.plugins.checkmate import CheckMatePlugin

STATIC = resources.files("airflow_checkmate.plugins").joinpath("static")


def test_plugin_adds_a_nav_entry_and_a_task_instance_tab() -> None:
    views = {v["destination"]: v for v in CheckMatePlugin.external_views}
    assert set(views) == {"nav", "task_instance"}
    assert views["nav"]["href"] == "/checkmate/"
    assert all(f"{{{p}}}" in views["task_instance"]["href"] for p in ("DAG_ID", "RUN_ID", "TASK_ID", "MAP_INDEX"))
    assert [a["url_prefix"] for a in CheckMatePlugin.fastapi_apps] == ["/checkmate"]


def test_no_docs_or_openapi_routes() -> None:
    made = app.create_app()
    assert made.docs_url is None and made.redoc_url is None and made.openapi_url is None
    paths = {getattr(route, "path", "") for route in made.routes}
    assert not paths & {"/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"}, paths


def test_every_asset_ships_in_the_package_and_nothing_comes_from_outside() -> None:
    shipped = {f.name for f in STATIC.iterdir()}
    assert shipped == set(app._STATIC), "serve exactly the files in plugins/static/"
    for name in shipped:
        text = STATIC.joinpath(name).read_text()
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import", text), name
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text, f"{name}: build DOM with textContent"
    page = pages.task_page("/checkmate", "t", "/a", "/b", "d", "r").body.decode()
    assert not re.search(r"(src|href)=\"(https?:)?//", page)


def test_pages_escape_what_they_show() -> None:
    evil = "<script>alert(1)</script>"
    rendered = pages.task_page("/checkmate", evil, f"/api?x={evil}", None, evil, evil).body.decode()
    rendered += pages.error_page("/checkmate", 404, evil, evil).body.decode()
    rendered += pages.list_page("/checkmate", "/api", evil).body.decode()
    assert "<script>alert" not in rendered and "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered


def test_list_shows_only_tasks_of_dags_the_user_may_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The filter over the auth manager's answer (the auth manager itself is exercised by tests/airflow/test_ui.py)."""
    registry = TaskRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
    stamp = now()
    for task_id, tags in (("a1", ["dag:a"]), ("b1", ["dag:b", "x"]), ("ab", ["dag:a", "dag:b"]), ("free", [])):
        registry.register(
            TaskRecord(
                task_id=task_id, base_url="file:///x", status="COMPLETE", tags=tags, created_at=stamp, updated_at=stamp
            )
        )
    monkeypatch.setattr(task_data, "storage", lambda conn_id: (None, registry))
    monkeypatch.setattr(access, "readable_dag_ids", lambda user: {"a"})
    monkeypatch.setattr(access, "may_read_all", lambda user: False)

    def listed(**filters: Any) -> list[str]:
        args = {"status": None, "dag_id": None, "tag": None, "queue": None, **filters}
        return sorted(t["task_id"] for t in task_data.listing(None, "c", limit=100, **args)["tasks"])

    assert listed() == ["a1"]  # not b1 (dag b), not ab (one of its DAGs is not readable), not free (no DAG)
    monkeypatch.setattr(access, "readable_dag_ids", lambda user: {"a", "b"})
    assert listed() == ["a1", "ab", "b1"]
    assert listed(tag="x") == ["b1"] and listed(dag_id="a") == ["a1", "ab"] and listed(status="running") == []
    monkeypatch.setattr(access, "may_read_all", lambda user: True)
    assert listed() == ["a1", "ab", "b1", "free"]
