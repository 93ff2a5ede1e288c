"""The HTML shells of the CheckMate pages and the friendly error page, all escaped, all assets from the package.

A page is a small escaped shell; its script fetches the JSON endpoints and builds the rest with DOM calls
(``textContent``, never ``innerHTML``), so stored text can never become markup.
"""

from __future__ import annotations

import html
from typing import Any

from fastapi.responses import HTMLResponse

_ESCAPE = html.escape


def _data(attrs: dict[str, Any]) -> str:
    return " ".join(f'data-{k.replace("_", "-")}="{_ESCAPE(str(v))}"' for k, v in attrs.items() if v is not None)


def _page(root: str, title: str, body: str, script: str | None, data: dict[str, Any]) -> str:
    static = _ESCAPE(f"{root}/static")
    tail = f'<script src="{static}/{script}" defer></script>' if script else ""
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_ESCAPE(title)}</title>"
        f'<link rel="stylesheet" href="{static}/checkmate.css">'
        f'<script src="{static}/common.js"></script>'
        f"{tail}</head>"
        f'<body><main id="checkmate" {_data(data)}>{body}</main></body></html>'
    )


def task_page(
    root: str, title: str, api_url: str, action_url: str | None, dag_id: str, run_id: str | None
) -> HTMLResponse:
    """The task view (the task instance tab and the extra link's page)."""
    body = (
        f'<header class="cm-head"><h1 class="cm-title">{_ESCAPE(title)}</h1>'
        '<span id="cm-status" class="cm-badge"></span><span id="cm-live" class="cm-muted"></span></header>'
        '<p id="cm-error" class="cm-alert" hidden></p>'
        '<section id="cm-body" class="cm-loading">Loading…</section>'
    )
    data = {"root": root, "api": api_url, "actions": action_url, "dag_id": dag_id, "run_id": run_id}
    return HTMLResponse(_page(root, title, body, "task.js", data))


def list_page(root: str, api_url: str, conn_id: str) -> HTMLResponse:
    """The navigation page: every CheckMate task of a DAG the user may read, with filters."""
    body = (
        '<header class="cm-head"><h1 class="cm-title">CheckMate tasks</h1>'
        '<span id="cm-count" class="cm-muted"></span></header>'
        '<form id="cm-filters" class="cm-filters" autocomplete="off">'
        '<label>Status <select name="status"><option value="">any</option>'
        + "".join(f"<option>{s}</option>" for s in ("CREATED", "RUNNING", "RETRY", "ERROR", "COMPLETE", "CANCELED"))
        + "</select></label>"
        '<label>DAG <input name="dag_id" placeholder="dag id"></label>'
        '<label>Tag <input name="tag" placeholder="tag"></label>'
        '<label>Queue <input name="queue" placeholder="queue"></label>'
        '<button type="submit" class="cm-button">Filter</button></form>'
        '<p id="cm-error" class="cm-alert" hidden></p>'
        '<section id="cm-body" class="cm-loading">Loading…</section>'
    )
    return HTMLResponse(
        _page(root, "CheckMate tasks", body, "list.js", {"root": root, "api": api_url, "conn_id": conn_id})
    )


def error_page(root: str, status: int, title: str, message: str) -> HTMLResponse:
    """An error in the UI's style: what went wrong and what to do."""
    body = (
        f'<header class="cm-head"><h1 class="cm-title">{_ESCAPE(title)}</h1>'
        f'<span class="cm-badge" data-status="ERROR">HTTP {status}</span></header>'
        f'<p class="cm-alert" role="alert">{_ESCAPE(message)}</p>'
        f'<p><a class="cm-link" href="{_ESCAPE(root)}/">All CheckMate tasks</a></p>'
    )
    return HTMLResponse(_page(root, title, body, None, {}), status_code=status)
