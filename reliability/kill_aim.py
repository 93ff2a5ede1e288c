"""When the kill campaign sends each SIGKILL: spread over a run's phases by this machine's timing, some aimed
at the file journal's own work (an append, its ``fdatasync``, a compaction) by sampling ``/proc``."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path

from reliability import kill_child
from reliability.kill_landing import in_flight


@dataclass(frozen=True)
class Timing:
    """Seconds measured on this machine (see ``kill.calibrate``), to spread the kills over a run's work."""

    startup: float  # fork to bound
    per_stage: float  # engine work (durable writes) of a stage
    end_plain: float  # execute done to unbound (releasing the lease)
    end_clean: float  # execute done to unbound with unbind(clean=True)


def wait_for_line(path: Path, offset: int, word: str, proc: BaseProcess, timeout: float) -> bool:
    """Poll the journal past byte ``offset`` until a line starting with ``word`` appears (False if the run
    ended or ``timeout`` passed first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.exitcode is None:
        try:
            with path.open("rb") as f:
                f.seek(offset)
                if any(line.startswith(word.encode()) for line in f.read().splitlines()):
                    return True
        except FileNotFoundError:
            pass
        time.sleep(0.0002)
        proc.is_alive()  # reaps it if it ended, so exitcode is set
    return False


def kill_at_random(
    proc: BaseProcess,
    rng: random.Random,
    t: Timing,
    remaining: int,
    sleep: float,
    clean: bool,
    jpath: Path,
    folder: Path | None,
) -> str:
    """15 % of the kills while starting and binding; 15 % just after a stage's code returned (its COMPLETE
    being written: the window is short, so it is aimed at); 45 % anywhere in the remaining stages, a third of
    them (on files) aimed at the journal's work; a quarter once the stages are done (unbind, cleanup). Where
    each kill really landed is judged afterwards; returns the journal work sampled at the kill."""
    r = rng.random()
    offset = jpath.stat().st_size if jpath.exists() else 0
    if folder is not None and 0.6 <= r < 0.75:
        sample = aim(proc, folder, t.startup + remaining * (sleep + t.per_stage))
        kill_child.kill(proc)
        return sample
    if r < 0.15:
        proc.join(rng.uniform(0.001, t.startup))
    elif r < 0.3:
        # At once for half of them: the file journal's COMPLETE append follows the stage's return closely.
        if wait_for_line(jpath, offset, "end", proc, 30) and rng.random() < 0.5:
            time.sleep(rng.uniform(0.0, 0.5 * t.per_stage))
    elif r < 0.75:
        proc.join(t.startup + rng.uniform(0.0, 0.8 * remaining * (sleep + t.per_stage)))
    elif wait_for_line(jpath, offset, "executed", proc, 30):
        time.sleep(rng.uniform(0.0, t.end_clean if clean else 0.8 * t.end_plain))
    sample = in_flight(proc.pid, folder) if proc.pid and folder else ""  # the file journal's work, if any
    kill_child.kill(proc)
    return sample


def aim(proc: BaseProcess, folder: Path, timeout: float) -> str:
    """Wait until ``proc`` is in the journal's work in ``folder`` (an append, its fdatasync or a compaction),
    up to ``timeout`` seconds; returns what was seen ("" if nothing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.pid and proc.exitcode is None:
        sample = in_flight(proc.pid, folder)
        if sample:
            return sample
        proc.is_alive()  # reaps it if it ended, so exitcode is set
    return ""
