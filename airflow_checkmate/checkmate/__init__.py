"""CheckMate: a resumable, sequential, multi-stage task engine with checkpointed stage state.

Imports nothing from Airflow. A task is an ordered list of stages; each stage's state is persisted at
every status change, and a task bound again resumes at the first stage that is not COMPLETE.
"""

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
from airflow_checkmate.checkmate.models import (
    BaseStageState,
    StageStateHistoryEntry,
    TaskEngineState,
    TaskEvent,
)
from airflow_checkmate.checkmate.names import STAGE_NAME_MAX_LENGTH, TASK_ID_MAX_LENGTH
from airflow_checkmate.checkmate.policy import RetryPolicy
from airflow_checkmate.checkmate.registry import DEFAULT_QUEUE_NAME, TaskRecord, TaskRegistry
from airflow_checkmate.checkmate.snapshot import StageView, TaskSnapshot, read_snapshot
from airflow_checkmate.checkmate.stage import BaseStage
from airflow_checkmate.checkmate.status import StageStatus

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
