"""Waiting on conditions and child processes in tests and campaigns, leaving nothing running behind."""

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from support.stages import read_journal


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 5 ms until it is true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def journal_has(path: Path, *words: str) -> bool:
    """Whether a stage journal has a line starting with ``words``."""
    return any(line[: len(words)] == list(words) for line in read_journal(path))


def proc_state(pid: int) -> str:
    """A process's state letter from /proc (R, S, T, Z...)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2]


@contextlib.contextmanager
def reaped(*procs: subprocess.Popen[str]) -> Iterator[None]:
    """Whatever happens in the test, leave no child running, stopped or unreaped."""
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
