"""Checkpoints: how the engine persists stage state, one ``TaskIO.commit`` per checkpoint.

Stage writes may be queued (:meth:`CheckpointMixin.deferred`) so that a stage's COMPLETE goes out with
the next stage's RUNNING in one checkpoint; the queue is committed before any other write and before
stage code runs. Memory never claims what storage lacks: a failed checkpoint reloads the stages in it.
"""

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from airflow_checkmate.checkmate.core import STAGE, STAGE_RESULT, EngineCore, S
from airflow_checkmate.checkmate.models import BaseStageState, TaskEvent
from airflow_checkmate.checkmate.stage import BaseStage
from airflow_checkmate.checkmate.store import Write


class CheckpointMixin(EngineCore[STAGE, STAGE_RESULT]):
    """Writing and re-reading the task's stored state (the binding, control and execution parts use it)."""

    def _write_task_state(self) -> None:
        self.flush([self.store.record_write(self.task_state)])

    def _record_event(self, event: str, message: str, *writes: Write) -> None:
        """Record a task event in the same checkpoint as the pending stage writes and ``writes``."""
        self.task_state.history.append(TaskEvent(event=event, message=message))
        self.flush([*writes, self.store.record_write(self.task_state)])

    def persist_stage(self, stage: BaseStage[Any]) -> None:
        """Checkpoint one stage's state (queued with the next checkpoint while the engine defers).

        The state is serialised here, once; on failure it is reloaded so memory never claims what
        storage lacks. Called by :meth:`BaseStage.update_status`.
        """
        try:
            write = self.store.stage_write(stage.stage_name, stage.state)
        except BaseException as exc:
            self._resync_stage(stage, exc)
            raise
        self._pending.append((stage, write))
        if not self._defer:
            self.flush()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Queue the stage writes made in the block for the next checkpoint (:meth:`flush`) instead of each its own.

        If the block raises, what it queued is dropped and those stages are reloaded from storage.
        """
        outer, self._defer, start = self._defer, True, len(self._pending)
        try:
            yield
        except BaseException as exc:
            dropped, self._pending = self._pending[start:], self._pending[:start]
            for stage, _ in dropped:
                self._resync_stage(stage, exc)
            raise
        finally:
            self._defer = outer

    def flush(self, writes: Sequence[Write] = ()) -> None:
        """Commit the pending stage writes, then ``writes``, as one checkpoint; then the update hooks."""
        pending, self._pending = self._pending, []
        if not pending and not writes:
            return
        try:
            self.store.commit([w for _, w in pending] + list(writes), self._fence)
        except BaseException as exc:
            for stage, _ in pending:
                self._resync_stage(stage, exc)
            raise
        for _ in pending:
            self.state_update_hook()

    def _resync_stage(self, stage: BaseStage[Any], cause: BaseException) -> None:
        try:
            state = self.read_stored_state(stage)
        except Exception:
            self._desynced = (
                f"task {self.task_id!r}: persisting stage {stage.stage_name!r} failed ({cause!r}) and its "
                "stored state could not be re-read; unbind and bind again"
            )
            return
        stage.state = self.fresh_state(stage.stage_name) if state is None else state

    def state_update_hook(self) -> None:
        """Called after every persisted stage update; subclasses override it (the managed task does)."""

    def fresh_state(self, stage_name: str) -> BaseStageState[Any]:
        """A copy of the stage's template state, as a stage that was never started has it (CREATED)."""
        state: BaseStageState[Any] = self._templates[self._stage_index[stage_name]].state.model_copy(deep=True)
        state.stage_name, state.status = stage_name, S.CREATED
        return state

    def read_stored_state(self, stage: BaseStage[Any]) -> BaseStageState[Any] | None:
        """The stage's state as stored, or None if nothing is stored for it yet.

        Raises PersistenceDataNotFoundException (leaving the object in place) if it does not parse or
        belongs to another stage.
        """
        raw = self.store.read_stage(stage.stage_name)
        return None if raw is None else self.parse_stage(stage, raw)

    def parse_stage(self, stage: BaseStage[Any], raw: bytes) -> BaseStageState[Any]:
        """A stored stage as the template's state class (see :meth:`TaskStore.parse_stage`)."""
        return self.store.parse_stage(stage.stage_name, type(stage.state), raw, self.fresh_state)
