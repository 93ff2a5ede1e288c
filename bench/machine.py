"""One line naming the machine a benchmark ran on: cores, the disk under its folder, PostgreSQL."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def mount_of(folder: str) -> str:
    """``device (fstype) at mountpoint`` of the filesystem holding ``folder``, from /proc/mounts."""
    target = Path(folder).resolve()
    best: tuple[str, str, str] = ("?", "?", "/")
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown filesystem"
    for line in lines:
        device, mountpoint, fstype, *_ = line.split()
        if target.is_relative_to(mountpoint) and len(mountpoint) >= len(best[2]):
            best = (device, fstype, mountpoint)
    return f"{best[0]} ({best[1]}) at {best[2]}"


def postgres_version(server: str) -> str:
    from sqlalchemy import create_engine, text

    from airflow_checkmate.checkmate import sqldb

    engine = create_engine(sqldb.parse_url(server))
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar())
    finally:
        engine.dispose()


def describe(folder: str, server: str | None) -> str:
    """The machine in one line; ``server`` is the PostgreSQL URL, if any."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    pg = f"PostgreSQL {postgres_version(server)} on loopback" if server else "no PostgreSQL"
    return (
        f"machine: {cores} cores ({platform.processor() or platform.machine()}), files on {mount_of(folder)}, "
        f"{pg}, Python {sys.version.split()[0]}, {platform.system()} {platform.release()}"
    )
