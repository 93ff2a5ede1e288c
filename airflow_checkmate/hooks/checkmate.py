"""CheckMateHook: an Airflow connection of type ``checkmate`` turned into CheckMate storage (TaskIO)."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException

from airflow_checkmate.checkmate import TaskEngineException, TaskIO, TaskIOException
from airflow_checkmate.checkmate.io.base import DEFAULT_LEASE_SECONDS


def default_home() -> Path:
    """Where the embedded default keeps its files: ``$AIRFLOW_HOME/checkmate`` (``~/airflow`` unset)."""
    return Path(os.environ.get("AIRFLOW_HOME") or "~/airflow").expanduser() / "checkmate"


class CheckMateHook(BaseHook):
    """Interact with CheckMate storage through an Airflow connection.

    The connection's extra holds ``base_url`` (``file:///path``, a plain path, or any scheme the engine
    supports), ``lease_seconds`` (bind lease, default 30) and ``durable`` (fsync writes, default true).
    With no connection of that id defined, the embedded default is used: local files under
    ``$AIRFLOW_HOME/checkmate/state``.

    :param checkmate_conn_id: the connection id; ``checkmate_default`` by default.
    """

    conn_name_attr = "checkmate_conn_id"
    default_conn_name = "checkmate_default"
    conn_type = "checkmate"
    hook_name = "CheckMate"

    def __init__(self, checkmate_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.checkmate_conn_id = checkmate_conn_id

    @cached_property
    def config(self) -> dict[str, Any]:
        """The storage settings: from the connection, or the embedded default if none is defined."""
        try:
            conn = self.get_connection(self.checkmate_conn_id)
        except AirflowNotFoundException:
            if self.checkmate_conn_id != self.default_conn_name:
                raise AirflowNotFoundException(
                    f"CheckMate connection {self.checkmate_conn_id!r} is not defined; create it (type "
                    f"'checkmate', extra {{\"base_url\": ...}}) or use {self.default_conn_name!r}"
                ) from None
            self.log.info("No connection %r: using local files under %s", self.checkmate_conn_id, default_home())
            return {"base_url": str(default_home() / "state")}
        extra = dict(conn.extra_dejson)
        base_url = extra.get("base_url") or conn.host
        if not base_url:
            raise AirflowException(
                f"CheckMate connection {self.checkmate_conn_id!r} has no base_url in its extra (e.g. "
                f"file:///var/lib/checkmate)"
            )
        extra["base_url"] = str(base_url)
        return extra

    @cached_property
    def io(self) -> TaskIO:
        """The storage backend for the connection's base URL."""
        config = self.config
        base_url = config["base_url"]
        self._mask_url_password(base_url)
        options: dict[str, Any] = {}
        try:
            lease = config.get("lease_seconds")
            options["lease_seconds"] = DEFAULT_LEASE_SECONDS if lease in (None, "") else float(lease)
            if config.get("durable") not in (None, ""):
                options["durable"] = _as_bool(config["durable"])
            return TaskIO.from_base_url(base_url, **options)
        except (TaskEngineException, TaskIOException, ValueError) as exc:
            raise AirflowException(f"CheckMate connection {self.checkmate_conn_id!r}: {exc}") from exc

    def get_conn(self) -> TaskIO:
        """Return the connection's storage backend (TaskIO)."""
        return self.io

    def test_connection(self) -> tuple[bool, str]:
        """Write, read and remove a probe object in the storage; what the UI's Test button runs."""
        probe = "checkmate-connection-test/probe.json"
        try:
            io = self.io
            io.write(probe, '{"probe": true}')
            ok = io.read(probe) == '{"probe": true}'
            io.remove(probe)
            io.prune("checkmate-connection-test/")
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return ok, f"CheckMate storage at {io.base_url} is writable" if ok else "probe read back differently"

    @staticmethod
    def _mask_url_password(url: str) -> None:
        password = urlsplit(url).password if "://" in url else None
        if password:
            from airflow.sdk.log import mask_secret

            mask_secret(password)


def _as_bool(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
