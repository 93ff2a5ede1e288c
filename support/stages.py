"""Stages for tests: deterministic work, a journal of every run written by the stage code itself.

Stage code execution is counted by the test (the journal file), never by the engine. These classes
live in an importable module so that a task started by one process and resumed by another has the
same stage class paths.
"""

import os
import re
import time
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from airflow_checkmate.checkmate import BaseStage, BaseStageState


class CounterState(BaseStageState[list[int]]):
    """Shared state of the test stages: the values computed so far."""

    values: list[int] = Field(default_factory=list)


def journal(path: str, line: str) -> None:
    """Append one line to a journal; O_APPEND keeps lines whole across processes and kills."""
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_journal(path: str | Path) -> list[list[str]]:
    """The journal's lines, split into words (fail_first needs a journal to count runs in)."""
    if not str(path):
        return []
    try:
        return [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def start_counts(path: str | Path) -> dict[str, int]:
    """How many times each stage's code started, from the journal the stage code wrote."""
    counts: dict[str, int] = {}
    for words in read_journal(path):
        if words[0] == "start":
            counts[words[1]] = counts.get(words[1], 0) + 1
    return counts


def hold_gil(chars: int) -> None:
    """One long C call that never releases the GIL: catastrophic regex backtracking (2**chars steps)."""
    re.match(r"(a+)+$", "a" * chars + "b")


def value_for(stage_name: str, previous: list[int]) -> int:
    """The deterministic value a stage adds, from its name and what came before."""
    return (sum(previous) * 31 + sum(map(ord, stage_name))) % 1_000_003


class JournalStage(BaseStage[CounterState]):
    """Appends ``start NAME ATTEMPT`` and ``end NAME ATTEMPT`` to ``journal_path`` around its work.

    ``fail_first`` makes the first N runs raise (counted in the journal, so across processes);
    ``sleep_seconds`` makes it slow enough to be killed mid-stage (in short sleeps, so that an interruption
    raised into the stage's thread lands at once); ``gil_chars`` > 0 makes it hold the GIL in one C call
    (a regex backtracking over that many characters: about twice as long per character).
    """

    #: Test switches, not inputs: a test may turn them between tries of one task.
    checkmate_identity_exclude: ClassVar[frozenset[str]] = frozenset({"journal_path", "fail_first", "sleep_seconds"})

    journal_path: str = ""
    fail_first: int = 0
    sleep_seconds: float = 0.0
    gil_chars: int = 0

    def runs_so_far(self) -> int:
        return sum(1 for w in read_journal(self.journal_path) if w[:2] == ["start", self.stage_name])

    def execute_stage(self, previous_state_copy: CounterState) -> None:
        runs = self.runs_so_far() if self.fail_first else 0
        journal(self.journal_path, f"start {self.stage_name} {self.state.attempts}")
        end = time.monotonic() + self.sleep_seconds
        while time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        if self.gil_chars:
            hold_gil(self.gil_chars)
        if runs < self.fail_first:
            journal(self.journal_path, f"fail {self.stage_name} {self.state.attempts}")
            raise RuntimeError(f"planned failure {runs + 1}/{self.fail_first} of {self.stage_name}")
        previous = list(previous_state_copy.values)
        if previous_state_copy is not self.state:
            self.state.values = previous
        self.state.values.append(value_for(self.stage_name, previous))
        self.state.result = list(self.state.values)
        journal(self.journal_path, f"end {self.stage_name} {self.state.attempts}")

    def rollback_stage(self) -> None:
        journal(self.journal_path, f"rollback {self.stage_name} {self.state.attempts}")

    def cancel(self) -> None:
        journal(self.journal_path, f"cancel {self.stage_name} {self.state.attempts}")


def make_stages(
    count: int,
    journal_path: str = "",
    sleep_seconds: float = 0.0,
    fail_first: dict[str, int] | None = None,
    gil_chars: dict[str, int] | None = None,
) -> list[JournalStage]:
    """``count`` journal stages named s1..sN."""
    fail_first, gil_chars = fail_first or {}, gil_chars or {}
    return [
        JournalStage(
            stage_name=f"s{i}",
            state=CounterState(),
            journal_path=journal_path,
            sleep_seconds=sleep_seconds,
            fail_first=fail_first.get(f"s{i}", 0),
            gil_chars=gil_chars.get(f"s{i}", 0),
        )
        for i in range(1, count + 1)
    ]


def expected_result(count: int) -> list[int]:
    """The task result of a crash-free run of ``make_stages(count)``."""
    values: list[int] = []
    for i in range(1, count + 1):
        values.append(value_for(f"s{i}", values))
    return values


class BlobState(BaseStageState[bytes]):
    """A state whose result is binary data (stored as base64)."""


class BlobStage(BaseStage[BlobState]):
    """Returns bytes that are not UTF-8: storable, but not something Airflow's XCom takes."""

    def execute_stage(self, previous_state_copy: BlobState) -> None:
        self.state.result = b"\x00\xff\xfeblob"
