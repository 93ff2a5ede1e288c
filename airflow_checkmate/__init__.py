"""Apache Airflow provider for CheckMate, a resumable sequential task engine.

The engine lives in :mod:`airflow_checkmate.checkmate` and imports nothing from Airflow nor from this
layer; this package registers how settings are read from an Airflow connection (when Airflow is installed).
"""

import importlib.util

from airflow_checkmate.checkmate import settings as _settings

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

__all__ = ["__version__"]


def _airflow_connection(conn_id: str) -> _settings.StorageSettings:
    """Resolve settings through the Airflow connection, importing the hook (and Airflow) only now."""
    from airflow_checkmate.hooks.checkmate import resolve_connection

    return resolve_connection(conn_id)


if importlib.util.find_spec("airflow") is not None:
    # The engine imports nothing from Airflow; this layer injects how connections are read. A plain
    # ``CheckMate()`` in Airflow code reads the connection; the hook module registers its own on import.
    _settings.register_resolver(_airflow_connection)
