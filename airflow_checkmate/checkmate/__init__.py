"""CheckMate: a resumable, sequential, multi-stage task engine with checkpointed stage state.

Imports nothing from Airflow. A task is an ordered list of stages; each stage's state is persisted at
every status change, and a task bound again resumes at the first stage that is not COMPLETE.

The names below are imported on first use (PEP 562), so ``import airflow_checkmate.checkmate`` stays
cheap: SQLAlchemy loads only with the registry or a database backend, the engine only when used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_checkmate.checkmate.engine import CheckMateEngine
    from airflow_checkmate.checkmate.exceptions import (
        BindException,
        LeaseLostException,
        MissingStateException,
        PersistenceDataNotFoundException,
        StageInterrupted,
        TaskEngineException,
        TaskIOException,
    )
    from airflow_checkmate.checkmate.io import Fence, TaskIO, TaskIOFile
    from airflow_checkmate.checkmate.io.sql import TaskIOSQL
    from airflow_checkmate.checkmate.managed import CheckMate
    from airflow_checkmate.checkmate.models import BaseStageState, StageStateHistoryEntry, TaskEngineState, TaskEvent
    from airflow_checkmate.checkmate.names import STAGE_NAME_MAX_LENGTH, TASK_ID_MAX_LENGTH
    from airflow_checkmate.checkmate.policy import RetryPolicy
    from airflow_checkmate.checkmate.registry import DEFAULT_QUEUE_NAME, TaskRecord, TaskRegistry
    from airflow_checkmate.checkmate.snapshot import StageView, TaskSnapshot, read_snapshot
    from airflow_checkmate.checkmate.stage import BaseStage
    from airflow_checkmate.checkmate.status import StageStatus

#: public name -> the module that defines it
_LAZY: dict[str, str] = {
    "CheckMateEngine": "airflow_checkmate.checkmate.engine",
    "BindException": "airflow_checkmate.checkmate.exceptions",
    "LeaseLostException": "airflow_checkmate.checkmate.exceptions",
    "MissingStateException": "airflow_checkmate.checkmate.exceptions",
    "PersistenceDataNotFoundException": "airflow_checkmate.checkmate.exceptions",
    "StageInterrupted": "airflow_checkmate.checkmate.exceptions",
    "TaskEngineException": "airflow_checkmate.checkmate.exceptions",
    "TaskIOException": "airflow_checkmate.checkmate.exceptions",
    "Fence": "airflow_checkmate.checkmate.io",
    "TaskIO": "airflow_checkmate.checkmate.io",
    "TaskIOFile": "airflow_checkmate.checkmate.io",
    "TaskIOSQL": "airflow_checkmate.checkmate.io.sql",
    "CheckMate": "airflow_checkmate.checkmate.managed",
    "BaseStageState": "airflow_checkmate.checkmate.models",
    "StageStateHistoryEntry": "airflow_checkmate.checkmate.models",
    "TaskEngineState": "airflow_checkmate.checkmate.models",
    "TaskEvent": "airflow_checkmate.checkmate.models",
    "STAGE_NAME_MAX_LENGTH": "airflow_checkmate.checkmate.names",
    "TASK_ID_MAX_LENGTH": "airflow_checkmate.checkmate.names",
    "RetryPolicy": "airflow_checkmate.checkmate.policy",
    "DEFAULT_QUEUE_NAME": "airflow_checkmate.checkmate.registry",
    "TaskRecord": "airflow_checkmate.checkmate.registry",
    "TaskRegistry": "airflow_checkmate.checkmate.registry",
    "StageView": "airflow_checkmate.checkmate.snapshot",
    "TaskSnapshot": "airflow_checkmate.checkmate.snapshot",
    "read_snapshot": "airflow_checkmate.checkmate.snapshot",
    "BaseStage": "airflow_checkmate.checkmate.stage",
    "StageStatus": "airflow_checkmate.checkmate.status",
}

__all__ = [
    "DEFAULT_QUEUE_NAME",
    "STAGE_NAME_MAX_LENGTH",
    "TASK_ID_MAX_LENGTH",
    "BaseStage",
    "BaseStageState",
    "BindException",
    "CheckMate",
    "CheckMateEngine",
    "Fence",
    "LeaseLostException",
    "MissingStateException",
    "PersistenceDataNotFoundException",
    "RetryPolicy",
    "StageInterrupted",
    "StageStateHistoryEntry",
    "StageStatus",
    "StageView",
    "TaskEngineException",
    "TaskEngineState",
    "TaskEvent",
    "TaskIO",
    "TaskIOException",
    "TaskIOFile",
    "TaskIOSQL",
    "TaskRecord",
    "TaskRegistry",
    "TaskSnapshot",
    "read_snapshot",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
