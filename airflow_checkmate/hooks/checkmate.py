"""CheckMateHook: an Airflow connection of type ``checkmate`` turned into CheckMate storage and registry."""

from __future__ import annotations

import os
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowNotFoundException

from airflow_checkmate.checkmate import TaskEngineException, TaskIO, TaskIOException
from airflow_checkmate.checkmate.io.base import DEFAULT_LEASE_SECONDS
from airflow_checkmate.checkmate.settings import (
    DEFAULT_CONN_ID,
    ENV_BASE_URL,
    ConfigurationError,
    StorageSettings,
    UnknownConnectionError,
    default_database_url,
    default_home,
    from_environment,
    register_resolver,
)

if TYPE_CHECKING:
    from airflow_checkmate.checkmate.registry import TaskRegistry

__all__ = ["CheckMateConfigError", "CheckMateConnectionNotFound", "CheckMateHook", "default_home"]


class CheckMateConfigError(AirflowFailException):
    """A CheckMate setting that cannot work as written (no base_url, an unknown URL scheme, a bad option).

    No retry can fix it, so a task raising it fails at once instead of waiting out its retries.
    """


class CheckMateConnectionNotFound(AirflowNotFoundException, CheckMateConfigError):
    """The ``checkmate_conn_id`` named is not a defined connection."""


class CheckMateHook(BaseHook):
    """Interact with CheckMate storage through an Airflow connection.

    The connection's extra holds ``base_url`` for stage state (``file:///path``, a plain path,
    ``postgresql://...``, ``sqlite:////path.db``), ``database_url`` for the task registry (SQLite or
    PostgreSQL), ``lease_seconds`` (bind lease, default 30), ``durable`` (fsync writes, default true) and,
    for object storage (``s3://bucket/prefix``), ``storage_conn_id``: the Airflow connection holding that
    store's credentials (an ``aws`` connection, whose extra may set ``endpoint_url``).
    A setting the connection lacks, or all of them when ``checkmate_default`` is not defined, comes from
    CHECKMATE_BASE_URL / CHECKMATE_DATABASE_URL, else the embedded default: files under
    ``$AIRFLOW_HOME/checkmate/state`` and SQLite at ``$AIRFLOW_HOME/checkmate/registry.db``.

    :param checkmate_conn_id: the connection id; ``checkmate_default`` by default.
    """

    conn_name_attr = "checkmate_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "checkmate"
    hook_name = "CheckMate"

    def __init__(self, checkmate_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.checkmate_conn_id = checkmate_conn_id

    @cached_property
    def config(self) -> dict[str, Any]:
        """The connection's extra (with ``base_url`` and ``database_url`` filled in from the fallbacks)."""
        try:
            conn = self.get_connection(self.checkmate_conn_id)
        except AirflowNotFoundException:
            if self.checkmate_conn_id != self.default_conn_name:
                raise CheckMateConnectionNotFound(
                    f"CheckMate connection {self.checkmate_conn_id!r} is not defined; create it (type "
                    f"'checkmate', extra {{\"base_url\": ...}}) or use {self.default_conn_name!r}"
                ) from None
            fallback = from_environment()
            from airflow_checkmate.checkmate.sqldb import safe_url  # SQLAlchemy: only on this path

            self.log.info(
                "No connection %r: using %s and %s (%s)",
                self.checkmate_conn_id,
                fallback.base_url,
                safe_url(fallback.database_url),
                fallback.source,
            )
            return {"base_url": fallback.base_url, "database_url": fallback.database_url, "source": fallback.source}
        extra = dict(conn.extra_dejson)
        base_url = extra.get("base_url") or conn.host
        if not base_url:
            raise CheckMateConfigError(
                f"CheckMate connection {self.checkmate_conn_id!r} has no base_url in its extra (e.g. "
                f"file:///var/lib/checkmate)"
            )
        extra["base_url"] = str(base_url)
        extra["database_url"] = str(extra.get("database_url") or default_database_url())
        extra["source"] = f"connection {self.checkmate_conn_id}"
        return extra

    @cached_property
    def settings(self) -> StorageSettings:
        """The resolved settings: stage state URL, registry URL and backend options."""
        config = self.config
        self._mask_url_password(config["base_url"])
        self._mask_url_password(config["database_url"])
        options: dict[str, Any] = {}
        try:
            lease = config.get("lease_seconds")
            options["lease_seconds"] = DEFAULT_LEASE_SECONDS if lease in (None, "") else float(lease)
        except ValueError as exc:
            raise CheckMateConfigError(f"CheckMate connection {self.checkmate_conn_id!r}: {exc}") from exc
        if config.get("durable") not in (None, ""):
            options["durable"] = _as_bool(config["durable"])
        if config.get("storage_conn_id"):
            options["conn_id"] = str(config["storage_conn_id"])
        return StorageSettings(config["base_url"], config["database_url"], options, config["source"])

    @cached_property
    def io(self) -> TaskIO:
        """The storage backend for the connection's base URL."""
        settings = self.settings
        try:
            return TaskIO.from_base_url(settings.base_url, **settings.options)
        except (TaskEngineException, ValueError) as exc:  # the URL or an option is wrong: permanent
            raise CheckMateConfigError(f"CheckMate connection {self.checkmate_conn_id!r}: {exc}") from exc
        except TaskIOException as exc:  # the store did not answer: a later try may succeed
            raise AirflowException(f"CheckMate connection {self.checkmate_conn_id!r}: {exc}") from exc

    @cached_property
    def registry(self) -> TaskRegistry:
        """The task registry for the connection's database URL."""
        from airflow_checkmate.checkmate.registry import TaskRegistry  # SQLAlchemy: only when a registry is used

        settings = self.settings
        try:
            return TaskRegistry(settings.database_url, durable=settings.options.get("durable", True))
        except TaskEngineException as exc:  # not a database URL, or one CheckMate does not support
            raise CheckMateConfigError(f"CheckMate connection {self.checkmate_conn_id!r}: {exc}") from exc
        except TaskIOException as exc:  # the database did not answer: a later try may succeed
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

    def local_default_warning(self) -> str | None:
        """Why stage state on this machine's disk is a problem, when Airflow may run the next try elsewhere.

        None unless the state goes to the embedded default (no connection, no CHECKMATE_BASE_URL) while
        Airflow's configured executor is not a single-machine one (anything but Local/Sequential).
        """
        if "connection" in self.config["source"] or os.environ.get(ENV_BASE_URL):
            return None
        spread = multi_machine_executors()
        if not spread:
            return None
        return (
            f"CheckMate keeps this task's state in files on this machine ({self.config['base_url']}, the "
            f"embedded default) but Airflow's executor is {', '.join(spread)}: a retry on another worker "
            "cannot see it and starts over. Define the Airflow connection "
            f"{self.checkmate_conn_id!r} (type checkmate, extra base_url postgresql://... or s3://...) in "
            "Airflow's metadata DB, so that every worker reaches the same storage"
        )

    @staticmethod
    def _mask_url_password(url: str) -> None:
        password = urlsplit(url).password if "://" in url else None
        if password:
            from airflow.sdk.log import mask_secret

            mask_secret(password)


SINGLE_MACHINE_EXECUTORS = frozenset({"LocalExecutor", "SequentialExecutor", "DebugExecutor"})


def multi_machine_executors() -> list[str]:
    """The configured Airflow executors (``[core] executor``, a comma-separated list) that span machines."""
    from airflow.sdk import conf

    names = [e.strip() for e in str(conf.get("core", "executor", fallback="") or "").split(",") if e.strip()]
    # "alias:module.Class", "module.Class" or "Class": judge by the class name
    return [n for n in names if n.rpartition(":")[2].rpartition(".")[2] not in SINGLE_MACHINE_EXECUTORS]


def resolve_connection(conn_id: str) -> StorageSettings:
    """``settings.resolve`` through Airflow: an explicitly named connection that is not defined is an error."""
    try:
        return CheckMateHook(checkmate_conn_id=conn_id).settings
    except AirflowNotFoundException as exc:
        raise UnknownConnectionError(str(exc)) from None
    except AirflowException as exc:
        raise ConfigurationError(str(exc)) from None


register_resolver(resolve_connection)


def _as_bool(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
