"""Apache Airflow provider for CheckMate, a resumable sequential task engine.

The engine lives in :mod:`airflow_checkmate.checkmate` and imports nothing from Airflow.
"""

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

__all__ = ["__version__"]
