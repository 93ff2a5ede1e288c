"""Storage backends behind one interface; :meth:`TaskIO.from_base_url` picks one by URL scheme."""

from airflow_checkmate.checkmate.io.base import BACKENDS, DEFAULT_LEASE_SECONDS, Fence, TaskIO
from airflow_checkmate.checkmate.io.file import TaskIOFile

__all__ = ["BACKENDS", "DEFAULT_LEASE_SECONDS", "Fence", "TaskIO", "TaskIOFile"]
