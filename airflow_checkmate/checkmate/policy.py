"""Retry policy: how many attempts a stage gets, as a small value object."""

from dataclasses import dataclass
from enum import Enum

from airflow_checkmate.checkmate.exceptions import TaskEngineException


class RetryPolicy(str, Enum):
    """What happens when a stage raises.

    ``NONE``: the stage goes to ERROR at once (requires ``max_attempts == 1``).
    ``RETRY``: the stage goes to RETRY while attempts are left, counted across processes.
    """

    NONE = "NONE"
    RETRY = "RETRY"


@dataclass(frozen=True)
class AttemptPolicy:
    """A retry policy with its attempt budget, validated once at construction."""

    retry_policy: RetryPolicy = RetryPolicy.NONE
    max_attempts: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.retry_policy, RetryPolicy):
            raise TaskEngineException(f"retry_policy must be a RetryPolicy (NONE or RETRY), got {self.retry_policy!r}")
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TaskEngineException(f"max_attempts must be an int, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise TaskEngineException(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.retry_policy is RetryPolicy.NONE and self.max_attempts != 1:
            raise TaskEngineException(
                f"RetryPolicy.NONE requires max_attempts == 1 (got {self.max_attempts}); "
                "use RetryPolicy.RETRY to allow more attempts"
            )

    def attempts_left(self, attempts: int) -> bool:
        """True while a stage that has run ``attempts`` times may run again."""
        return self.retry_policy is RetryPolicy.RETRY and attempts < self.max_attempts
