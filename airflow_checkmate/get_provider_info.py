"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point."""

from typing import Any

from airflow_checkmate import __version__


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-checkmate",
        "name": "CheckMate",
        "description": "Resumable, checkpointed, multi-stage tasks: each Airflow try resumes at the stage "
        "where the last one stopped.",
        "versions": [__version__],
        "integrations": [{"integration-name": "CheckMate", "tags": ["software"]}],
        "operators": [{"integration-name": "CheckMate", "python-modules": ["airflow_checkmate.operators.checkmate"]}],
        "sensors": [{"integration-name": "CheckMate", "python-modules": ["airflow_checkmate.sensors.checkmate"]}],
        "hooks": [{"integration-name": "CheckMate", "python-modules": ["airflow_checkmate.hooks.checkmate"]}],
        "triggers": [{"integration-name": "CheckMate", "python-modules": ["airflow_checkmate.triggers.checkmate"]}],
        "extra-links": ["airflow_checkmate.links.checkmate.CheckMateStateLink"],
        "connection-types": [
            {
                "connection-type": "checkmate",
                "hook-class-name": "airflow_checkmate.hooks.checkmate.CheckMateHook",
                "hook-name": "CheckMate",
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "schema", "port", "login", "password"],
                    "relabeling": {},
                    "placeholders": {
                        "extra": '{"base_url": "postgresql://checkmate@db/checkmate", '
                        '"database_url": "postgresql://checkmate@db/checkmate", "lease_seconds": 30}'
                    },
                },
                "conn-fields": {
                    "base_url": {
                        "label": "Storage base URL",
                        "description": "Where stage state is kept: file:///path, a plain path, "
                        "s3://bucket/prefix, postgresql://user:password@host/db or sqlite:////path/state.db",
                        "schema": {"type": ["string", "null"]},
                    },
                    "database_url": {
                        "label": "Registry database URL",
                        "description": "The managed-task registry: postgresql://user:password@host/db or "
                        "sqlite:////path/registry.db (default: SQLite under $AIRFLOW_HOME/checkmate)",
                        "schema": {"type": ["string", "null"]},
                    },
                    "storage_conn_id": {
                        "label": "Object storage connection id",
                        "description": "For an s3:// base URL: the Airflow connection with the store's credentials "
                        "(an aws connection; its extra may set endpoint_url)",
                        "schema": {"type": ["string", "null"]},
                    },
                    "lease_seconds": {
                        "label": "Lock lease (seconds)",
                        "description": "A lock without a heartbeat for this long is taken over (default 30)",
                        "schema": {"type": ["number", "null"], "minimum": 1},
                    },
                    "durable": {
                        "label": "Durable writes (fsync)",
                        "description": "fsync every checkpoint (default true)",
                        "schema": {"type": ["boolean", "null"]},
                    },
                },
            }
        ],
    }
