"""The bind lock as a lease: who holds a task, until when, and the takeover of a dead holder.

A lease records an owner token, host, pid (with the pid's start time, so a reused pid is not taken for
the holder) and a heartbeat that :class:`LeaseKeeper` renews in a background thread. A lease whose
heartbeat is older than its ``lease_seconds``, or whose holder is provably dead (same host, pid gone),
is taken over by compare-and-swap. Writes carry the token as a :class:`Fence`, so a holder whose lease
was taken over cannot overwrite the new holder's state.
"""

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from airflow_checkmate.checkmate.exceptions import BindException, PersistenceDataNotFoundException
from airflow_checkmate.checkmate.io.base import Fence, TaskIO

log = logging.getLogger(__name__)

HOST = socket.gethostname()
_POLL_SECONDS = 0.05


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """``(state, start time)`` of ``pid`` from /proc (Linux), or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _pid_start(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


_own_start: dict[int, str | None] = {}


def _own_pid_start() -> str | None:
    """This process's start time, looked up once per pid (a forked child has its own)."""
    pid = os.getpid()
    if pid not in _own_start:
        _own_start[pid] = _pid_start(pid)
    return _own_start[pid]


class LeaseRecord(BaseModel):
    """The stored lease: which process holds the task and until when."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    token: str
    host: str
    pid: int
    pid_start: str | None = None
    owner: str = ""
    acquired_at: float
    heartbeat_at: float
    lease_seconds: float
    takeovers: int = 0

    def holder_state(self, now: float | None = None) -> Literal["live", "expired", "dead"]:
        """``expired``: no heartbeat within the lease; ``dead``: same host and the pid is gone."""
        if (now if now is not None else time.time()) > self.heartbeat_at + self.lease_seconds:
            return "expired"
        if self.host == HOST and not _pid_alive(self.pid, self.pid_start):
            return "dead"
        return "live"

    def describe(self) -> str:
        age = time.time() - self.heartbeat_at
        who = f" ({self.owner})" if self.owner else ""
        return f"host {self.host} pid {self.pid}{who}, last heartbeat {age:.1f} s ago, lease {self.lease_seconds:g} s"


def _pid_alive(pid: int, start: str | None) -> bool:
    """False only when ``pid`` provably is not the holder: gone, a zombie, or reused by another."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, now_start = stat
    if state == "Z":
        return False  # dead, not yet reaped by its parent
    return start is None or start == now_start


def parse_lease(raw: str, lock_name: str) -> LeaseRecord:
    try:
        return LeaseRecord.model_validate_json(raw)
    except ValidationError as exc:
        raise PersistenceDataNotFoundException(
            f"lease object {lock_name!r} does not parse ({exc.error_count()} error(s)); it was left in "
            "place. If no process holds the task, remove it (`checkmate unlock`) and bind again"
        ) from exc


def _new_record(
    io: TaskIO, owner: str, takeovers: int = 0, token: str | None = None, acquired_at: float | None = None
) -> LeaseRecord:
    now = time.time()
    return LeaseRecord(
        token=token or uuid.uuid4().hex,
        host=HOST,
        pid=os.getpid(),
        pid_start=_own_pid_start(),
        owner=owner,
        acquired_at=acquired_at or now,
        heartbeat_at=now,
        lease_seconds=io.lease_seconds,
        takeovers=takeovers,
    )


def acquire(
    io: TaskIO,
    lock_name: str,
    timeout: float | None,
    owner: str = "",
) -> tuple["LeaseKeeper", LeaseRecord | None]:
    """Take the lease, waiting up to ``timeout`` seconds (None: fail at once) for a live holder.

    Returns the keeper (not yet started) and the record of a dead or expired holder taken over.
    """
    deadline = time.monotonic() + (timeout or 0.0)
    while True:
        mine = _new_record(io, owner)
        raw = mine.model_dump_json()
        if io.lease_create(lock_name, raw):
            return LeaseKeeper(io, lock_name, mine, raw), None
        current_raw = io.lease_read(lock_name)
        if current_raw is None:
            continue  # released between our create and read
        current = parse_lease(current_raw, lock_name)
        state = current.holder_state()
        if state != "live":
            mine = _new_record(io, owner, takeovers=current.takeovers + 1, token=mine.token)
            raw = mine.model_dump_json()
            if io.lease_swap(lock_name, current_raw, raw):
                log.warning("took over the bind lease %s from a %s holder: %s", lock_name, state, current.describe())
                return LeaseKeeper(io, lock_name, mine, raw), current
            continue
        if time.monotonic() >= deadline:
            waited = f" after waiting {timeout:g} s" if timeout else ""
            raise BindException(
                f"task lock {lock_name!r} is held by a live process{waited}: {current.describe()}. "
                "Wait for it to finish, pass bind_lock_timeout to wait longer, or if that process is "
                "gone for good, the lease expires by itself"
            )
        time.sleep(min(_POLL_SECONDS, max(0.0, deadline - time.monotonic())))


class LeaseKeeper:
    """Holds one lease: renews its heartbeat in a daemon thread, fences writes, releases it."""

    def __init__(self, io: TaskIO, lock_name: str, record: LeaseRecord, raw: str) -> None:
        self.io = io
        self.lock_name = lock_name
        self.record = record
        self.fence = Fence(lock_name, record.token)
        self._raw = raw
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, on_tick: Callable[[], None] | None = None, tick_seconds: float = 1.0) -> None:
        """Start renewing every third of the lease; ``on_tick`` runs every ``tick_seconds`` too."""
        self._thread = threading.Thread(
            target=self._run,
            args=(on_tick, tick_seconds),
            name=f"checkmate-lease-{self.lock_name}",
            daemon=True,
        )
        self._thread.start()

    def _run(self, on_tick: Callable[[], None] | None, tick_seconds: float) -> None:
        renew_every = self.record.lease_seconds / 3
        wait = min(tick_seconds, renew_every)
        next_renew = time.monotonic() + renew_every
        while not self._stop.wait(wait):
            try:
                if on_tick is not None:
                    on_tick()
                if time.monotonic() >= next_renew:
                    self.renew()
                    next_renew = time.monotonic() + renew_every
            except Exception:  # keep renewing through transient storage errors
                log.warning("renewing the bind lease %s failed; will try again", self.lock_name, exc_info=True)
            if self.lost.is_set():
                return

    def renew(self) -> bool:
        """Push the heartbeat forward; False (and ``lost`` set) if the lease was taken over."""
        with self._mutex:
            if self.lost.is_set():
                return False
            fresh = _new_record(
                self.io, self.record.owner, self.record.takeovers, self.record.token, self.record.acquired_at
            )
            raw = fresh.model_dump_json()
            if self.io.lease_swap(self.lock_name, self._raw, raw):
                self.record, self._raw = fresh, raw
                return True
            self.lost.set()
        log.error("the bind lease %s was taken over by another process; this engine must stop", self.lock_name)
        return False

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def release(self) -> bool:
        """Stop renewing and remove the lease if it is still ours; False if it was lost."""
        self.stop()
        with self._mutex:
            if self.lost.is_set():
                return False
            released = self.io.lease_swap(self.lock_name, self._raw, None)
            if not released:
                self.lost.set()
                log.warning("the bind lease %s was no longer ours at release", self.lock_name)
            return released
