"""The CheckMate view inside the Airflow 3 UI: headless Chromium against a live api-server, scheduler, dag-processor.

One stack for the module (support.airflow_stack) with real users of the simple auth manager: ``admin`` and
``viewer``. The browser (support.webdriver) carries the admin's login cookie, as after the login form.
Screenshots go to tests/artifacts/ui/ (gitignored); CHECKMATE_UPDATE_SCREENSHOTS=1 also refreshes the README's two
in docs/.
Tests run in file order: the reset test at the end changes the resumed task the earlier ones look at.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from airflow_checkmate.checkmate import StageStatus
from support.airflow_stack import TASK, LiveStack, running_stack
from support.processes import ROOT
from support.ui_stages import JOURNAL_DIR_ENV
from support.webdriver import Browser, browser_missing, chromium

pytestmark = [pytest.mark.live_airflow, pytest.mark.timeout(900)]

DAGS_UI = Path(__file__).resolve().parent / "dags_ui"
RESUME, SLOW, WATCH = "checkmate_ui_resume", "checkmate_ui_slow", "checkmate_ui_watch"
USERS = {"admin": "admin-secret", "viewer": "viewer-secret"}
ARTIFACTS = ROOT / "tests" / "artifacts" / "ui"
TZ = "Asia/Tokyo"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    missing = browser_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"UI tests must run under CI: {missing}")
        pytest.skip(missing)
    home = tmp_path_factory.mktemp("airflow_ui_home")
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps(USERS))
    env = {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "CHECKMATE_ALLOWED_FACTORIES": "support.ui_stages.*",
    }
    journal = tmp_path_factory.mktemp("airflow_ui_journal")
    with running_stack(
        home, DAGS_UI, journal, JOURNAL_DIR_ENV, (RESUME, SLOW, WATCH), env, login=("admin", USERS["admin"])
    ) as s:
        yield s


@pytest.fixture(scope="module")
def resumed_views(stack: LiveStack) -> tuple[str, list[dict[str, Any]]]:
    """A run whose s2 failed on Airflow try 1 and completed on try 2, and the tab's JSON seen while it ran."""
    run_id = "ui_resume_1"
    stack.trigger(RESUME, run_id)
    seen: list[dict[str, Any]] = []
    query = {"dag_id": RESUME, "run_id": run_id, "task_id": TASK}

    def done() -> bool:
        response = stack.http.get("/checkmate/api/ti", params=query)
        if response.is_success:
            seen.append(response.json())
        return stack.run_state(RESUME, run_id) == "success"

    stack.wait_for("the resumed run to succeed", done, 180, RESUME, run_id)
    return run_id, seen


@pytest.fixture(scope="module")
def resumed(resumed_views: tuple[str, list[dict[str, Any]]]) -> str:
    return resumed_views[0]


@pytest.fixture(scope="module")
def browser(stack: LiveStack) -> Iterator[Browser]:
    base = str(stack.http.base_url).rstrip("/")
    with chromium() as b:
        b.get(f"{base}/api/v2/monitor/health")
        b.add_cookie("_token", stack.token("admin", USERS["admin"]))
        b.script("localStorage.setItem('timezone', JSON.stringify(arguments[0]))", TZ)
        yield b


def url(stack: LiveStack, path: str) -> str:
    return f"{str(stack.http.base_url).rstrip('/')}{path}"


def client(stack: LiveStack, user: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {stack.token(user, USERS[user])}"} if user else {}
    return httpx.Client(base_url=str(stack.http.base_url), headers=headers, timeout=30, trust_env=False)


def open_tab(stack: LiveStack, browser: Browser, dag_id: str, run_id: str, task_id: str = TASK) -> None:
    """The task instance page's CheckMate tab, as a user clicks it; the browser ends inside the tab's frame."""
    browser.frame(None)
    browser.get(url(stack, f"/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/plugin/checkmate-ti"))
    browser.wait_css("iframe[title='CheckMate']", 60)
    browser.frame("iframe[title='CheckMate']")
    browser.wait(
        "the view to load", lambda: browser.script("return document.getElementById('checkmate')?.dataset.loaded")
    )


def shot(browser: Browser, name: str, docs: bool = False) -> None:
    """A screenshot under tests/artifacts/ui; with CHECKMATE_UPDATE_SCREENSHOTS=1 the README's copy in docs/ too."""
    path = browser.screenshot(ARTIFACTS / f"{name}.png")
    if docs and os.environ.get("CHECKMATE_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(path, ROOT / "docs" / f"{name}.png")


def local(iso: dt.datetime) -> str:
    return iso.astimezone(ZoneInfo(TZ)).strftime("%Y-%m-%d %H:%M:%S")


def test_tab_timeline_shows_retry_and_complete_attempts(stack: LiveStack, resumed: str, browser: Browser) -> None:
    """A resumed task's tab: s2 failed on try 1 and completed on try 2, each bar at the stored times."""
    open_tab(stack, browser, RESUME, resumed)
    bars = browser.script("return [...document.querySelectorAll('.cm-bar')].map(b => ({...b.dataset}))")
    s2 = [b for b in bars if b["stage"] == "s2"]
    assert [(b["outcome"], b["airflowTry"]) for b in s2] == [("failed", "1"), ("complete", "2")], bars
    snap = stack.snapshot(RESUME, resumed)
    assert snap is not None
    history = next(s for s in snap.stages if s.stage_name == "s2").history
    running = [h for h in history if h.status is StageStatus.RUNNING]
    ends = [h for h in history if h.status in (StageStatus.RETRY, StageStatus.COMPLETE)]
    assert [e.status for e in ends] == [StageStatus.RETRY, StageStatus.COMPLETE]
    for bar, start, end in zip(s2, running, ends, strict=True):
        assert dt.datetime.fromisoformat(bar["start"]) == start.begin_ts
        assert end.end_ts is not None and dt.datetime.fromisoformat(bar["end"]) == end.end_ts
        assert end.end_ts > end.begin_ts  # the end of the attempt, not its start
    row = browser.find("#cm-stages tr[data-stage='s2']")
    text = browser.text(row)
    assert local(running[0].begin_ts) in text, text  # the first attempt's start, in the UI's timezone
    assert local(ends[-1].end_ts) in text, text  # the last attempt's end
    cards = browser.text(browser.find("#cm-cards"))
    assert "ui-queue" in cards and "resume" in cards and "3/3 complete" in cards, cards
    browser.click("details.cm-json[data-key='s3:result'] summary")
    assert str(snap.result[0]) in browser.text(browser.find("details.cm-json[data-key='s3:result'] pre"))
    browser.click("details.cm-json[data-key='s2:history'] summary")
    cells = browser.script(
        "return [...document.querySelectorAll(\"details[data-key='s2:history'] tbody tr\")]"
        ".map(r => [...r.cells].map(c => c.textContent))"
    )
    ended = {row[0]: row[3] for row in cells}  # the history's end times: when RETRY and COMPLETE happened
    assert ended["RETRY"].startswith(local(ends[0].end_ts)) and ended["COMPLETE"].startswith(local(ends[1].end_ts))
    browser.script("window.scrollTo(0, 0)")
    browser.frame(None)
    shot(browser, "checkmate-tab", docs=True)


def test_tab_on_other_task_says_it_is_not_checkmate(stack: LiveStack, resumed: str, browser: Browser) -> None:
    open_tab(stack, browser, RESUME, resumed, "plain")
    assert "not a CheckMate task" in browser.text(browser.find("#cm-not-checkmate"))


def test_sensor_tab_shows_the_task_it_waits_for(stack: LiveStack, resumed: str, browser: Browser) -> None:
    stack.trigger(WATCH, "ui_watch_1")
    stack.wait_for("the sensor to succeed", lambda: stack.run_state(WATCH, "ui_watch_1") == "success", 120, WATCH)
    open_tab(stack, browser, WATCH, "ui_watch_1", "wait")
    watched = browser.script("return [...document.querySelectorAll('#cm-stages tbody tr')].map(r => r.dataset.stage)")
    assert watched == ["s1", "s2", "s3"]
    assert "CheckMateSensor" in browser.text(browser.find("#cm-cards"))


def test_dark_mode_follows_the_ui(stack: LiveStack, resumed: str, browser: Browser) -> None:
    backgrounds = {}
    for theme in ("dark", "light"):
        browser.frame(None)
        browser.script("localStorage.setItem('theme', arguments[0])", theme)
        open_tab(stack, browser, RESUME, resumed)
        assert browser.script("return window.parent.document.documentElement.classList.contains(arguments[0])", theme)
        assert browser.script("return document.documentElement.dataset.theme") == theme
        backgrounds[theme] = browser.script("return getComputedStyle(document.body).backgroundColor")
        browser.frame(None)
        shot(browser, f"checkmate-tab-{theme}")
    assert backgrounds["dark"] != backgrounds["light"], backgrounds


def test_live_refresh_then_admin_cancel_stops_it(stack: LiveStack, browser: Browser) -> None:
    """While the task runs the open tab follows its stages without a reload; a confirmed cancel stops it."""
    run_id = "ui_slow_cancel"
    stack.trigger(SLOW, run_id)

    def stage(name: str) -> StageStatus | None:
        snap = stack.snapshot(SLOW, run_id)
        return next((s.status for s in snap.stages if s.stage_name == name), None) if snap else None

    stack.wait_for("s1 to run", lambda: stage("s1") is StageStatus.RUNNING, 120, SLOW, run_id)
    open_tab(stack, browser, SLOW, run_id)
    browser.script("window.__cmMarker = 'same page'")
    shown = lambda: dict(  # noqa: E731
        browser.script(
            "return [...document.querySelectorAll('#cm-stages tbody tr')]"
            ".map(r => [r.dataset.stage, r.querySelector('.cm-badge').textContent])"
        )
    )
    # A stage the page showed as not started, and not the last one, so a cancel still finds a boundary after it.
    first = shown()
    waiting = next((name for name in ("s2", "s3", "s4") if first[name] == "CREATED"), None)
    assert waiting, f"the task ran on before the page loaded: {first}"
    browser.wait(f"the open tab to show {waiting} running", lambda: shown()[waiting] == "RUNNING", 60)
    assert browser.script("return window.__cmMarker") == "same page"  # refreshed in place, not reloaded
    shot(browser, "checkmate-tab-live")
    result = confirmed_action(browser, "#cm-cancel")
    assert "cancel requested" in result, result
    stack.wait_for("the task to be CANCELED", lambda: stack.snapshot(SLOW, run_id).status is StageStatus.CANCELED, 60)
    browser.wait(
        "the view to reach the final state",
        lambda: browser.script("return document.getElementById('checkmate').dataset.live") == "false",
        30,
    )
    assert "CANCELED" in browser.text(browser.find("#cm-status"))


def test_nav_list_filters(stack: LiveStack, resumed: str, browser: Browser) -> None:
    browser.frame(None)
    browser.get(url(stack, "/plugin/checkmate"))
    browser.wait_css("iframe[title='CheckMate']", 60)
    browser.frame("iframe[title='CheckMate']")
    rows = lambda: browser.script(  # noqa: E731
        "return [...document.querySelectorAll('#cm-tasks tbody tr')]"
        ".map(r => [r.dataset.taskId, r.dataset.status, r.cells[1].textContent])"
    )
    browser.wait("both DAGs' tasks", lambda: {r[2] for r in rows()} >= {RESUME, SLOW}, 30)
    browser.type("input[name='tag']", "slow")
    browser.click("#cm-filters button")
    browser.wait("only the slow DAG's tasks", lambda: rows() and {r[2] for r in rows()} == {SLOW}, 30)
    browser.type("input[name='tag']", "")
    browser.script("const s = document.querySelector(\"select[name='status']\"); s.value = 'COMPLETE';")
    browser.click("#cm-filters button")
    browser.wait("only COMPLETE tasks", lambda: rows() and {r[1] for r in rows()} == {"COMPLETE"}, 30)
    browser.script("document.querySelector(\"select[name='status']\").value = ''")
    browser.type("input[name='dag_id']", RESUME)
    browser.click("#cm-filters button")
    browser.wait("only the resumed DAG's tasks", lambda: rows() and {r[2] for r in rows()} == {RESUME}, 30)
    browser.type("input[name='dag_id']", "")
    browser.click("#cm-filters button")
    browser.wait("every task again", lambda: {r[2] for r in rows()} >= {RESUME, SLOW}, 30)
    browser.frame(None)
    shot(browser, "checkmate-list", docs=True)


def test_view_while_waiting_for_a_retry_says_when_the_next_try_is_due(
    stack: LiveStack, resumed_views: tuple[str, list[dict[str, Any]]]
) -> None:
    run_id, seen = resumed_views
    waiting = [v for v in seen if v["airflow"].get("state") == "up_for_retry"]
    assert waiting, [v["airflow"].get("state") for v in seen]
    assert all(v["live"] and v["status"] == "RETRY" for v in waiting)
    ti = stack.ti(RESUME, run_id)
    first_try = stack.api("GET", f"/dags/{RESUME}/dagRuns/{run_id}/taskInstances/{TASK}/tries/1")
    due = dt.datetime.fromisoformat(waiting[-1]["airflow"]["next_try_at"])
    assert due == dt.datetime.fromisoformat(first_try["end_date"]) + dt.timedelta(seconds=3)  # retry_delay
    assert dt.datetime.fromisoformat(ti["start_date"]) >= due  # and the second try started after it
    assert seen[-1]["status"] == "COMPLETE"


def test_json_endpoints_errors_and_login(stack: LiveStack, resumed: str) -> None:
    query = {"dag_id": RESUME, "run_id": resumed, "task_id": TASK}
    with client(stack, "admin") as admin, client(stack, None) as anonymous, client(stack, "viewer") as viewer:
        view = admin.get("/checkmate/api/ti", params=query).json()
        assert view["kind"] == "task" and view["status"] == "COMPLETE" and not view["live"]
        assert [b["airflow_try"] for b in view["stages"][1]["timeline"]] == [1, 2]
        assert view["can_edit"] is True
        as_viewer = viewer.get("/checkmate/api/ti", params=query)
        assert as_viewer.status_code == 200 and as_viewer.json()["can_edit"] is False  # viewers may read only
        assert anonymous.get("/checkmate/api/tasks").status_code == 401
        assert anonymous.get("/checkmate/static/task.js").status_code == 401
        page = anonymous.get("/checkmate/ti", params=query)
        assert page.status_code == 303 and "/auth/login" in page.headers["location"]
        for path in ("/checkmate/docs", "/checkmate/redoc", "/checkmate/openapi.json"):
            assert anonymous.get(path).status_code == 404, path
        missing = admin.get("/checkmate/tasks/no-such-task", params={"dag_id": RESUME})
        assert missing.status_code == 404 and "no CheckMate task 'no-such-task'" in html.unescape(missing.text)
        assert 'class="cm-alert"' in missing.text  # the page in the UI's style, not FastAPI's JSON
        bad_conn = admin.get(f"/checkmate/tasks/{view['task_id']}", params={"dag_id": RESUME, "conn_id": "nope"})
        assert bad_conn.status_code == 400 and "connection 'nope' is not defined" in html.unescape(bad_conn.text)
        escaped = admin.get("/checkmate/tasks/x", params={"dag_id": "<b>dag</b>"})
        assert "<b>dag</b>" not in escaped.text and "&lt;b&gt;dag&lt;/b&gt;" in escaped.text
        listed = admin.get("/checkmate/api/tasks", params={"dag_id": RESUME}).json()["tasks"]
        assert [t["task_id"] for t in listed] == [view["task_id"]] and listed[0]["queue"] == "ui-queue"
        assert admin.get("/checkmate/api/tasks", params={"status": "bogus"}).status_code == 400


def confirmed_action(browser: Browser, button: str) -> str:
    """Click an action, confirm it in the dialog, and return the outcome the page shows."""
    browser.click(button)
    browser.wait_css("#cm-confirm[open]")
    browser.click("#cm-confirm-yes")
    outcome = lambda: (t := browser.text(browser.find("#cm-action-result"))) and not t.endswith("…") and t  # noqa: E731
    return str(browser.wait("the action's outcome", outcome, 60))


def test_viewer_actions_are_refused_and_audited(stack: LiveStack, resumed: str, browser: Browser) -> None:
    browser.frame(None)
    browser.add_cookie("_token", stack.token("viewer", USERS["viewer"]))
    try:
        open_tab(stack, browser, RESUME, resumed)
        assert "does not allow you to edit" in browser.text(browser.find("#cm-read-only"))
        shown = confirmed_action(browser, "#cm-cancel")
        assert "Airflow does not allow you to edit (cancel, reset, unlock)" in shown, shown
    finally:
        browser.frame(None)
        browser.add_cookie("_token", stack.token("admin", USERS["admin"]))
    task_id = stack.snapshot(RESUME, resumed).task_id  # type: ignore[union-attr]
    body = {"dag_id": RESUME, "conn_id": "checkmate_default"}
    with client(stack, "viewer") as viewer, client(stack, "admin") as admin:
        for action in ("cancel", "reset", "unlock"):
            refused = viewer.post(f"/checkmate/api/tasks/{task_id}/actions", json={**body, "action": action})
            assert refused.status_code == 403, refused.text
            assert "does not allow you to edit" in refused.json()["detail"]
        as_form = admin.post(f"/checkmate/api/tasks/{task_id}/actions", data={**body, "action": "cancel"})
        assert as_form.status_code == 415
    logs = stack.api("GET", "/eventLogs?event_pattern=checkmate")["event_logs"]
    refused_events = [(e["event"], e["owner"]) for e in logs]
    assert refused_events.count(("checkmate.cancel.refused", "viewer")) == 2, logs  # the browser's and the API's
    assert ("checkmate.unlock.refused", "viewer") in refused_events, logs
    assert stack.snapshot(RESUME, resumed).status is StageStatus.COMPLETE  # type: ignore[union-attr]


def test_admin_unlock_breaks_a_held_lock(stack: LiveStack) -> None:
    run_id = "ui_slow_unlock"
    stack.trigger(SLOW, run_id)
    stack.wait_for("the lock", lambda: (s := stack.snapshot(SLOW, run_id)) is not None and s.locked, 120, SLOW, run_id)
    task_id = stack.snapshot(SLOW, run_id).task_id  # type: ignore[union-attr]
    with client(stack, "admin") as admin:
        out = admin.post(
            f"/checkmate/api/tasks/{task_id}/actions",
            json={"action": "unlock", "dag_id": SLOW, "conn_id": "checkmate_default"},
        )
    assert out.status_code == 200 and out.json()["done"], out.text
    assert "lock broken" in out.json()["message"]
    logs = stack.api("GET", "/eventLogs?event_pattern=checkmate.unlock")["event_logs"]
    assert any(e["owner"] == "admin" and e["run_id"] == run_id for e in logs), logs


def test_admin_reset_from_a_chosen_stage(stack: LiveStack, resumed: str, browser: Browser) -> None:
    open_tab(stack, browser, RESUME, resumed)
    browser.script("document.getElementById('cm-reset-stage').value = 's2'")
    shown = confirmed_action(browser, "#cm-reset")
    assert "reset from stage 's2'" in shown, shown
    snap = stack.snapshot(RESUME, resumed)
    assert snap is not None
    assert [s.status for s in snap.stages] == [StageStatus.COMPLETE, StageStatus.CREATED, StageStatus.CREATED]
    logs = stack.api("GET", f"/eventLogs?event=checkmate.reset&dag_id={RESUME}")["event_logs"]
    assert [(e["event"], e["owner"], e["run_id"]) for e in logs] == [("checkmate.reset", "admin", resumed)], logs
