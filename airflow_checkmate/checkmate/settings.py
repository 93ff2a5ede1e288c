"""Where CheckMate keeps things when nothing explicit is given: environment variables, else the embedded default.

Each setting is resolved on its own, in this order: an explicit argument; the Airflow connection
``checkmate_default`` (read by the provider's hook, when Airflow is installed); the environment
variables below; the embedded default, local files and SQLite under ``$AIRFLOW_HOME/checkmate``
(``~/.checkmate`` when AIRFLOW_HOME is unset).
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_BASE_URL = "CHECKMATE_BASE_URL"
ENV_DATABASE_URL = "CHECKMATE_DATABASE_URL"
ENV_ALLOWED_FACTORIES = "CHECKMATE_ALLOWED_FACTORIES"
DEFAULT_CONN_ID = "checkmate_default"


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


def resolve(conn_id: str = DEFAULT_CONN_ID) -> StorageSettings:
    """Settings from the Airflow connection ``conn_id`` when Airflow is installed, else the environment."""
    try:
        from airflow_checkmate.hooks.checkmate import CheckMateHook
    except ImportError:
        return from_environment()
    return CheckMateHook(checkmate_conn_id=conn_id).settings
