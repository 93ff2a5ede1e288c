"""Aimed kill campaign on the file journal: SIGKILL a writer mid-append, between append and fdatasync, and
mid-compaction, many times each, and check that no acknowledged checkpoint is lost and nothing is corrupt.

A child process (``--child``) takes the task's lease over (as a new holder does), reads the stored state and
commits numbered checkpoints with its fence, each one ``task.json`` (the number), one of four stage objects
(the number and a filler, 1 KB to 8 MB) and a cancel request written or removed, and compacts every fifth;
after each commit returns it appends the number to an acknowledgement file. The campaign aims each kill:
at an append (it watches the journal grow past its last complete record), at an ``fdatasync`` or a
compaction (it samples ``/proc``, see :mod:`reliability.kill_landing`), or at a random moment; then it
replays the journal with a fresh reader and checks:

- the journal replays (violation: *corrupt*), and it holds exactly one checkpoint: every object agrees
  with ``task.json``'s number (*torn checkpoint*);
- that number is the last acknowledged one or the one in flight (*acknowledged checkpoints lost*);
- once a writer is let finish an append, the journal is within twice the live objects plus the slack and
  one record (*over the disk bound*; after kills, compactions cut short one after another, it may be more:
  the ratio is reported).

Where each kill landed is reported from what it left (a torn tail, a compaction's temp file, a record
written but not acknowledged) and from the sample taken just before it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from airflow_checkmate.checkmate import Fence, PersistenceDataNotFoundException, TaskIOFile
from airflow_checkmate.checkmate.io.journal import COMPACT_SLACK, JOURNAL_NAME, TMP_SUFFIX
from airflow_checkmate.checkmate.io.journal_format import FRAME_SIZE, HEADER_SIZE, replay_file
from reliability.kill_landing import in_flight, left_behind
from reliability.report import Report

LOCK = "t/task.lock"
SIZES = (1_000, 200_000, 2_000_000, 8_000_000)
TARGETS = ("append", "fdatasync", "compaction", "random")
SLOTS = 4


def payload(version: int, size: int) -> bytes:
    return f"{version}|".encode() + bytes([version % 251]) * size


def child(base: str, ack_path: str, seed: int) -> None:
    """Take the lease over and commit numbered checkpoints until killed."""
    io = TaskIOFile(base)
    token = uuid.uuid4().hex
    lease = json.dumps({"token": token, "pid": os.getpid()})
    if not io.lease_create(LOCK, lease):
        current = io.lease_read(LOCK)
        if current is None or not io.lease_swap(LOCK, current, lease):
            raise SystemExit("could not take the lease over")
    fence = Fence(LOCK, token)
    version = int(io.read_prefix("t/").get("t/task.json", b"0"))
    rng = random.Random(seed)
    ack = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    while True:
        version += 1
        writes: list[tuple[str, bytes | None]] = [
            ("t/task.json", str(version).encode()),
            (f"t/s{version % SLOTS}.stage.json", payload(version, rng.choice(SIZES))),
            ("t/cancel.json", b"cancel" if version % 3 == 0 else None),
        ]
        io.commit(writes, fence=fence)
        os.write(ack, f"{version}\n".encode())
        if version % 5 == 0:
            io.compact("t/", fence=fence)


def _acked(path: Path) -> int:
    lines = path.read_bytes().split() if path.exists() else []
    return int(lines[-1]) if lines else 0


def _aim(proc: subprocess.Popen[bytes], target: str, folder: Path, rng: random.Random) -> str:
    """Wait for the moment ``target`` names (up to 5 s), SIGKILL; returns the /proc sample at the kill."""
    tail = _Tail(folder / JOURNAL_NAME)
    deadline = time.monotonic() + (rng.uniform(0.05, 0.6) if target == "random" else 5.0)
    sample = ""
    while time.monotonic() < deadline and proc.poll() is None:
        sample = in_flight(proc.pid, folder)
        if target in ("fdatasync", "compaction") and sample == target:
            break
        if target == "append" and (sample == "append" or tail.torn()):
            sample = sample or "append (torn tail seen)"
            break
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return sample or "none"


class _Tail:
    """Walks the journal's frames as it grows (without checksums: this only aims) to see an append under way."""

    def __init__(self, path: Path) -> None:
        self.path, self.ino, self.end = path, -1, HEADER_SIZE

    def torn(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            st = os.fstat(fd)
            if st.st_ino != self.ino:
                self.ino, self.end = st.st_ino, HEADER_SIZE
            while True:
                frame = os.pread(fd, FRAME_SIZE, self.end)
                if len(frame) < FRAME_SIZE:
                    return bool(frame)
                length = struct.unpack_from(">Q", frame, 4)[0]
                if self.end + FRAME_SIZE + length > st.st_size:
                    return True
                self.end += FRAME_SIZE + length
        finally:
            os.close(fd)


def check(folder: Path, acked: int, problems: list[str]) -> tuple[int, list[str], int]:
    """Check the stored task after a kill; returns its checkpoint number, what the kill left behind and the
    size of its live objects."""
    try:
        stored = replay_file(folder / JOURNAL_NAME)
        evidence = left_behind(folder)
    except (OSError, PersistenceDataNotFoundException) as exc:
        problems.append(f"corrupt: {exc}")
        return acked, [], 0
    version = int(stored.get("task.json", b"0"))
    if version < acked:  # above it: checkpoints written but never acknowledged (killed before the ack)
        problems.append(f"acknowledged checkpoints lost: stored {version}, acknowledged {acked}")
    for name, data in stored.items():
        if name.endswith(".stage.json"):
            number, _, filler = data.partition(b"|")
            v = int(number)
            if v > version or v % SLOTS != int(name[1]) or filler.strip(bytes([v % 251])):
                problems.append(f"torn checkpoint: {name} holds {v} beside task.json {version}")
    slot = f"s{version % SLOTS}.stage.json"
    if version and int(stored.get(slot, b"0|").partition(b"|")[0]) != version:
        problems.append(f"torn checkpoint: {slot} does not hold {version}")
    if ("cancel.json" in stored) != (version > 0 and version % 3 == 0):
        problems.append(
            f"torn checkpoint: cancel.json {'present' if 'cancel.json' in stored else 'absent'} at {version}"
        )
    live = sum(len(n) + len(d) for n, d in stored.items())
    temps = [n for n in os.listdir(folder) if n.startswith(JOURNAL_NAME) and n.endswith(TMP_SUFFIX)]
    if len(temps) > 1:
        problems.append(
            f"more than one journal temp file left ({temps}): compaction does not clear its dead predecessors"
        )
    return version, evidence, live


def _bound_after_a_finished_append(base: Path, problems: list[str]) -> None:
    """Kills can stop compactions one after another (each next writer appends first), so the disk bound is
    checked once a writer is let finish: after its append, the journal is within twice the live objects
    plus the slack and one record."""
    io = TaskIOFile(base)
    stored = io.read_prefix("t/")
    version = int(stored.get("t/task.json", b"0")) + 1
    record = payload(version, max(SIZES))
    io.commit([("t/task.json", str(version).encode()), (f"t/s{version % SLOTS}.stage.json", record)])
    live = sum(len(n) - 2 + len(d) for n, d in io.read_prefix("t/").items() if n != LOCK)
    size = (base / "t" / JOURNAL_NAME).stat().st_size
    bound = HEADER_SIZE + 2 * live + COMPACT_SLACK + len(record) + 1024
    if size > bound:
        problems.append(f"over the disk bound after a finished append: journal {size} > {bound}")


def campaign(kills: int, seed: int) -> int:
    rng = random.Random(seed)
    landed: Counter[str] = Counter()
    sampled: Counter[str] = Counter()
    problems: list[str] = []
    began = time.monotonic()
    acked = 0
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="checkmate-kill-journal-", dir=os.environ.get("CHECKMATE_KILL_DIR")) as tmp:
        base, ack = Path(tmp) / "store", Path(tmp) / "acked"
        folder = base / "t"
        for k in range(kills):
            target = TARGETS[k % len(TARGETS)]
            argv = [sys.executable, "-m", "reliability.kill_journal", "--child", str(base), str(ack), str(seed + k)]
            proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
            sampled[f"{target}: {_aim(proc, target, folder, rng)}"] += 1
            if proc.returncode != -signal.SIGKILL:
                problems.append(f"kill {k}: the writer ended by itself: {proc.stderr.read() if proc.stderr else ''!r}")
            acked = _acked(ack)
            version, evidence, live = check(folder, acked, problems)
            if live:
                ratios.append((folder / JOURNAL_NAME).stat().st_size / live)
            landed["unacknowledged record" if version > acked else "between checkpoints"] += 1
            for item in evidence:
                landed[item] += 1
        _bound_after_a_finished_append(base, problems)
    report = Report(
        f"aimed journal kill campaign: {kills} SIGKILLs, records of {SIZES} bytes, seed {seed}", ["", "file"]
    )
    report.row("kills", kills)
    report.row("last checkpoint acknowledged", acked)
    for name, count in sorted(landed.items()):
        report.row(f"  left: {name}", count)
    for name, count in sorted(sampled.items()):
        report.row(f"  aimed at {name}", count)
    report.row("journal / live objects after a kill: median", statistics.median(ratios or [0.0]))
    report.row("journal / live objects after a kill: max", max(ratios or [0.0]))
    report.row("seconds", round(time.monotonic() - began, 1))
    report.row("violations", len(problems))
    for problem in problems:
        report.violation(problem)
    return report.finish()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.kill_journal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=3, metavar=("BASE", "ACK", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
    return campaign(args.kills, args.seed)


if __name__ == "__main__":
    sys.exit(main())
