"""TaskIOFile and the TaskIO factory: atomic whole-object writes, listing by prefix, lease primitives."""

import contextlib
import errno
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_checkmate.checkmate import (
    Fence,
    LeaseLostException,
    PersistenceDataNotFoundException,
    TaskEngineException,
    TaskIO,
    TaskIOException,
    TaskIOFile,
)


def test_from_base_url_picks_file_backend_for_file_urls_and_plain_paths(base: Path) -> None:
    for url in (f"file://{base}", str(base)):
        io = TaskIO.from_base_url(url, lease_seconds=7)
        assert isinstance(io, TaskIOFile) and io.base == base.resolve() and io.lease_seconds == 7
    with pytest.raises(TaskEngineException, match=r"no CheckMate storage backend for URL scheme 'ftp'.*file://"):
        TaskIO.from_base_url("ftp://host/x")
    with pytest.raises(TaskEngineException, match="lease_seconds must be positive"):
        TaskIOFile(base, lease_seconds=0)


def test_write_read_exists_remove_list_build_url(io: TaskIOFile, base: Path) -> None:
    io.write("t1/a.stage.json", '{"x": 1}')
    io.write("t1/task.json", b"{}")
    io.write("t10/task.json", "{}")
    assert io.read("t1/a.stage.json") == '{"x": 1}'
    assert io.exists("t1/task.json") and not io.exists("t1/none.json")
    assert io.list("t1/") == ["t1/a.stage.json", "t1/task.json"]
    assert io.list("t1") == ["t1/a.stage.json", "t1/task.json", "t10/task.json"]
    assert io.list("") == ["t1/a.stage.json", "t1/task.json", "t10/task.json"]
    assert io.list("nothing/") == []
    assert io.build_url("t1/task.json") == str(base / "t1" / "task.json")
    assert io.remove("t1/a.stage.json") is True and io.remove("t1/a.stage.json") is False
    with pytest.raises(PersistenceDataNotFoundException, match="does not exist"):
        io.read("t1/a.stage.json")


def test_writes_are_atomic_for_concurrent_readers(fast_io: TaskIOFile) -> None:
    """A reader never sees a half-written object, even while a large object is replaced over and over."""
    versions = [json.dumps({"v": i, "pad": str(i) * 200_000}) for i in range(4)]
    fast_io.write("t/obj.json", versions[0])
    stop = threading.Event()
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            text = fast_io.read("t/obj.json")
            if text not in versions:
                bad.append(text[:80])

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(60):
        fast_io.write("t/obj.json", versions[i % 4])
    stop.set()
    thread.join()
    assert bad == []
    assert [n for n in os.listdir(fast_io.base / "t") if n.endswith(".tmp")] == []  # no temp files left


def test_lease_create_is_exclusive_and_swap_is_compare_and_set(io: TaskIOFile) -> None:
    assert io.lease_read("t/task.lock") is None
    assert io.lease_create("t/task.lock", '{"token": "a"}') is True
    assert io.lease_create("t/task.lock", '{"token": "b"}') is False
    assert io.lease_read("t/task.lock") == '{"token": "a"}'
    assert io.lease_swap("t/task.lock", '{"token": "zzz"}', '{"token": "b"}') is False
    assert io.lease_swap("t/task.lock", '{"token": "a"}', '{"token": "b"}') is True
    assert io.lease_swap("t/task.lock", '{"token": "a"}', None) is False
    assert io.lease_swap("t/task.lock", '{"token": "b"}', None) is True
    assert io.lease_read("t/task.lock") is None
    assert io.lease_swap("t/task.lock", '{"token": "b"}', None) is False


def test_fenced_write_and_remove_refused_once_the_lease_changed(io: TaskIOFile) -> None:
    io.lease_create("t/task.lock", json.dumps({"token": "mine"}))
    mine = Fence("t/task.lock", "mine")
    io.write("t/a.json", "1", fence=mine)
    io.lease_swap("t/task.lock", json.dumps({"token": "mine"}), json.dumps({"token": "theirs"}))
    with pytest.raises(LeaseLostException, match="refused"):
        io.write("t/a.json", "2", fence=mine)
    with pytest.raises(LeaseLostException):
        io.remove("t/a.json", fence=mine)
    assert io.read("t/a.json") == "1"
    assert io.list("t/") == ["t/a.json", "t/task.lock"]


def test_many_threads_racing_lease_create_get_one_winner(fast_io: TaskIOFile) -> None:
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def contender(i: int) -> None:
        barrier.wait()
        if fast_io.lease_create("race/task.lock", json.dumps({"token": str(i)})):
            wins.append(i)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert json.loads(fast_io.lease_read("race/task.lock") or "{}")["token"] == str(wins[0])


def test_prune_removes_temp_leftovers_and_empty_folder_but_not_a_locked_one(io: TaskIOFile, base: Path) -> None:
    io.write("gone/x.json", "{}")
    io.remove("gone/x.json")
    (base / "gone" / ".x.json.dead.tmp").write_text("half")
    io.prune("gone/")
    assert not (base / "gone").exists()

    io.lease_create("held/task.lock", "{}")
    io.prune("held/")
    assert (base / "held" / "task.lock").exists()


@contextlib.contextmanager
def fsynced_paths() -> Iterator[list[str]]:
    """Record the path of every descriptor ``os.fsync`` is called on (the real fsync still runs)."""
    seen: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    os.fsync = spy  # type: ignore[assignment]
    try:
        yield seen
    finally:
        os.fsync = real


def test_a_new_task_folder_is_fsynced_into_its_parent(tmp_path: Path) -> None:
    """Checkpoints fsynced inside a folder whose own entry never reached disk vanish with it on power loss."""
    base = tmp_path / "deep" / "store"
    with fsynced_paths() as seen:
        io = TaskIOFile(base)
    assert str(tmp_path) in seen and str(tmp_path / "deep") in seen  # both new folders' entries
    with fsynced_paths() as seen:
        io.lease_create("t1/task.lock", '{"token": "a"}')
    assert str(base) in seen, "the new task folder's entry in the base folder was not fsynced"
    with fsynced_paths() as seen:
        io.write("t1/task.json", "{}")
    assert str(base) not in seen, "an existing task folder's parent is fsynced again on every write"
    with fsynced_paths() as seen:
        TaskIOFile(tmp_path / "fast", durable=False).write("t2/task.json", "{}")
    assert seen == []


def test_lease_renewal_and_takeover_are_durable(io: TaskIOFile, base: Path) -> None:
    """A torn lease after a crash would need a manual unlock: every lease write is fsynced, file and folder."""
    assert io.lease_create("t1/task.lock", "one")
    with fsynced_paths() as seen:
        assert io.lease_swap("t1/task.lock", "one", "two")
    assert str(base / "t1") in seen, "the lease's folder was not fsynced after the rename"
    assert any(os.path.basename(p).startswith(".task.lock.") for p in seen), "the new lease was not fsynced"
    assert io.lease_read("t1/task.lock") == "two"


def test_lease_create_failing_past_the_rename_leaves_no_lease(io: TaskIOFile, base: Path) -> None:
    """If the folder fsync after the lease's rename fails, bind fails and the lease is taken back, so a retry in
    the same process does not wait out a lease its own pid holds."""
    real = os.fsync
    calls = {"dir": 0}

    def failing(fd: int) -> None:
        if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
            calls["dir"] += 1
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    (base / "t1").mkdir()
    os.fsync = failing  # type: ignore[assignment]
    try:
        with pytest.raises(TaskIOException, match="was replaced, but syncing its folder failed"):
            io.lease_create("t1/task.lock", "one")
    finally:
        os.fsync = real
    assert calls["dir"] == 1
    assert io.lease_read("t1/task.lock") is None
    assert io.lease_create("t1/task.lock", "two") and io.lease_read("t1/task.lock") == "two"
