"""The engine's exceptions: each names what went wrong and what to do about it."""


class TaskEngineException(Exception):
    """Raised during task engine execution: bad use, bad ids, an invalid state, or a stage in RETRY.

    A stage that failed but can be auto-recovered also raises this ("call execute again"); callers
    tell RETRY from a real failure by the task's ``status``.
    """


class BindException(Exception):
    """Raised when a TaskEngine bind operation fails due to another existing bind."""


class LeaseLostException(BindException):
    """Raised when this engine's bind lease was taken over by another holder.

    The write that noticed it was refused, so the new holder's state is intact. Stop working on
    the task; the new holder resumes it.
    """


class MissingStateException(Exception):
    """Raised when required data is not set in the stage state object."""


class PersistenceDataNotFoundException(Exception):
    """Raised when there was an error loading task data from the persistence store.

    The stored object is missing, unreadable, or does not parse as the expected model; it is left
    in place untouched.
    """


class TaskIOException(Exception):
    """Raised when the storage backend fails to store or remove an object (full disk, I/O error).

    The object's previous stored version, if any, is unchanged.
    """


class StageInterrupted(BaseException):
    """Raised into running stage code by :meth:`CheckMateEngine.interrupt` (e.g. Airflow's ``on_kill``).

    A BaseException, so stage code's ``except Exception`` does not swallow it. The stage is recorded
    as failed by an interruption (RETRY while attempts are left, else ERROR) and stays resumable.
    """


class StateNotStorable(TaskEngineException):
    """Raised when a stage's state cannot be stored as JSON (an unknown type, a lock, invalid UTF-8).

    The message names the task, the stage, the field and the value's type. Raised at construction for
    a template, and recorded as the stage's failure (RETRY or ERROR by its policy) when stage code put
    such a value in the state; the stored state is the one from before that attempt.
    """


class TaskIdentityException(TaskEngineException):
    """Raised at bind when the stored task is not the task being bound, which no retry can change.

    Its definition differs (stages, classes, template fields, inputs), it belongs to another owner,
    or a stored stage no longer parses as the stage's state. Nothing stored was changed; the message
    names what differs and the ``checkmate`` command that gets the task out.
    """


class UnparsableStageState(TaskIdentityException, PersistenceDataNotFoundException):
    """A stored stage's state does not parse as the template's state class (e.g. a field's type changed)."""
