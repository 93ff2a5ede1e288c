"""The file journal: framing, torn tails, damage, versions, compaction bounds, fencing and concurrent writers."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from airflow_checkmate.checkmate import (
    Fence,
    LeaseLostException,
    PersistenceDataNotFoundException,
    TaskEngineException,
    TaskIOFile,
)
from airflow_checkmate.checkmate.io import journal
from airflow_checkmate.checkmate.io.journal import COMPACT_SLACK, JOURNAL_NAME
from airflow_checkmate.checkmate.io.journal_format import FRAME_SIZE, HEADER_SIZE, encode_record


def jpath(base: Path, task: str = "t") -> Path:
    return base / task / JOURNAL_NAME


def test_objects_round_trip_through_one_hidden_0600_journal(io: TaskIOFile, base: Path) -> None:
    blob = bytes(range(256)) * 1000  # binary, kept as is (not escaped into JSON)
    io.commit([("t/a.json", b"1"), ("t/blob.bin", blob), ("t/gone.json", b"x")])
    io.commit([("t/gone.json", None), ("t/a.json", b"2")])
    assert os.listdir(base / "t") == [JOURNAL_NAME]
    assert os.stat(jpath(base)).st_mode & 0o777 == 0o600
    fresh = TaskIOFile(base)
    assert fresh.read_prefix("t/") == {"t/a.json": b"2", "t/blob.bin": blob}
    assert fresh.list("t/") == ["t/a.json", "t/blob.bin"] and not fresh.exists("t/gone.json")
    with pytest.raises(TaskEngineException, match="invalid object name"):
        fresh.read(f"t/{JOURNAL_NAME}")


def test_a_commit_is_seen_whole_by_a_reader_in_another_process(fast_io: TaskIOFile, base: Path) -> None:
    """Every checkpoint writes a and b with the same version: another process never sees them differ."""
    fast_io.commit([("t/a.json", b"0"), ("t/b.json", b"0")])
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(base)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert reader.stdout is not None and reader.stdout.readline() == "ready\n"
    pad = b"p" * 50_000
    for version in range(1, 1000):
        v = str(version).encode()
        fast_io.commit([("t/a.json", v + pad), ("t/b.json", v)])
    fast_io.write("t/stop", b"")
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    reads, mixed = json.loads(out)
    assert mixed == [] and reads > 10


_READER = textwrap.dedent(
    """
    import json, sys
    from airflow_checkmate.checkmate import TaskIOFile
    io, reads, mixed = TaskIOFile(sys.argv[1], durable=False), 0, []
    io.read_prefix("t/")
    print("ready", flush=True)
    while True:
        got = io.read_prefix("t/")
        if "t/stop" in got:
            break
        reads += 1
        if got["t/a.json"].rstrip(b"p") != got["t/b.json"]:
            mixed.append([got["t/a.json"][:8].decode(), got["t/b.json"].decode()])
    print(json.dumps([reads, mixed]))
    """
)


def test_a_torn_last_record_is_ignored_at_every_cut_and_cut_off_before_the_next_append(base: Path) -> None:
    io = TaskIOFile(base, durable=False)
    io.commit([("t/a.json", b"one"), ("t/b.json", b"kept")])
    good = jpath(base).read_bytes()
    io.commit([("t/a.json", b"two"), ("t/c.json", b"new")])
    full = jpath(base).read_bytes()
    for cut in range(len(good), len(full)):
        jpath(base).write_bytes(full[:cut])
        fresh = TaskIOFile(base, durable=False)
        assert fresh.read_prefix("t/") == {"t/a.json": b"one", "t/b.json": b"kept"}, cut
        fresh.write("t/d.json", b"after")
        assert jpath(base).read_bytes() == good + b"".join(encode_record([("d.json", b"after")])[0]), cut
        assert TaskIOFile(base).read_prefix("t/") == {"t/a.json": b"one", "t/b.json": b"kept", "t/d.json": b"after"}


def test_a_tail_of_zeros_reads_as_torn(io: TaskIOFile, base: Path) -> None:
    io.write("t/a.json", b"1")
    with open(jpath(base), "ab") as f:
        f.write(bytes(4096))
    assert TaskIOFile(base).read("t/a.json") == "1"


@pytest.mark.parametrize("where", ["frame", "length", "payload"])
def test_a_flipped_byte_in_a_complete_record_is_a_named_error_and_nothing_is_removed(
    io: TaskIOFile, base: Path, where: str
) -> None:
    io.write("t/a.json", b"first")
    second = jpath(base).stat().st_size
    io.write("t/a.json", b"second")
    io.write("t/b.json", b"third")
    data = bytearray(jpath(base).read_bytes())
    at = second + {"frame": 0, "length": 11, "payload": FRAME_SIZE + 5}[where]
    data[at] ^= 0x40
    jpath(base).write_bytes(bytes(data))
    fresh = TaskIOFile(base)
    for attempt in (lambda: fresh.read("t/a.json"), lambda: fresh.write("t/c.json", b"x"), lambda: fresh.compact("t/")):
        with pytest.raises(PersistenceDataNotFoundException) as caught:
            attempt()
        message = str(caught.value)
        assert str(jpath(base)) in message and f"offset {second}" in message and "checkmate reset" in message
    assert jpath(base).read_bytes() == bytes(data)
    with pytest.raises(PersistenceDataNotFoundException, match=r"stored object .*t/a\.json"):
        fresh.read("t/a.json")


def test_an_unknown_format_version_is_refused_naming_file_and_version(io: TaskIOFile, base: Path) -> None:
    io.write("t/a.json", b"1")
    data = bytearray(jpath(base).read_bytes())
    data[8:10] = (7).to_bytes(2, "big")
    jpath(base).write_bytes(bytes(data))
    with pytest.raises(PersistenceDataNotFoundException, match=r"format version 7.*version 1 only") as caught:
        TaskIOFile(base).read("t/a.json")
    assert str(jpath(base)) in str(caught.value)
    assert jpath(base).read_bytes() == bytes(data)
    jpath(base).write_bytes(b"garbage that is no journal")
    with pytest.raises(PersistenceDataNotFoundException, match="is not a CheckMate journal"):
        TaskIOFile(base).list("t/")


def test_disk_use_stays_within_twice_the_live_state_plus_one_record_for_20_mb_states(base: Path) -> None:
    io = TaskIOFile(base)
    state = 20 * 1024 * 1024
    reader = TaskIOFile(base)
    for i in range(8):
        blob = bytes([i]) * state
        io.commit([("t/big.stage.json", blob), ("t/task.json", b"{}")])
        live = state + len("big.stage.json") + len("task.json") + 2
        record = sum(map(len, encode_record([("big.stage.json", blob), ("task.json", b"{}")])[0]))
        assert jpath(base).stat().st_size <= HEADER_SIZE + 2 * live + COMPACT_SLACK + record, i
        assert reader.read_bytes("t/big.stage.json") == blob
    io.compact("t/")
    assert jpath(base).stat().st_size < state + 1024
    assert [n for n in os.listdir(base / "t") if n != JOURNAL_NAME] == []
    assert reader.read_bytes("t/big.stage.json") == bytes([7]) * state


def test_a_write_after_a_takeover_is_refused_and_changes_nothing(io: TaskIOFile, base: Path) -> None:
    io.lease_create("t/task.lock", json.dumps({"token": "mine"}))
    mine = Fence("t/task.lock", "mine")
    io.commit([("t/a.json", b"1"), ("t/b.json", b"1")], fence=mine)
    io.lease_swap("t/task.lock", json.dumps({"token": "mine"}), json.dumps({"token": "theirs"}))
    before = jpath(base).read_bytes()
    for refused in (
        lambda: io.commit([("t/a.json", b"2"), ("t/b.json", None)], fence=mine),
        lambda: io.remove("t/a.json", fence=mine),
        lambda: io.remove("t/none.json", fence=mine),
        lambda: io.compact("t/", fence=mine),
    ):
        with pytest.raises(LeaseLostException, match="refused"):
            refused()
    assert jpath(base).read_bytes() == before
    assert TaskIOFile(base).read_prefix("t/") == {
        "t/a.json": b"1",
        "t/b.json": b"1",
        "t/task.lock": b'{"token": "theirs"}',
    }


def test_an_unfenced_writer_in_another_process_is_safe_against_the_holders_appends_and_compactions(
    base: Path,
) -> None:
    """A CLI cancel request (no fence) appends while the holder appends big checkpoints and compacts."""
    io = TaskIOFile(base)
    io.lease_create("t/task.lock", json.dumps({"token": "mine"}))
    mine = Fence("t/task.lock", "mine")
    canceller = subprocess.Popen([sys.executable, "-c", _CANCELLER, str(base)], stderr=subprocess.PIPE, text=True)
    big = b"s" * 300_000
    for i in range(150):
        io.commit([(f"t/s{i % 5}.stage.json", big + str(i).encode()), ("t/task.json", str(i).encode())], fence=mine)
        if i % 40 == 39:
            io.compact("t/", fence=mine)
    _, err = canceller.communicate(timeout=120)
    assert canceller.returncode == 0, err
    final = TaskIOFile(base).read_prefix("t/")
    assert final["t/task.json"] == b"149" and final["t/cancel.json"] == b"199"
    assert all(final[f"t/s{i % 5}.stage.json"] == big + str(i).encode() for i in range(145, 150))


_CANCELLER = textwrap.dedent(
    """
    import sys
    from airflow_checkmate.checkmate import TaskIOFile
    io = TaskIOFile(sys.argv[1])
    for i in range(200):
        if i % 3 == 1:
            io.remove("t/cancel.json")
        io.write("t/cancel.json", str(i).encode())
    """
)


def test_prune_leaves_nothing_behind_once_every_object_is_removed(io: TaskIOFile, base: Path) -> None:
    io.commit([("t/a.json", b"1"), ("t/b.json", b"2")])
    io.prune("t/")
    assert jpath(base).exists(), "live objects are never pruned"
    io.commit([("t/a.json", None), ("t/b.json", None)])
    (base / "t" / f"{JOURNAL_NAME}.dead.tmp").write_bytes(b"half a compaction")
    io.lease_create("t/task.lock", "{}")
    io.prune("t/")
    assert jpath(base).exists(), "a leased folder is never pruned"
    io.lease_swap("t/task.lock", "{}", None)
    io.prune("t/")
    assert not (base / "t").exists()


def test_polling_reads_only_what_was_appended(io: TaskIOFile, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine polls for a cancel request every second: a large journal is not read again each time."""
    io.write("t/big.stage.json", b"b" * 5_000_000)
    poller = TaskIOFile(base)
    assert not poller.exists("t/cancel.json")
    read: list[int] = []
    real = os.pread

    def counting(fd: int, n: int, offset: int) -> bytes:
        data = real(fd, n, offset)
        read.append(len(data))
        return data

    monkeypatch.setattr(journal.os, "pread", counting)
    for _ in range(50):
        assert not poller.exists("t/cancel.json")
    assert sum(read) == 0
    io.write("t/cancel.json", b"{}")
    assert poller.exists("t/cancel.json")
    assert sum(read) < 1024


def test_a_checkpoint_of_more_objects_than_one_writev_takes_is_one_record(io: TaskIOFile) -> None:
    """A reset or cleanup of a task of a thousand stages writes or removes every stage in one checkpoint."""
    count = 2500  # Linux takes 1,024 pieces per writev; each object is several
    io.commit([(f"t/s{i}.stage.json", f'{{"i": {i}}}'.encode()) for i in range(count)])
    stored = io.read_prefix("t/")
    assert len(stored) == count and stored["t/s7.stage.json"] == b'{"i": 7}'
    io.commit([(f"t/s{i}.stage.json", None) for i in range(count)])
    assert io.read_prefix("t/") == {}
