"""Checkpoint: the changes one ``TaskIO.commit`` applies, reduced to each object's final state, in order."""

from collections.abc import Sequence
from dataclasses import dataclass

from airflow_checkmate.checkmate.names import validate_obj_name


@dataclass(frozen=True)
class Checkpoint:
    """Each touched object's last change (bytes, or None for a removal), ordered by when that change came.

    A backend that applies the changes one by one keeps this order, so a crash leaves a prefix of the
    caller's order applied (which the caller makes a valid task).
    """

    changes: dict[str, bytes | None]

    @classmethod
    def of(cls, changes: Sequence[tuple[str, bytes | str | None]]) -> "Checkpoint":
        """Validate every name (before any storage call) and keep each name's last change."""
        final: dict[str, bytes | None] = {}
        for name, data in changes:
            validate_obj_name(name)
            final.pop(name, None)  # a later change of a name moves it to its place in the order
            final[name] = data.encode("utf-8") if isinstance(data, str) else data
        return cls(final)

    @property
    def writes(self) -> dict[str, bytes]:
        """Objects written, name -> bytes."""
        return {n: d for n, d in self.changes.items() if d is not None}

    @property
    def removals(self) -> tuple[str, ...]:
        """Objects removed."""
        return tuple(n for n, d in self.changes.items() if d is None)
