"""Where CheckMate keeps things when nothing explicit is given: environment variables, else the embedded default.

Each setting is resolved on its own, in this order: an explicit argument; the Airflow connection
``checkmate_default`` (read by a resolver the provider's Airflow layer registers); the environment
variables below; the embedded default, local files and SQLite under ``$AIRFLOW_HOME/checkmate``
(``~/.checkmate`` when AIRFLOW_HOME is unset).
"""

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_checkmate.checkmate.exceptions import TaskEngineException

ENV_BASE_URL = "CHECKMATE_BASE_URL"
ENV_DATABASE_URL = "CHECKMATE_DATABASE_URL"
ENV_ALLOWED_FACTORIES = "CHECKMATE_ALLOWED_FACTORIES"
DEFAULT_CONN_ID = "checkmate_default"


class ConfigurationError(TaskEngineException):
    """The configuration cannot work as written (a connection without base_url, a bad option): fix it, not retry."""


class UnknownConnectionError(ConfigurationError):
    """A connection id was named explicitly but no such connection is defined."""


def default_home() -> Path:
    """The embedded default's folder: ``$AIRFLOW_HOME/checkmate``, or ``~/.checkmate`` without AIRFLOW_HOME."""
    airflow_home = os.environ.get("AIRFLOW_HOME")
    return Path(airflow_home).expanduser() / "checkmate" if airflow_home else Path("~/.checkmate").expanduser()


@dataclass(frozen=True)
class StorageSettings:
    """Resolved settings: stage state storage, the registry database, and backend options."""

    base_url: str
    database_url: str
    options: dict[str, Any] = field(default_factory=dict)
    source: str = "default"


def default_base_url() -> str:
    return os.environ.get(ENV_BASE_URL) or str(default_home() / "state")


def default_database_url() -> str:
    return os.environ.get(ENV_DATABASE_URL) or f"sqlite:///{default_home() / 'registry.db'}"


def from_environment() -> StorageSettings:
    """Settings from CHECKMATE_BASE_URL / CHECKMATE_DATABASE_URL, each else the embedded default."""
    source = "environment" if os.environ.get(ENV_BASE_URL) or os.environ.get(ENV_DATABASE_URL) else "default"
    return StorageSettings(default_base_url(), default_database_url(), source=source)


Resolver = Callable[[str], StorageSettings]
_resolvers: list[Resolver] = []


def register_resolver(resolver: Resolver) -> None:
    """Make ``resolve`` read connections through ``resolver`` (the provider's hook registers one)."""
    if resolver not in _resolvers:
        _resolvers.append(resolver)


def resolve(conn_id: str = DEFAULT_CONN_ID) -> StorageSettings:
    """Settings from the connection ``conn_id`` through the last registered resolver, else the environment.

    The engine imports nothing from Airflow: the provider's Airflow layer registers its resolver (see
    :func:`register_resolver`), so connections are read only where that layer is in use.
    """
    if not _resolvers:
        return from_environment()
    return _resolvers[-1](conn_id)
