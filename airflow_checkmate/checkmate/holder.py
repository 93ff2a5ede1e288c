"""Who holds a bind lease: the stored lease record and how its holder is judged live, expired or dead.

A holder is named by host, boot id (``/proc/sys/kernel/random/boot_id``), PID namespace (the inode
of ``/proc/self/ns/pid``), pid and the pid's start time. Only a binder on the same machine and in the
same PID namespace can check the pid, so only it may call a holder dead before its lease expires:
two hosts that share a hostname, or two containers that share a host and a pid number, never judge
each other by pid. A holder may also carry a generic claim, an ``instance_key`` and a ``try_number``
(the operator fills in Airflow's task instance and try), so that a newer try of the same instance
can take over an older try's lease at once: the scheduler has already ended that try.
"""

import os
import socket
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from airflow_checkmate.checkmate.exceptions import PersistenceDataNotFoundException

HOST = socket.gethostname()


def _read_first_line(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.readline().decode("ascii", "replace").strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


#: This machine's boot id, and this process's PID namespace (None where /proc does not tell).
BOOT_ID = _read_first_line("/proc/sys/kernel/random/boot_id")
PID_NS = _pid_namespace()


def proc_stat(pid: int) -> tuple[str, str] | None:
    """``(state, start time)`` of ``pid`` from /proc (Linux), or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return (fields[0], fields[19]) if len(fields) > 19 else None


_own_start: dict[int, str | None] = {}


def own_pid_start() -> str | None:
    """This process's start time, looked up once per pid (a forked child has its own)."""
    pid = os.getpid()
    if pid not in _own_start:
        stat = proc_stat(pid)
        _own_start[pid] = stat[1] if stat else None
    return _own_start[pid]


def pid_alive(pid: int, start: str | None) -> bool:
    """False only when ``pid`` provably is not the holder: gone, a zombie, or reused by another."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = proc_stat(pid)
    if stat is None:
        return True
    state, now_start = stat
    if state == "Z":
        return False  # dead, not yet reaped by its parent
    return start is None or start == now_start


class LeaseRecord(BaseModel):
    """The stored lease: which process holds the task and until when."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    token: str
    host: str
    pid: int
    pid_start: str | None = None
    boot_id: str | None = None
    pid_ns: str | None = None
    owner: str = ""
    instance_key: str = ""
    try_number: int = 0
    acquired_at: float
    heartbeat_at: float
    lease_seconds: float
    takeovers: int = 0

    @property
    def on_this_machine(self) -> bool:
        """Same host, boot and PID namespace: the only place where this holder's pid means anything."""
        return self.host == HOST and self.boot_id == BOOT_ID and self.pid_ns == PID_NS

    def holder_state(self, now: float | None = None) -> Literal["live", "expired", "dead"]:
        """``expired``: no heartbeat within the lease; ``dead``: on this machine and the pid is gone."""
        if (now if now is not None else time.time()) > self.heartbeat_at + self.lease_seconds:
            return "expired"
        if self.on_this_machine and not pid_alive(self.pid, self.pid_start):
            return "dead"
        return "live"

    def superseded_by(self, instance_key: str, try_number: int) -> bool:
        """True if a holder claiming ``instance_key``/``try_number`` is a newer try of this holder's instance."""
        return bool(instance_key) and instance_key == self.instance_key and try_number > self.try_number

    def describe(self) -> str:
        age = time.time() - self.heartbeat_at
        who = f" ({self.owner})" if self.owner else ""
        return f"host {self.host} pid {self.pid}{who}, last heartbeat {age:.1f} s ago, lease {self.lease_seconds:g} s"


def parse_lease(raw: str, lock_name: str) -> LeaseRecord:
    try:
        return LeaseRecord.model_validate_json(raw)
    except ValidationError as exc:
        raise PersistenceDataNotFoundException(
            f"lease object {lock_name!r} does not parse ({exc.error_count()} error(s)); it was left in "
            "place. If no process holds the task, remove it (`checkmate unlock`) and bind again"
        ) from exc
