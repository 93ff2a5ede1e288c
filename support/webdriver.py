"""Headless Chromium for UI tests, driven over ChromeDriver's W3C WebDriver protocol on loopback with httpx.

Why not selenium: the tests need a dozen commands (navigate, find, click, type, run a script, switch frame,
cookie, screenshot); speaking the protocol directly takes a page of code and adds no dependency. Debian's
``chromium`` and ``chromium-driver`` packages provide the browser and the driver (``.ci/run`` installs them).
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from support.airflow_stack import free_port

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference


def browser_missing() -> str | None:
    """Why no browser can run here (None when chromium and chromedriver are installed)."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if missing:
        return f"{' and '.join(missing)} not installed: apt-get install -y chromium chromium-driver"
    return None


class Browser:
    """One WebDriver session; ``el`` values are element references as the protocol returns them."""

    def __init__(self, url: str, session: str) -> None:
        self.http = httpx.Client(base_url=f"{url}/session/{session}", timeout=60, trust_env=False)

    def cmd(self, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(method, path, json=body if method == "POST" else None)
        value = response.json().get("value")
        if response.status_code != 200:
            raise AssertionError(f"webdriver {method} {path}: {value}")
        return value

    def get(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    def script(self, source: str, *args: Any) -> Any:
        return self.cmd("POST", "/execute/sync", {"script": source, "args": list(args)})

    def find(self, css: str) -> dict[str, str]:
        return dict(self.cmd("POST", "/element", {"using": "css selector", "value": css}))

    def find_all(self, css: str) -> list[dict[str, str]]:
        return list(self.cmd("POST", "/elements", {"using": "css selector", "value": css}))

    def text(self, element: dict[str, str]) -> str:
        return str(self.cmd("GET", f"/element/{element[ELEMENT]}/text"))

    def click(self, css: str) -> None:
        self.cmd("POST", f"/element/{self.find(css)[ELEMENT]}/click", {})

    def type(self, css: str, text: str) -> None:
        element = self.find(css)[ELEMENT]
        self.cmd("POST", f"/element/{element}/clear", {})
        self.cmd("POST", f"/element/{element}/value", {"text": text})

    def frame(self, css: str | None) -> None:
        """Switch into the iframe matching ``css``; None goes back to the top page."""
        self.cmd("POST", "/frame", {"id": None if css is None else self.find(css)})

    def add_cookie(self, name: str, value: str) -> None:
        self.cmd("POST", "/cookie", {"cookie": {"name": name, "value": value, "path": "/"}})

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.cmd("GET", "/screenshot")))
        return path

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
        """Poll ``check`` until truthy; WebDriver errors (element not there yet) count as not yet."""
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                value = check()
                if value:
                    return value
            except AssertionError as exc:
                last = exc
            time.sleep(0.3)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last})")

    def wait_css(self, css: str, timeout: float = 30) -> dict[str, str]:
        return dict(self.wait(f"an element {css!r}", lambda: self.find(css), timeout))


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 900) -> Iterator[Browser]:
    """A headless Chromium session; the driver and browser are ended when the block ends."""
    port = free_port()
    driver = subprocess.Popen(
        ["chromedriver", f"--port={port}", "--allowed-ips=127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(timeout=60, trust_env=False)
    session = None
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url}/status").json()["value"]["ready"]:
                    break
            if time.monotonic() > deadline:
                raise AssertionError("chromedriver did not start within 30 s")
            time.sleep(0.2)
        args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--window-size={width},{height}",
        ]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {"args": args}}}}
        created = client.post(f"{url}/session", json=caps).json()["value"]
        session = created["sessionId"]
        browser = Browser(url, session)
        yield browser
    finally:
        if session:
            with contextlib.suppress(httpx.HTTPError):
                client.delete(f"{url}/session/{session}")
        driver.terminate()
        try:
            driver.wait(timeout=10)
        except subprocess.TimeoutExpired:
            driver.kill()
        client.close()
