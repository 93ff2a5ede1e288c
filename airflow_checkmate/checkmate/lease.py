"""The bind lock as a lease: taking it, by waiting or by taking over a dead, expired or superseded holder.

A lease (:class:`~airflow_checkmate.checkmate.holder.LeaseRecord`) names its holder and carries a
heartbeat that :class:`~airflow_checkmate.checkmate.keeper.LeaseKeeper` renews. A lease whose heartbeat
is older than its ``lease_seconds``, whose holder is provably dead, or that a newer try of the same
instance asks for, is taken over by compare-and-swap; any other live holder is waited for (or refused
at once), with a log line every few seconds naming it.
"""

import logging
import os
import time
import uuid

from airflow_checkmate.checkmate import lease_watch
from airflow_checkmate.checkmate.exceptions import BindException
from airflow_checkmate.checkmate.holder import (
    BOOT_ID,
    HOST,
    PID_NS,
    LeaseRecord,
    own_pid_start,
    parse_lease,
)
from airflow_checkmate.checkmate.io.base import TaskIO
from airflow_checkmate.checkmate.keeper import LeaseKeeper

__all__ = ["HOST", "LeaseKeeper", "LeaseRecord", "acquire", "parse_lease"]

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.05
_WAIT_LOG_SECONDS = 5.0


def _new_record(
    io: TaskIO, owner: str, instance_key: str, try_number: int, takeovers: int = 0, token: str | None = None
) -> LeaseRecord:
    now = time.time()
    return LeaseRecord(
        token=token or uuid.uuid4().hex,
        host=HOST,
        pid=os.getpid(),
        pid_start=own_pid_start(),
        boot_id=BOOT_ID,
        pid_ns=PID_NS,
        owner=owner,
        instance_key=instance_key,
        try_number=try_number,
        acquired_at=now,
        heartbeat_at=now,
        lease_seconds=io.lease_seconds,
        takeovers=takeovers,
    )


def acquire(
    io: TaskIO,
    lock_name: str,
    timeout: float | None,
    owner: str = "",
    instance_key: str = "",
    try_number: int = 0,
) -> tuple[LeaseKeeper, LeaseRecord | None]:
    """Take the lease, waiting up to ``timeout`` seconds (None: fail at once) for a live holder.

    ``instance_key`` and ``try_number`` claim the lease for one try of one instance (Airflow's task
    instance): a live holder that is an older try of the same instance is taken over at once. Every
    other live holder is waited for, with a log line every few seconds naming it.
    Returns the keeper (not yet started) and the record of a holder taken over.
    """
    lease_watch.prepare(io)
    start = time.monotonic()
    deadline = start + (timeout or 0.0)
    next_log = start + _WAIT_LOG_SECONDS
    while True:
        mine = _new_record(io, owner, instance_key, try_number)
        raw = mine.model_dump_json()
        if io.lease_create(lock_name, raw):
            return LeaseKeeper(io, lock_name, mine, raw), None
        current_raw = io.lease_read(lock_name)
        if current_raw is None:
            continue  # released between our create and read
        current = parse_lease(current_raw, lock_name)
        state = current.holder_state()
        superseded = state == "live" and current.superseded_by(instance_key, try_number)
        if state != "live" or superseded:
            mine = _new_record(io, owner, instance_key, try_number, current.takeovers + 1, mine.token)
            raw = mine.model_dump_json()
            if io.lease_swap(lock_name, current_raw, raw):
                if superseded:
                    log.warning(
                        "try %d took over the bind lease %s from try %d of the same instance at once (that try "
                        "has ended; it can write nothing more): %s",
                        try_number,
                        lock_name,
                        current.try_number,
                        current.describe(),
                    )
                else:
                    log.warning(
                        "took over the bind lease %s from a %s holder: %s", lock_name, state, current.describe()
                    )
                return LeaseKeeper(io, lock_name, mine, raw), current
            continue
        now = time.monotonic()
        if now >= deadline:
            waited = f" after waiting {timeout:g} s" if timeout else ""
            raise BindException(
                f"task lock {lock_name!r} is held by a live process{waited}: {current.describe()}. "
                "Wait for it to finish, pass bind_lock_timeout to wait longer, or if that process is "
                "gone for good, the lease expires by itself"
            )
        if now >= next_log:
            log.info(
                "waiting for task lock %s (%.0f s of %g s): held for %.0f s by %s",
                lock_name,
                now - start,
                timeout or 0.0,
                time.time() - current.acquired_at,
                current.describe(),
            )
            next_log = now + _WAIT_LOG_SECONDS
        time.sleep(min(_POLL_SECONDS, max(0.0, deadline - now)))
