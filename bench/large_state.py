"""Stage state of 1, 10 and 50 MB: time to checkpoint and read it back, and peak memory.

``python -m bench.large_state``. Every run is a fresh child process, so its peak RSS (VmHWM) belongs to
that run alone. A child runs a task of two stages on durable local files:

1. the first stage's state takes a big field (a str, or a list of 1 KB str items) and completes, so
   the engine serialises and writes it; the second stage stops the run (RETRY);
2. a new engine binds the task again (reading and parsing the big state back) and runs the second
   stage, which receives a deep copy of the first stage's state, as stages do.

"write" is the first engine's bind and execute, "resume" the second engine's. The baseline is
the same child with an empty field: imports, engine and small writes. Peak RSS is sampled after the
write phase and, after the peak is reset (/proc/self/clear_refs) with the big value dropped, after the
resume phase. The issue's target: peak RSS < 3x state size + baseline, in both phases. The big value
itself counts once in the write phase: the state holds it, as a real stage's would.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from airflow_checkmate.checkmate import (
    BaseStage,
    BaseStageState,
    CheckMateEngine,
    RetryPolicy,
    TaskEngineException,
    TaskIO,
)

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000
ITEM = 1000  # bytes per item of the list kind
TARGET_FACTOR = 3.0

#: The big value, handed over to the stage that stores it (so the state is its only holder).
_payload: list[Any] = []


class BigState(BaseStageState[Any]):
    blob: str = ""
    items: list[str] = Field(default_factory=list)


class Maker(BaseStage[BigState]):
    """Moves the prepared big value into its state; the engine then checkpoints it."""

    def execute_stage(self, previous_state_copy: BigState) -> None:
        value = _payload.pop() if _payload else None
        if isinstance(value, str):
            self.state.blob = value
        elif isinstance(value, list):
            self.state.items = value


class User(BaseStage[BigState]):
    """Stops the first run (so the task is resumed), checks the big value arrived on the second."""

    #: Benchmark switches, not inputs: the first run stops, the resume checks what arrived.
    checkmate_identity_exclude: ClassVar[frozenset[str]] = frozenset({"stop", "expected"})

    stop: bool = False
    expected: int = 0

    def execute_stage(self, previous_state_copy: BigState) -> None:
        if self.stop:
            raise RuntimeError("stop here; resumed by the next engine")
        got = len(previous_state_copy.blob) + len(previous_state_copy.items) * ITEM
        if got != self.expected:
            raise RuntimeError(f"the big state came back as {got} bytes, expected {self.expected}")


def make_value(size: int, kind: str) -> str | list[str]:
    if kind == "str":
        return "x" * size
    return [f"{i:08d}".ljust(ITEM, "x") for i in range(size // ITEM)]  # distinct objects, as real data


def peak_rss() -> int:
    """This process's peak resident set size (VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def engine(io: TaskIO, size: int, stop: bool) -> CheckMateEngine[Any, Any]:
    templates: list[Any] = [
        Maker(stage_name="make", state=BigState()),
        User(stage_name="use", state=BigState(), stop=stop, expected=size),
    ]
    return CheckMateEngine(io, "big", templates, retry_policy=RetryPolicy.RETRY, max_attempts=3)


def child(size: int, kind: str) -> dict[str, float]:
    """Run the task once in this process; the figures as a dict."""
    logging.getLogger("airflow_checkmate").setLevel(logging.ERROR)
    if kind == "list":
        size -= size % ITEM  # whole items only
    with tempfile.TemporaryDirectory() as tmp:
        io = TaskIO.from_base_url(tmp)
        first = engine(io, size, stop=True)
        if size:
            _payload.append(make_value(size, kind))
        begin = time.perf_counter()
        first.bind()
        with contextlib.suppress(TaskEngineException):
            first.execute()
        write = time.perf_counter() - begin
        first.unbind()
        peak_write = peak_rss()
        del first
        gc.collect()
        resettable = reset_peak()
        second = engine(io, size, stop=False)
        begin = time.perf_counter()
        second.bind()
        second.execute()
        resume = time.perf_counter() - begin
        second.unbind()
        peak_resume = peak_rss() if resettable else float("nan")
    return {"size": size, "write": write, "resume": resume, "peak_write": peak_write, "peak_resume": peak_resume}


def run_child(size: int, kind: str) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.large_state", "--child", str(size), kind],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[1, 10, 50], help="state sizes in MB")
    parser.add_argument("--kinds", nargs="+", choices=["str", "list"], default=["str", "list"])
    parser.add_argument("--rounds", type=int, default=3, help="child runs per row (the median is reported)")
    parser.add_argument("--child", nargs=2, metavar=("BYTES", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1])))
        return 0

    rows: dict[tuple[str, int], list[dict[str, float]]] = {}
    for _ in range(args.rounds):  # interleaved: each round runs every row and its baseline once
        for kind in args.kinds:
            rows.setdefault((kind, 0), []).append(run_child(0, kind))
            for mb in args.sizes_mb:
                rows.setdefault((kind, int(mb * MB)), []).append(run_child(int(mb * MB), kind))

    def med(kind: str, size: int, key: str) -> float:
        return statistics.median(r[key] for r in rows[(kind, size)])

    print(f"Large stage state on durable local files, a fresh child process per run, median of {args.rounds}")
    print(f"target: peak RSS < {TARGET_FACTOR:g}x state size + baseline (write and resume phases)")
    head: tuple[tuple[str, int], ...] = (("MB", 6), ("kind", 5), ("write ms", 9), ("resume ms", 10))
    head += ("peak wr MB", 11), ("peak rs MB", 11), ("base MB", 8), ("extra/size", 16), ("target", 14)
    print(" ".join(f"{h:>{w}}" for h, w in head))
    for kind in args.kinds:
        base_w, base_r = med(kind, 0, "peak_write"), med(kind, 0, "peak_resume")
        for mb in args.sizes_mb:
            size = int(mb * MB)
            real = med(kind, size, "size")
            peak_w, peak_r = med(kind, size, "peak_write"), med(kind, size, "peak_resume")
            over_w, over_r = (peak_w - base_w) / real, (peak_r - base_r) / real
            met = max(over_w, over_r) < TARGET_FACTOR  # NaN (no reset possible) compares False: missed
            cells = (
                f"{mb:>6g} {kind:>5} {med(kind, size, 'write') * 1e3:>9.1f} {med(kind, size, 'resume') * 1e3:>10.1f}",
                f"{peak_w / MB:>11.1f} {peak_r / MB:>11.1f} {base_w / MB:>8.1f}",
                f"{f'{over_w:.2f}x / {over_r:.2f}x':>16} {'target met' if met else 'target missed':>14}",
            )
            print(" ".join(cells))
    print("(extra/size: (peak - baseline) / state size, write phase / resume phase)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
