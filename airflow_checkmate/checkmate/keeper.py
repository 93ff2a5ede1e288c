"""Keeping a bind lease: renewing its heartbeat, noticing its loss, fencing writes, releasing it.

The heartbeat is renewed from a background thread and, so that a stage holding the GIL cannot starve
it, from the process's lease watcher (:mod:`.lease_watch`). Writes carry the lease token as a
:class:`Fence`, so a holder whose lease was taken over cannot overwrite the new holder's state; the
keeper checks the lease every tick and calls ``on_lost`` so the engine stops its stage at once.
"""

import logging
import threading
import time
from collections.abc import Callable

from airflow_checkmate.checkmate import lease_watch
from airflow_checkmate.checkmate.holder import LeaseRecord, parse_lease
from airflow_checkmate.checkmate.io.base import Fence, TaskIO, lease_token

log = logging.getLogger("airflow_checkmate.checkmate.lease")


class LeaseKeeper:
    """Holds one lease: renews its heartbeat (thread and watcher), notices its loss, fences writes, releases it."""

    def __init__(self, io: TaskIO, lock_name: str, record: LeaseRecord, raw: str) -> None:
        self.io = io
        self.lock_name = lock_name
        self.record = record
        self.fence = Fence(lock_name, record.token)
        self._raw = raw
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self.lost = threading.Event()
        self.lost_to = ""
        self._thread: threading.Thread | None = None
        self._watched = False

    def start(
        self,
        on_tick: Callable[[], None] | None = None,
        tick_seconds: float = 1.0,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        """Renew every third of the lease and check it every tick; ``on_tick`` runs every tick too.

        ``on_lost(new holder)`` is called from the keeper's thread as soon as the lease is seen taken over.
        """
        renew_every = self.record.lease_seconds / 3
        self._watched = lease_watch.hold(self.io, self.lock_name, self.record.token, renew_every)
        self._thread = threading.Thread(
            target=self._run,
            args=(on_tick, min(tick_seconds, renew_every), renew_every, on_lost),
            name=f"checkmate-lease-{self.lock_name}",
            daemon=True,
        )
        self._thread.start()

    def _run(
        self,
        on_tick: Callable[[], None] | None,
        tick: float,
        renew_every: float,
        on_lost: Callable[[str], None] | None,
    ) -> None:
        next_renew = time.monotonic() + renew_every
        while not self._stop.wait(tick):
            try:
                if time.monotonic() >= next_renew:
                    self.renew()
                    next_renew = time.monotonic() + renew_every
                else:
                    self.check()
                if on_tick is not None and not self.lost.is_set():
                    on_tick()
            except Exception:  # keep renewing through transient storage errors
                log.warning("renewing the bind lease %s failed; will try again", self.lock_name, exc_info=True)
            if self.lost.is_set():
                if on_lost is not None and not self._stop.is_set():
                    on_lost(self.lost_to)
                return

    def _mark_lost(self, current_raw: str | None) -> None:
        """Record that the lease is no longer ours, and who has it now (called holding the mutex)."""
        if self.lost.is_set():
            return
        try:
            self.lost_to = parse_lease(current_raw, self.lock_name).describe() if current_raw else ""
        except Exception:
            self.lost_to = ""
        self.lost_to = self.lost_to or "nobody (the lock was removed, e.g. by `checkmate unlock --force`)"
        self.lost.set()
        log.error(
            "the bind lease %s was taken over by %s; this engine stops its stage and writes nothing more",
            self.lock_name,
            self.lost_to,
        )

    def check(self) -> bool:
        """True while the lease still carries our token; else mark it lost."""
        with self._mutex:
            if self.lost.is_set():
                return False
            current = self.io.lease_read(self.lock_name)
            if lease_token(current) != self.record.token:
                self._mark_lost(current)
                return False
            return True

    def renew(self) -> bool:
        """Push the heartbeat forward; False (and ``lost`` set) if the lease was taken over.

        Compare-and-swap on the text read just before, as long as it carries our token: the watcher
        renews the same lease, so the text may have changed without the lease changing hands.
        """
        with self._mutex:
            for _ in range(5):
                if self.lost.is_set():
                    return False
                current = self.io.lease_read(self.lock_name)
                if current is None or lease_token(current) != self.record.token:
                    self._mark_lost(current)
                    return False
                if self._watched and self._recent(current):
                    # The watcher keeps it. A lease change takes the folder's flock on files: a stage that
                    # grabbed the GIL while this thread held it would keep the watcher out for its whole run.
                    return True
                fresh = self.record.model_copy(update={"heartbeat_at": time.time()})
                raw = fresh.model_dump_json()
                if self.io.lease_swap(self.lock_name, current, raw):
                    self.record, self._raw = fresh, raw
                    return True
            return True  # raced with the watcher each time, so the lease was just renewed by it

    def _recent(self, raw: str) -> bool:
        """Whether the stored heartbeat is younger than two renewal periods (the watcher is renewing)."""
        try:
            age = time.time() - parse_lease(raw, self.lock_name).heartbeat_at
        except Exception:
            return False
        return age < 2 * self.record.lease_seconds / 3

    def stop(self) -> None:
        self._stop.set()
        if self._watched:
            self._watched = False
            lease_watch.drop(self.record.token)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def release(self) -> bool:
        """Stop renewing and remove the lease if it is still ours; False if it was lost."""
        self.stop()
        with self._mutex:
            for _ in range(20):  # the watcher may renew once more before it reads the drop
                if self.lost.is_set():
                    return False
                current = self.io.lease_read(self.lock_name)
                if current is None or lease_token(current) != self.record.token:
                    self._mark_lost(current)
                    log.warning("the bind lease %s was no longer ours at release", self.lock_name)
                    return False
                if self.io.lease_swap(self.lock_name, current, None):
                    return True
            return False
