"""The lease watcher: a helper process that renews this process's bind leases without needing its GIL.

A stage that holds the GIL in one long C call (``sorted`` or ``json.loads`` on big data, a regex
backtracking) starves the in-process heartbeat thread; were the lease to expire then, another binder
would take over a live holder and the stage would run twice at once. So each process that holds a
lease starts one watcher (a Python child running :func:`serve`) when it first tries to take a lease,
so that it has finished starting by the time stage code runs, tells it over a pipe which leases it
holds, and the watcher renews them while this process is alive and running.

The watcher renews a lease only while the lease still carries the holder's token (compare-and-swap on
the text it read), never creates one, and stops renewing at once when its parent is gone, a zombie or
stopped (SIGSTOP): a dead or frozen holder's lease still expires. It exits when its pipe closes (the
parent exited or was killed) or its parent changes. Stores that cannot be reopened in another
process (object storage, whose credentials are an Airflow connection) are renewed by the thread only.
"""

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any

from airflow_checkmate.checkmate.io.base import TaskIO, lease_token

_POLL_SECONDS = 0.25
_mutex = threading.Lock()
_process: tuple[int, "subprocess.Popen[bytes]"] | None = None  # (owner pid, watcher)


# The watcher imports only what renewing needs: the engine package stands in as a bare namespace, so its
# __init__ (the whole engine, pydantic, SQLAlchemy) is not imported just to start it. Costs ~0.05 s of
# CPU on files instead of ~0.6 s; a PostgreSQL store adds SQLAlchemy.
_COMMAND = """
import importlib.util, sys, types
name = "airflow_checkmate.checkmate"
spec = importlib.util.find_spec(name)
package = types.ModuleType(name)
package.__path__, package.__spec__ = list(spec.submodule_search_locations), spec
sys.modules[name] = package
from airflow_checkmate.checkmate.lease_watch import serve
sys.exit(serve(int(sys.argv[1])))
"""


def _watcher() -> "subprocess.Popen[bytes] | None":
    """This process's watcher, started on first use (a forked child starts its own)."""
    global _process
    if _process is not None and _process[0] == os.getpid() and _process[1].poll() is None:
        return _process[1]
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _COMMAND, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            close_fds=True,
        )
    except OSError as exc:
        print(f"checkmate: cannot start the lease watcher ({exc}); leases are renewed by a thread", file=sys.stderr)
        return None
    _process = (os.getpid(), proc)
    return proc


def _send(message: dict[str, Any]) -> bool:
    with _mutex:
        for _ in range(2):  # a watcher that died is replaced once
            proc = _watcher()
            if proc is None or proc.stdin is None:
                return False
            try:
                proc.stdin.write(json.dumps(message).encode() + b"\n")
                proc.stdin.flush()
                return True
            except OSError:
                proc.kill()
                proc.wait()
        return False


def prepare(io: TaskIO) -> None:
    """Start this process's watcher now if ``io`` can be watched (it takes a moment to import)."""
    if io.reopen_args() is not None:
        with _mutex:
            _watcher()


def hold(io: TaskIO, lock_name: str, token: str, every: float) -> bool:
    """Have the watcher renew this lease every ``every`` seconds; False if it cannot (the thread still does)."""
    reopen = io.reopen_args()
    if reopen is None:
        return False
    url, options = reopen
    return _send({"op": "hold", "url": url, "options": options, "lock": lock_name, "token": token, "every": every})


def drop(token: str) -> None:
    """Stop renewing a lease (released or lost); the watcher also stops by itself once the token is gone."""
    if _process is not None and _process[0] == os.getpid():
        _send({"op": "drop", "token": token})


# --------------------------------------------------------------------------- the watcher process


def _running(pid: int) -> bool:
    """The parent is there and making progress: not gone, not a zombie, not stopped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return os.getppid() == pid
    return stat[stat.rfind(")") + 2 :][:1] not in ("T", "t", "Z", "X")


def _renew(io: TaskIO, lock_name: str, token: str, parent: int) -> bool | None:
    """Push the lease's heartbeat forward; None if the token is gone (stop), False if not now (raced, or paused)."""
    raw = io.lease_read(lock_name)
    if raw is None or lease_token(raw) != token:
        return None
    record = json.loads(raw)
    record["heartbeat_at"] = max(time.time(), float(record.get("heartbeat_at", 0.0)))
    if not _running(parent):  # checked again right before the write: a holder stopped meanwhile gets no renewal
        return False
    return io.lease_swap(lock_name, raw, json.dumps(record, separators=(",", ":")))


def serve(parent: int, stdin: IO[bytes] | None = None) -> int:
    """The watcher's loop: read hold/drop messages, renew what is due while ``parent`` runs; exit with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent; the watcher follows it
    holds: dict[str, dict[str, Any]] = {}
    stores: dict[str, TaskIO] = {}
    pending = b""
    fd = (stdin or sys.stdin.buffer).fileno()
    while True:
        readable, _, _ = select.select([fd], [], [], _POLL_SECONDS)
        if readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                return 0  # the parent closed the pipe: it exited or was killed
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                message = json.loads(line)
                if message["op"] == "hold":
                    holds[message["token"]] = {**message, "due": time.monotonic() + message["every"]}
                else:
                    holds.pop(message["token"], None)
        if os.getppid() != parent:
            return 0
        if not _running(parent):
            continue
        for token, held in list(holds.items()):
            if time.monotonic() < held["due"]:
                continue
            key = json.dumps([held["url"], held["options"]], sort_keys=True)
            try:
                if key not in stores:
                    stores[key] = TaskIO.from_base_url(held["url"], **held["options"])
                renewed = _renew(stores[key], held["lock"], token, parent)
            except Exception as exc:  # keep trying through transient storage errors, once a second
                print(f"checkmate lease watcher: renewing {held['lock']} failed: {exc!r}", file=sys.stderr)
                held["due"] = time.monotonic() + min(1.0, held["every"])
                continue
            if renewed is None:
                del holds[token]
            elif renewed:
                held["due"] = time.monotonic() + held["every"]
