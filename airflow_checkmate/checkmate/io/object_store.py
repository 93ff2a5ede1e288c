"""Opening an object store through Airflow's ObjectStoragePath, with errors that say what to install or define."""

from typing import Any

from airflow_checkmate.checkmate.exceptions import TaskIOException


def open_object_store(base_url: str, conn_id: str | None) -> Any:
    """The ``ObjectStoragePath`` of ``base_url`` with the connection's credentials (Airflow imported here)."""
    try:
        from airflow.sdk import ObjectStoragePath

        if conn_id:  # an unknown id would silently mean "no credentials" (and real AWS)
            from airflow.sdk import BaseHook
            from airflow.sdk.exceptions import AirflowNotFoundException

            try:
                BaseHook.get_connection(conn_id)
            except AirflowNotFoundException:
                raise TaskIOException(
                    f"the connection {conn_id!r} for {base_url} is not defined; create it (e.g. type aws)"
                ) from None
        root = ObjectStoragePath(base_url, conn_id=conn_id)
        root.fs  # noqa: B018 - opening the filesystem is what fails for a scheme without its provider
        return root
    except (ImportError, ValueError, AttributeError) as exc:
        raise TaskIOException(
            f"cannot open object storage {base_url}: {exc}. For s3:// install "
            "airflow-provider-checkmate[s3]; for gs:// or abfs:// the Airflow Google or Microsoft Azure provider"
        ) from exc
