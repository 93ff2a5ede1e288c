"""Faults injected at the OS boundary of the file backend: ``os.write(v)``, ``os.(fdata)sync``, ``os.replace``,
``os.unlink``.

The real functions are wrapped for the duration of one run; a call fails only if it touches the store
folder, so the rest of the process (logging, the campaign's own files) is unaffected. The engine and
TaskIOFile run unmodified: they see exactly what a full disk or a failing device would return.

A fault names an object (``s2.stage.json``) and which write of it to hit (1 = the first, e.g. the
RUNNING checkpoint of a stage; 2 = the COMPLETE one). A task's objects are appended to its folder's
journal: a write is the n-th journal record holding the object (read from the record being written), and
the ``fdatasync`` that follows belongs to it. The lease is a plain file replaced atomically through its
own temp file (``.<name>.<random>.tmp``), so its writes are told apart by their temp file; the folder
fsync that follows a rename belongs to the object just renamed. When the fault fires, the store is
snapshotted first: that is "everything stored before the fault", checked again after the run and after
the resume.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_checkmate.checkmate import PersistenceDataNotFoundException
from airflow_checkmate.checkmate.io.journal import JOURNAL_NAME
from airflow_checkmate.checkmate.io.journal_format import decode_record, replay_file

#: kind -> (the call it hits, the errno it raises). ``slow-fsync`` raises nothing: it sleeps.
KINDS: dict[str, tuple[str, int]] = {
    "enospc-write": ("write", errno.ENOSPC),
    "half-write": ("write", errno.EIO),
    "eio-fsync": ("fsync", errno.EIO),
    "eio-replace": ("replace", errno.EIO),
    "eio-dirsync": ("dirsync", errno.EIO),
    "eio-unlink": ("unlink", errno.EIO),
    "slow-fsync": ("fsync", 0),
    "real-enospc": ("observe", errno.ENOSPC),  # a real full filesystem: only watched, never faked
}


@dataclass
class Fault:
    """One fault: ``kind`` on the ``occurrence``-th write (or unlink) of object ``target`` (a basename)."""

    kind: str
    target: str = ""
    occurrence: int = 1
    seed: int = 0
    fired: int = 0
    snapshot: dict[str, bytes] | None = None  # the store when the fault fired
    _ordinals: dict[str, int] = field(default_factory=dict)
    _appends: int = 0  # journal records holding ``target`` written so far
    _renamed: threading.local = field(default_factory=threading.local)


def snapshot(base: Path) -> dict[str, bytes]:
    """Every stored object under ``base`` (relative name -> bytes), a journal's read from it; temp files are
    listed as such, a journal that does not replay as ``<folder>/.~journal (damaged)`` with the error."""
    out: dict[str, bytes] = {}
    for path in sorted(base.rglob("*")):
        name = path.relative_to(base).as_posix()
        if path.name == JOURNAL_NAME:
            try:
                out.update({f"{path.parent.relative_to(base).as_posix()}/{n}": b for n, b in replay_file(path).items()})
            except PersistenceDataNotFoundException as exc:
                out[f"{name} (damaged)"] = str(exc).encode()
        elif path.is_file():
            with contextlib.suppress(FileNotFoundError):
                out[name] = path.read_bytes()
    return out


def temp_files(objects: dict[str, bytes]) -> list[str]:
    return [n for n in objects if n.endswith(".tmp")]


def stored(objects: dict[str, bytes]) -> dict[str, bytes]:
    return {n: b for n, b in objects.items() if not n.endswith(".tmp")}


@contextlib.contextmanager
def injected(fault: Fault, base: Path) -> Iterator[Fault]:
    """Wrap the os functions TaskIOFile calls so that ``fault`` hits the store under ``base``."""
    real = {name: getattr(os, name) for name in ("write", "writev", "fsync", "fdatasync", "replace", "unlink")}
    call, code = KINDS[fault.kind]
    rng = random.Random(fault.seed)
    root = str(base.resolve()) + os.sep
    armed = threading.Lock()

    def fd_path(fd: int) -> str:
        try:
            return str(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            return ""

    def ordinal(tmp_path: str) -> int:
        """Which write of its object a temp file is (1, 2, ...), or 0 if it is not ``fault.target``'s."""
        name = os.path.basename(tmp_path)
        if not (name.startswith(f".{fault.target}.") and name.endswith(".tmp")):
            return 0
        return fault._ordinals.setdefault(tmp_path, len(fault._ordinals) + 1)

    def appended(pieces: Any) -> int:
        """Which write of ``fault.target`` a journal record is (1, 2, ...), or 0 if it does not hold it."""
        names = [n for n, _ in decode_record(b"".join(pieces))]
        if fault.target not in names:
            fault._renamed.appended = 0
            return 0
        fault._appends += 1
        fault._renamed.appended = fault._appends
        return fault._appends

    def fire(target_matches: bool) -> bool:
        if not target_matches:
            return False
        with armed:
            if fault.fired:
                return False
            fault.fired += 1
        if fault.snapshot is None:
            fault.snapshot = stored(snapshot(base))
        return True

    def error() -> OSError:
        return OSError(code, os.strerror(code))

    def written(fd: int, payload: bytes, which: int, real_call: Callable[[], Any]) -> int:
        """A write of ``payload`` (the ``which``-th of the target): faulted, or done by ``real_call``."""
        path = fd_path(fd)
        if call == "write" and path.startswith(root) and fire(which == fault.occurrence):
            if fault.kind == "half-write":
                real["write"](fd, payload[: len(payload) // 2])
            raise error()
        try:
            return int(real_call())
        except OSError as exc:
            if call == "observe" and exc.errno == code and path.startswith(root):
                fire(True)
            raise

    def write(fd: int, data: Any) -> int:
        path = fd_path(fd)
        which = ordinal(path) if path.startswith(root) else 0
        return written(fd, bytes(data), which, lambda: real["write"](fd, data))

    def fsync(fd: int) -> None:
        path = fd_path(fd)
        if path.startswith(root) or path == root.rstrip(os.sep):
            if fault.kind == "slow-fsync":
                fault.fired += 1
                time.sleep(rng.uniform(0.05, 0.2))
            elif call == "fsync" or (call == "dirsync" and os.path.isdir(path)):
                # a temp file's fsync is told by its name; a folder's by the rename it follows
                which = ordinal(path) if call == "fsync" else getattr(fault._renamed, "ordinal", 0)
                if fire(which == fault.occurrence):
                    raise error()
        real["fsync"](fd)

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        source = os.fspath(src)
        if source.startswith(root):
            fault._renamed.ordinal = ordinal(source)
            if call == "dirsync" and fault._renamed.ordinal == fault.occurrence and fault.snapshot is None:
                fault.snapshot = stored(snapshot(base))  # the fault hits after this rename: "before" is now
            if call == "replace" and fire(fault._renamed.ordinal == fault.occurrence):
                raise error()
        real["replace"](src, dst, *args, **kwargs)

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        target = os.fspath(path)
        if call == "unlink" and target.startswith(root) and fire(os.path.basename(target) == fault.target):
            raise error()
        real["unlink"](path, *args, **kwargs)

    def writev(fd: int, pieces: Any) -> int:
        path = fd_path(fd)
        journal = path.startswith(root) and os.path.basename(path) == JOURNAL_NAME
        which = appended(pieces) if journal else ordinal(path) if path.startswith(root) else 0
        return written(fd, b"".join(pieces), which, lambda: real["writev"](fd, pieces))

    def fdatasync(fd: int) -> None:
        path = fd_path(fd)
        if path.startswith(root):
            if fault.kind == "slow-fsync":
                fault.fired += 1
                time.sleep(rng.uniform(0.05, 0.2))
            elif call == "fsync" and fire(getattr(fault._renamed, "appended", 0) == fault.occurrence):
                raise error()
        real["fdatasync"](fd)

    wrappers: dict[str, Callable[..., Any]] = {
        "write": write,
        "writev": writev,
        "fsync": fsync,
        "fdatasync": fdatasync,
        "replace": replace,
        "unlink": unlink,
    }
    for name, wrapper in wrappers.items():
        setattr(os, name, wrapper)
    try:
        yield fault
    finally:
        for name, function in real.items():
            setattr(os, name, function)
