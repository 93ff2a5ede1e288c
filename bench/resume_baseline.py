"""Resume now against resume on main before storage v2, side by side in the same rounds.

"No slower than today" needs today's code running under today's load: a figure recorded on another
day, under another load, cannot tell. So the engine of :data:`BASELINE_COMMIT` (main before storage
v2) is extracted from git (``git archive``) and both engines run in child processes, each resuming its
own copy of a task of N COMPLETE stages (in its own folder or PostgreSQL database: the two stored
formats differ), one resume each per round, driven in turn over a pipe.

Each child runs :mod:`bench.resume` (public API only, so the same probe drives either engine).
Without git or the commit (an archive, a shallow clone), :func:`side_by_side` returns None.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: main before storage v2 (issue 15): "TaskIO.compact: the unbind-time hook ..."
BASELINE_COMMIT = "9f53fc9ad842d7bbf980247a383c268b5a246b64"

#: The child: prepare the task, warm up, print "ready", then one resume per input line.
_CHILD = """
import json, logging, sys, uuid
from airflow_checkmate.checkmate import TaskIO
import resume_probe as probe
logging.getLogger("airflow_checkmate").setLevel(logging.ERROR)
url, complete = sys.argv[1], int(sys.argv[2])
io = TaskIO.from_base_url(url)
task_id = "resume-" + uuid.uuid4().hex[:8]
probe.prepare_in(io, task_id, complete)
probe.resume_in_place(io, task_id, complete)
print("ready", flush=True)
for _ in sys.stdin:
    print(json.dumps(probe.resume_in_place(io, task_id, complete)), flush=True)
"""


def extract(folder: Path, commit: str = BASELINE_COMMIT) -> bool:
    """Write ``commit``'s ``airflow_checkmate`` package into ``folder``; False when git cannot."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit, "airflow_checkmate"], capture_output=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return False
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return True


@contextlib.contextmanager
def child(folder: Path, url: str, complete: int) -> Iterator[subprocess.Popen[str]]:
    """A child resuming a task at ``url`` with the engine importable from ``folder`` (else this tree's)."""
    shutil.copy(ROOT / "bench" / "resume.py", folder / "resume_probe.py")
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, url, str(complete)],
        cwd=folder,  # first on sys.path: an extracted airflow_checkmate there wins over the installed one
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the resume child in {folder} failed to prepare its task (see stderr)")
        yield proc
    finally:
        proc.kill()
        proc.wait()


def one_resume(proc: subprocess.Popen[str]) -> float:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return float(json.loads(proc.stdout.readline()))


def side_by_side(work: Path, urls: tuple[str, str], complete: int, rounds: int) -> dict[str, list[float]] | None:
    """Seconds per resume of ``complete`` stages for "now" and "main", alternating each round.

    ``urls``: where this tree's and the baseline's task are stored. None when the baseline cannot be had.
    """
    now_dir, main_dir = work / "now", work / "main"
    now_dir.mkdir(parents=True)
    main_dir.mkdir(parents=True)
    if not extract(main_dir):
        return None
    samples: dict[str, list[float]] = {"now": [], "main": []}
    with child(now_dir, urls[0], complete) as now, child(main_dir, urls[1], complete) as main:
        procs = {"now": now, "main": main}
        for round_ in range(rounds):
            order = ["now", "main"] if round_ % 2 == 0 else ["main", "now"]
            for name in order:
                samples[name].append(one_resume(procs[name]))
    return samples
