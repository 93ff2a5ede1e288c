"""What every campaign prints: a table of what was tried and found, and the violations that fail it.

A campaign collects rows (one per case or per kind of event) and violations (anything that must never
happen: a lost or corrupt object, a re-executed stage, two lock holders). ``Report.finish`` prints the
table, then each violation, and returns the exit code: 0 when there were none, 1 otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Report:
    """The table and violations of one campaign."""

    title: str
    columns: Sequence[str]
    rows: list[Sequence[object]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def row(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: a row of {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(cells)

    def violation(self, message: str) -> None:
        self.violations.append(message)

    def check(self, ok: bool, message: str) -> None:
        """Record ``message`` as a violation unless ``ok``."""
        if not ok:
            self.violation(message)

    def render(self) -> str:
        cells = [[str(c) for c in self.columns], *[[_cell(c) for c in row] for row in self.rows]]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        lines = [self.title, ""]
        for index, row in enumerate(cells):
            padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
            lines.append("  ".join(padded))
            if index == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append("")
        if self.violations:
            lines.append(f"VIOLATIONS ({len(self.violations)}):")
            lines.extend(f"  - {v}" for v in self.violations)
        else:
            lines.append("violations: 0")
        return "\n".join(lines)

    def finish(self) -> int:
        """Print the table and violations; 0 when there were none, else 1."""
        print(self.render(), flush=True)
        return 1 if self.violations else 0


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
