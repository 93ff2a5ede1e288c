"""Runs of ``support.run_task`` in child processes that start in milliseconds, to be killed at will.

The children are forked from a multiprocessing "forkserver" that has the engine (and the backends' heavy
imports) pre-imported: a plain ``python -m`` start costs about a second, longer than a whole task, so kills
could not be spread over the work. Each child writes its stdout to a file (stderr next to it) and exits
with the runner's code; a SIGKILLed child exits with ``-SIGKILL``.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import sys
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path

CORE_PRELOAD = ["support.run_task", "reliability.kill_child", "airflow_checkmate.checkmate.io.sql", "psycopg"]
# The S3 backend's imports (Airflow's ObjectStoragePath, s3fs) take a second a process: preload them only
# when a campaign uses S3, since they slow every fork's first garbage collection.
S3_PRELOAD = ["airflow.sdk", "s3fs", "airflow_checkmate.checkmate.io.objectstorage"]


def child_main(argv: list[str], out_path: str, env: dict[str, str]) -> None:
    """Runs in the forked child: the task runner with ``argv``, stdout in ``out_path``, its code as exit code."""
    # The inherited objects (the pre-imported modules) are never garbage: without this, the first full
    # collection walks them all and copies the forkserver's heap page by page (~100 ms a run).
    gc.freeze()
    os.environ.update(env)
    for target, path in ((1, out_path), (2, out_path + ".err")):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, target)
        os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    from support import run_task

    sys.exit(run_task.main(argv))


def forkserver(s3: bool = False) -> BaseContext:
    """The process's forkserver context, preloading the engine (and the S3 stack if ``s3``).

    The preload list is fixed when the forkserver first starts (once per parent process).
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(CORE_PRELOAD + (S3_PRELOAD if s3 else []))
    return ctx


def start(ctx: BaseContext, argv: list[str], out_path: Path, env: dict[str, str] | None = None) -> BaseProcess:
    """Start one run of the task runner; ``env`` is added to the forkserver's environment."""
    proc: BaseProcess = ctx.Process(target=child_main, args=(argv, str(out_path), env or {}))  # type: ignore[attr-defined]
    proc.start()
    return proc


def kill(proc: BaseProcess) -> bool:
    """SIGKILL ``proc`` if it still runs (stopped or not); True if the signal was sent."""
    if proc.exitcode is not None or proc.pid is None:
        return False
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended just now: then it was not killed
        return False
    return True


def reap(*procs: BaseProcess) -> None:
    """Leave no child running, stopped or unreaped (call in a ``finally``)."""
    for proc in procs:
        with contextlib.suppress(Exception):
            if proc.exitcode is None:
                kill(proc)
            proc.join(30)


def output(out_path: Path) -> str:
    """What a run printed (empty if it printed nothing before it was killed)."""
    return out_path.read_text() if out_path.exists() else ""


def resume(proc: BaseProcess) -> None:
    """SIGCONT a process paused with SIGSTOP."""
    if proc.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
