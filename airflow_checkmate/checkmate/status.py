"""Stage statuses and the state machine, as data: allowed transitions and one check function."""

from collections.abc import Iterable, Sequence
from enum import Enum

from airflow_checkmate.checkmate.exceptions import TaskEngineException


class StageStatus(str, Enum):
    """Task status enumeration.

    UNBOUND: not bound to a task engine. CREATED: created but not yet started. RUNNING: currently
    running. RETRY: raised and is eligible to be retried. ERROR: raised and cannot be retried.
    COMPLETE: completed successfully. CANCELED: canceled.
    """

    UNBOUND = "UNBOUND"
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    RETRY = "RETRY"
    ERROR = "ERROR"
    COMPLETE = "COMPLETE"
    CANCELED = "CANCELED"

    def __str__(self) -> str:
        return self.value


S = StageStatus

#: Task statuses in which nothing runs any more without a reset.
TERMINAL_STATUSES: frozenset[StageStatus] = frozenset({S.COMPLETE, S.ERROR, S.CANCELED})
#: Stopped before completing: what a reset (with no stage named) makes runnable again.
STOPPED_STATUSES: frozenset[StageStatus] = frozenset({S.ERROR, S.CANCELED})
#: Ended on purpose, so its stored state may go: what ``checkmate clean`` removes by default.
FINISHED_STATUSES: frozenset[StageStatus] = frozenset({S.COMPLETE, S.CANCELED})

#: Transitions that execution and cancel may make.
TRANSITIONS: frozenset[tuple[StageStatus, StageStatus]] = frozenset(
    {
        (S.UNBOUND, S.CREATED),  # bind, nothing stored yet
        (S.CREATED, S.RUNNING),  # execute starts the stage
        (S.RETRY, S.RUNNING),
        (S.RUNNING, S.COMPLETE),  # execute_stage returned
        (S.RUNNING, S.RETRY),  # raised, attempts left
        (S.RUNNING, S.ERROR),  # raised, no attempt left (or rollback failed)
        (S.CREATED, S.CANCELED),
        (S.RUNNING, S.CANCELED),
        (S.RETRY, S.CANCELED),
        (S.RUNNING, S.RUNNING),  # recovery of a stage left RUNNING by a dead process
    }
)

#: Transitions that only an explicit reset may make: a stopped stage becomes runnable again (RETRY,
#: or CREATED for "restart from here", which also covers the RETRY/RUNNING/CREATED stages behind it).
RESET_TRANSITIONS: frozenset[tuple[StageStatus, StageStatus]] = frozenset(
    {(old, S.RETRY) for old in (S.ERROR, S.CANCELED, S.COMPLETE)}
    | {(old, S.CREATED) for old in (S.ERROR, S.CANCELED, S.COMPLETE, S.RETRY, S.RUNNING, S.CREATED)}
)

#: The stage that may stand between the COMPLETE prefix and the CREATED suffix of a task.
_FRONTIER_STATUSES = frozenset({S.CREATED, S.RUNNING, S.RETRY, S.ERROR})


def check_transition(old: StageStatus, new: StageStatus, *, reset: bool = False, stage: str = "") -> None:
    """Raise TaskEngineException unless ``old -> new`` is allowed (``reset``: by an explicit reset)."""
    if (old, new) in TRANSITIONS or (reset and (old, new) in RESET_TRANSITIONS):
        return
    allowed = sorted(n.value for (o, n) in TRANSITIONS if o is old)
    where = f" of stage {stage!r}" if stage else ""
    hint = "; only an explicit reset may do that" if (old, new) in RESET_TRANSITIONS else ""
    raise TaskEngineException(
        f"invalid status transition{where}: {old.value} -> {new.value} "
        f"(allowed from {old.value}: {', '.join(allowed) or 'none'}){hint}"
    )


def check_sequence(statuses: Sequence[StageStatus], names: Sequence[str] | None = None) -> None:
    """Raise TaskEngineException unless the stage statuses form a valid task.

    Valid: all UNBOUND; ``COMPLETE* [X] CREATED*`` with X in CREATED, RUNNING, RETRY, ERROR; or
    ``COMPLETE* CANCELED+ CREATED*`` (a canceled task; the CREATED tail is what a reset leaves while it
    is written back to front, so a reset cut short by a crash still binds, and reset() finishes it).
    """
    n = len(statuses)
    if all(s is S.UNBOUND for s in statuses):
        return
    i = 0
    while i < n and statuses[i] is S.COMPLETE:
        i += 1
    if i < n and statuses[i] is S.CANCELED:
        j = i
        while j < n and statuses[j] is S.CANCELED:
            j += 1
        while j < n and statuses[j] is S.CREATED:
            j += 1
    else:
        j = i + 1 if i < n and statuses[i] in _FRONTIER_STATUSES else i
        while j < n and statuses[j] is S.CREATED:
            j += 1
    if j != n:
        label = names[j] if names else f"#{j + 1}"
        shown = ", ".join(
            f"{names[k] if names else k + 1}={statuses[k].value}" for k in range(max(0, j - 2), min(n, j + 2))
        )
        raise TaskEngineException(
            f"invalid stage sequence at stage {label!r} ({shown}): a task must be COMPLETE stages, then at "
            "most one CREATED/RUNNING/RETRY/ERROR stage, then CREATED stages (or COMPLETE then CANCELED)"
        )


def overall_status(statuses: Iterable[StageStatus]) -> StageStatus:
    """The task's status: all COMPLETE; any RUNNING; RETRY; ERROR; CANCELED; UNBOUND; else CREATED."""
    present = set(statuses)
    if not present or present == {S.COMPLETE}:
        return S.COMPLETE
    for status in (S.RUNNING, S.RETRY, S.ERROR, S.CANCELED, S.UNBOUND):
        if status in present:
            return status
    return S.CREATED
