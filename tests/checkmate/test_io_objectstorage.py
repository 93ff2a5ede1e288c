"""TaskIOObjectStorage on S3 (the session's moto server on loopback) and on a store without conditional writes.

Proves the S3 conditional semantics the bind lease and fencing rest on (create-if-absent, compare-and-swap
on the exact lease text, one winner among racing threads), the fencing guarantee of the module docstring
("two holders never both succeed in writing over the same version"), listing by prefix without folder
objects, one PUT per write even for a large object, refusal to lock on a store without conditional
writes, the errors for an unknown bucket or an unreachable endpoint, and the Airflow hook's S3 settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from airflow_checkmate.checkmate import (
    CheckMateEngine,
    Fence,
    LeaseLostException,
    PersistenceDataNotFoundException,
    RetryPolicy,
    StageStatus,
    TaskEngineException,
    TaskIO,
    TaskIOException,
)
from airflow_checkmate.checkmate.io.objectstorage import TaskIOObjectStorage
from airflow_checkmate.checkmate.lease import LeaseRecord, acquire
from support.processes import S3_CONN_ID
from support.stages import expected_result, make_stages, read_journal

RACERS = 8
LOCK = "t/task.lock"
OBJ = "t/s1.stage.json"


@pytest.fixture
def s3(s3_url: str) -> str:
    """The test's fresh ``s3://<bucket>/state``."""
    return s3_url


@pytest.fixture
def open_io(s3: str) -> Callable[..., TaskIOObjectStorage]:
    """Opens a new TaskIO on the test's bucket: its own ETag memory, as another process would have."""

    def opener(**options: Any) -> TaskIOObjectStorage:
        io = TaskIO.from_base_url(s3, conn_id=S3_CONN_ID, **options)
        assert isinstance(io, TaskIOObjectStorage)
        return io

    return opener


@pytest.fixture
def client(s3_endpoint: str) -> Any:
    """A plain boto3 client on the server: sees the bucket as it is, not through the code under test."""
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def bucket_of(url: str) -> str:
    return url.split("/")[2]


def keys(client: Any, url: str) -> list[str]:
    """Every key in the test's bucket."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket_of(url))
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def raw(client: Any, url: str, obj: str) -> bytes:
    """An object's bytes straight from the server."""
    body: bytes = client.get_object(Bucket=bucket_of(url), Key=f"state/{obj}")["Body"].read()
    return body


def lease_json(token: str, heartbeat_at: float | None = None) -> str:
    """A lease record held by ``token`` (another host, so only its heartbeat decides if it is live)."""
    now = time.time() if heartbeat_at is None else heartbeat_at
    return LeaseRecord(
        token=token, host="elsewhere.example", pid=4242, acquired_at=now, heartbeat_at=now, lease_seconds=30
    ).model_dump_json()


def race(workers: list[Callable[[], Any]]) -> list[Any]:
    """Run the workers in threads released together; each one's result, or the exception it raised."""
    barrier = threading.Barrier(len(workers))
    results: list[Any] = [None] * len(workers)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = workers[index]()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


@pytest.fixture
def s3_calls(open_io: Callable[..., TaskIOObjectStorage], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the S3 API calls made through the test bucket's filesystem (put_object, get_object...)."""
    fs = open_io().fs
    calls: list[str] = []
    original = fs._call_s3

    async def counted(method: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(method)
        return await original(method, *args, **kwargs)

    monkeypatch.setattr(fs, "_call_s3", counted)
    return calls


# --------------------------------------------------------------------------- conditional writes


def test_lease_create_is_exclusive(open_io: Callable[..., TaskIOObjectStorage], client: Any, s3: str) -> None:
    io, other = open_io(), open_io()
    assert io.lease_read(LOCK) is None
    assert io.lease_create(LOCK, "first") is True
    assert other.lease_create(LOCK, "second") is False
    assert io.lease_create(LOCK, "first") is False, "creating an existing lease with the same text must fail too"
    assert other.lease_read(LOCK) == "first"
    assert raw(client, s3, LOCK) == b"first"


def test_lease_swap_needs_the_exact_text(open_io: Callable[..., TaskIOObjectStorage], client: Any, s3: str) -> None:
    io = open_io()
    assert io.lease_swap(LOCK, "anything", "new") is False, "swapped a lease that does not exist"
    assert io.lease_read(LOCK) is None
    assert io.lease_create(LOCK, '{"token": "a"}')
    for wrong in ('{"token": "b"}', '{"token": "a"} ', '{"token":"a"}', ""):
        assert io.lease_swap(LOCK, wrong, '{"token": "x"}') is False, wrong
        assert io.lease_swap(LOCK, wrong, None) is False, wrong
        assert raw(client, s3, LOCK) == b'{"token": "a"}'
    assert open_io().lease_swap(LOCK, '{"token": "a"}', '{"token": "b"}') is True
    assert io.lease_read(LOCK) == '{"token": "b"}'
    assert io.lease_swap(LOCK, '{"token": "a"}', None) is False, "released with the text it had before"
    assert io.lease_swap(LOCK, '{"token": "b"}', None) is True
    assert io.lease_read(LOCK) is None
    assert keys(client, s3) == []


def test_threads_racing_for_one_lease_get_exactly_one_winner(open_io: Callable[..., TaskIOObjectStorage]) -> None:
    ios = [open_io() for _ in range(RACERS)]
    for round_ in range(4):
        lock = f"r{round_}/task.lock"
        created = race([lambda io=io, i=i, lock=lock: io.lease_create(lock, f"racer {i}") for i, io in enumerate(ios)])
        assert sorted(map(str, created)) == ["False"] * (RACERS - 1) + ["True"], created
        winner = created.index(True)
        assert ios[0].lease_read(lock) == f"racer {winner}"

        # Everyone saw the winner's text: all try to replace it at once; one compare-and-swap succeeds.
        swapped = race(
            [
                lambda io=io, i=i, lock=lock, text=f"racer {winner}": io.lease_swap(lock, text, f"swap {i}")
                for i, io in enumerate(ios)
            ]
        )
        assert swapped.count(True) == 1 and swapped.count(False) == RACERS - 1, swapped
        assert ios[0].lease_read(lock) == f"swap {swapped.index(True)}"


# --------------------------------------------------------------------------- fencing


def test_fenced_write_over_a_version_this_io_did_not_see_is_refused(
    open_io: Callable[..., TaskIOObjectStorage], client: Any, s3: str
) -> None:
    mine, other = open_io(), open_io()
    keeper, _ = acquire(mine, LOCK, None)
    fence = keeper.fence
    mine.write(OBJ, b'{"v": 1}', fence=fence)
    assert mine.read(OBJ) == '{"v": 1}'
    other.write(OBJ, b'{"v": "other"}')  # another TaskIO changes it after this one read it

    with pytest.raises(LeaseLostException, match="changed since this engine last read or wrote it"):
        mine.write(OBJ, b'{"v": 2}', fence=fence)
    assert raw(client, s3, OBJ) == b'{"v": "other"}'
    assert mine.read(OBJ) == '{"v": "other"}'
    other.write(OBJ, b'{"v": "other again"}')
    with pytest.raises(LeaseLostException, match="changed since"):
        mine.remove(OBJ, fence=fence)
    assert raw(client, s3, OBJ) == b'{"v": "other again"}'

    # An object seen absent is created only if it still is absent.
    with pytest.raises(PersistenceDataNotFoundException):
        mine.read("t/s2.stage.json")
    other.write("t/s2.stage.json", b'{"v": "other"}')
    with pytest.raises(LeaseLostException):
        mine.write("t/s2.stage.json", b'{"v": "mine"}', fence=fence)
    assert raw(client, s3, "t/s2.stage.json") == b'{"v": "other"}'

    # Once it has read the current version, the holder may write over it (and remove it).
    assert mine.read(OBJ) == '{"v": "other again"}'
    mine.write(OBJ, b'{"v": 3}', fence=fence)
    assert raw(client, s3, OBJ) == b'{"v": 3}'
    assert mine.remove(OBJ, fence=fence) is True
    assert mine.remove(OBJ, fence=fence) is False
    assert keeper.release() is True


def test_etags_from_a_listing_are_usable_for_fenced_writes(
    open_io: Callable[..., TaskIOObjectStorage], client: Any, s3: str
) -> None:
    open_io().write(OBJ, b'{"v": 1}')
    mine = open_io()
    keeper, _ = acquire(mine, LOCK, None)
    assert mine.list("t/") == [OBJ, LOCK]  # the ETags of the listing are what this TaskIO saw
    mine.write(OBJ, b'{"v": 2}', fence=keeper.fence)
    assert raw(client, s3, OBJ) == b'{"v": 2}'
    assert keeper.release() is True


def test_holder_whose_lease_was_taken_over_cannot_write_even_an_unchanged_object(
    open_io: Callable[..., TaskIOObjectStorage], client: Any, s3: str
) -> None:
    old = open_io()
    assert old.lease_create(LOCK, lease_json("old"))
    old.write(OBJ, b'{"v": 1}', fence=Fence(LOCK, "old"))
    assert open_io().lease_swap(LOCK, old.lease_read(LOCK) or "", lease_json("new"))
    # The object is as the old holder last saw it; only the lease check stops its write.
    with pytest.raises(LeaseLostException, match="no longer held"):
        old.write(OBJ, b'{"v": "stale"}', fence=Fence(LOCK, "old"))
    with pytest.raises(LeaseLostException, match="no longer held"):
        old.remove(OBJ, fence=Fence(LOCK, "old"))
    assert raw(client, s3, OBJ) == b'{"v": 1}'


def test_two_holders_never_both_write_over_the_same_version(
    open_io: Callable[..., TaskIOObjectStorage], client: Any, s3: str
) -> None:
    """The docstring's race: the old holder's write is past its lease check when the lease is taken over."""
    old, new = open_io(), open_io()
    assert old.lease_create(LOCK, lease_json("old"))
    old.write(OBJ, b'{"v": 0}', fence=Fence(LOCK, "old"))
    assert new.lease_swap(LOCK, old.lease_read(LOCK) or "", lease_json("new"))
    old.check_fence = lambda fence: None  # type: ignore[method-assign]  # its lease check passed before the takeover
    old_fence, new_fence = Fence(LOCK, "old"), Fence(LOCK, "new")
    winners = []
    for round_ in range(12):
        base = old.read(OBJ)
        assert new.read(OBJ) == base, "both holders start from the same version"
        writes = [
            lambda data=f'{{"v": {round_}, "by": "old"}}': old.write(OBJ, data, fence=old_fence),
            lambda data=f'{{"v": {round_}, "by": "new"}}': new.write(OBJ, data, fence=new_fence),
        ]
        if round_ % 3 == 2:
            writes.reverse()  # one after the other, either order
            outcomes = []
            for write in writes:
                try:
                    outcomes.append(write())
                except LeaseLostException as exc:
                    outcomes.append(exc)
            outcomes.reverse()
        else:
            outcomes = race(writes)
        succeeded = [who for who, out in zip(("old", "new"), outcomes, strict=True) if out is None]
        refused = [out for out in outcomes if isinstance(out, LeaseLostException)]
        assert len(succeeded) == 1 and len(refused) == 1, f"round {round_}: {outcomes}"
        assert json.loads(raw(client, s3, OBJ)) == {"v": round_, "by": succeeded[0]}, "the stored version lost"
        winners.append(succeeded[0])
    assert set(winners) == {"old", "new"}, f"the race always went one way: {winners}"


# --------------------------------------------------------------------------- objects


def test_list_exists_remove_by_prefix_without_folder_objects(
    open_io: Callable[..., TaskIOObjectStorage], client: Any, s3: str
) -> None:
    io = open_io()
    for obj in ("t1/a.stage.json", "t1/task.json", "t10/task.json", "t1x/task.json"):
        io.write(obj, obj.encode())
    bucket = bucket_of(s3)
    client.put_object(Bucket=bucket, Key="state2/t1/task.json", Body=b"beside the base")
    client.put_object(Bucket=bucket, Key="statefile.json", Body=b"beside the base")
    assert keys(client, s3) == sorted(
        [
            *("state/t1/a.stage.json", "state/t1/task.json", "state/t10/task.json", "state/t1x/task.json"),
            *("state2/t1/task.json", "statefile.json"),
        ]
    ), "a write stored folder markers or put the object elsewhere"

    assert io.list("t1/") == ["t1/a.stage.json", "t1/task.json"]
    assert io.list("t1") == ["t1/a.stage.json", "t1/task.json", "t10/task.json", "t1x/task.json"]
    assert io.list("") == ["t1/a.stage.json", "t1/task.json", "t10/task.json", "t1x/task.json"]
    assert io.list("t1/task") == ["t1/task.json"]
    assert io.list("nothing/") == [] and io.list("t2") == []
    assert io.exists("t1/task.json") and not io.exists("t1/none.json") and not io.exists("t1")
    assert io.read("t10/task.json") == "t10/task.json"
    assert io.build_url("t1/task.json") == f"{s3}/t1/task.json"

    assert io.remove("t1/a.stage.json") is True and io.remove("t1/a.stage.json") is False
    assert io.remove("t1/task.json") is True
    io.prune("t1/")
    assert io.list("t1/") == [] and not io.exists("t1/task.json")
    assert io.list("t1") == ["t10/task.json", "t1x/task.json"], "removing t1/ touched t10/ or t1x/"
    assert keys(client, s3) == ["state/t10/task.json", "state/t1x/task.json", "state2/t1/task.json", "statefile.json"]
    with pytest.raises(PersistenceDataNotFoundException, match=r"t1/task\.json does not exist"):
        io.read("t1/task.json")
    for bad in ("../x", "t1/../t10/task.json", "/t1/task.json", "t1//task.json"):
        with pytest.raises(TaskEngineException, match="invalid object name"):
            io.write(bad, b"{}")
    assert len(keys(client, s3)) == 4


def test_engine_runs_and_resumes_on_s3_without_folder_objects(
    open_io: Callable[..., TaskIOObjectStorage], client: Any, s3: str, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    engine = CheckMateEngine(open_io(), "job", make_stages(3, str(journal), fail_first={"s2": 1}), RetryPolicy.RETRY, 3)
    with engine, pytest.raises(TaskEngineException, match="auto-recovered"):
        engine.execute()
    assert keys(client, s3) == ["state/job/s1.stage.json", "state/job/s2.stage.json", "state/job/task.json"]
    again = CheckMateEngine(open_io(), "job", make_stages(3, str(journal), fail_first={"s2": 1}), RetryPolicy.RETRY, 3)
    with again:
        again.execute()
        assert again.task_result == expected_result(3)
        assert "state/job/task.lock" in keys(client, s3)
    assert [w[1] for w in read_journal(journal) if w[0] == "start"] == ["s1", "s2", "s2", "s3"]
    with CheckMateEngine(open_io(), "job", make_stages(3), auto_cleanup=True) as cleaner:
        assert cleaner.status is StageStatus.COMPLETE
    assert keys(client, s3) == []


@pytest.mark.parametrize("fenced", [False, True], ids=["plain", "fenced"])
def test_large_object_is_written_with_one_put(
    open_io: Callable[..., TaskIOObjectStorage],
    s3_calls: list[str],
    client: Any,
    s3: str,
    monkeypatch: pytest.MonkeyPatch,
    fenced: bool,
) -> None:
    io = open_io()
    # A filesystem whose default part size is S3's 5 MiB minimum: a write that relied on the default would
    # split 12 MB into parts (create_multipart_upload + upload_part).
    pipe_file = io.fs.pipe_file
    monkeypatch.setattr(
        io.fs,
        "pipe_file",
        lambda path, data, chunksize=5 * 2**20, **kw: pipe_file(path, data, chunksize=chunksize, **kw),
    )
    payload = os.urandom(6 * 2**20).hex().encode()  # 12 MiB
    fence = acquire(io, LOCK, None)[0].fence if fenced else None
    s3_calls.clear()
    io.write("t/big.json", payload, fence=fence)
    writes = [c for c in s3_calls if c in ("put_object", "create_multipart_upload", "upload_part")]
    assert writes == ["put_object"], s3_calls
    stored = raw(client, s3, "t/big.json")
    assert hashlib.sha256(stored).digest() == hashlib.sha256(payload).digest()
    assert io.read_bytes("t/big.json") == payload


# --------------------------------------------------------------------------- a store without conditional writes


def test_store_without_conditional_writes_works_unlocked_and_refuses_a_lock(tmp_path: Path) -> None:
    folder, journal = tmp_path / "store", tmp_path / "journal"
    io = TaskIOObjectStorage(f"file://{folder}")
    assert io.conditions.available is False
    io.write("t1/a.json", '{"a": 1}')
    io.write("t10/task.json", b"{}")
    assert io.read("t1/a.json") == '{"a": 1}' and io.exists("t1/a.json") and not io.exists("t1/b.json")
    assert io.list("t1/") == ["t1/a.json"] and io.list("t1") == ["t1/a.json", "t10/task.json"]
    assert io.remove("t1/a.json") is True and io.remove("t1/a.json") is False
    assert io.list("") == ["t10/task.json"]

    with CheckMateEngine(io, "free", make_stages(3, str(journal)), no_lock=True) as engine:
        engine.execute()
        assert engine.status is StageStatus.COMPLETE and engine.task_result == expected_result(3)
    with CheckMateEngine(TaskIOObjectStorage(f"file://{folder}"), "free", make_stages(3), no_lock=True) as again:
        assert again.status is StageStatus.COMPLETE and again.task_result == expected_result(3)
    assert [w[1] for w in read_journal(journal) if w[0] == "start"] == ["s1", "s2", "s3"]

    before = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    for task_id in ("locked", "free"):
        engine = CheckMateEngine(io, task_id, make_stages(3, str(journal)))
        with pytest.raises(TaskIOException) as excinfo:
            engine.bind()
        message = str(excinfo.value)
        assert "conditional writes" in message and "postgresql" in message and "no_lock" in message
        assert "file://" in message and not engine.bound
    with pytest.raises(TaskIOException, match="conditional writes"):
        io.write("free/task.json", b"{}", fence=Fence("free/task.lock", "token"))
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == before, "a refused bind stored"
    assert [w[1] for w in read_journal(journal) if w[0] == "start"] == ["s1", "s2", "s3"]


# --------------------------------------------------------------------------- errors


def test_reading_from_an_unknown_bucket_names_the_object(s3: str) -> None:
    io = TaskIO.from_base_url(f"s3://checkmate-missing-{uuid.uuid4().hex[:8]}/state", conn_id=S3_CONN_ID)
    with pytest.raises(PersistenceDataNotFoundException, match=r"s3://checkmate-missing-\w+/state/t/task\.json"):
        io.read("t/task.json")
    assert io.list("t/") == [] and not io.exists("t/task.json")


def test_binding_on_an_unknown_bucket_is_a_clear_storage_error(s3: str) -> None:
    url = f"s3://checkmate-missing-{uuid.uuid4().hex[:8]}/state"
    engine = CheckMateEngine(TaskIO.from_base_url(url, conn_id=S3_CONN_ID), "t", make_stages(1))
    with pytest.raises((TaskIOException, PersistenceDataNotFoundException), match=url.split("/")[2]):
        engine.bind()


def test_writing_to_an_unknown_bucket_does_not_create_it(s3: str, client: Any) -> None:
    bucket = f"checkmate-missing-{uuid.uuid4().hex[:8]}"
    io = TaskIO.from_base_url(f"s3://{bucket}/state", conn_id=S3_CONN_ID)
    try:
        with pytest.raises((TaskIOException, PersistenceDataNotFoundException), match=bucket):
            io.write("t/task.json", b"{}")
    finally:
        created = bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]
        if created:
            client.delete_object(Bucket=bucket, Key="state/t/task.json")
            client.delete_bucket(Bucket=bucket)
    assert not created, f"writing created the bucket {bucket}"


def test_unreachable_endpoint_is_a_clear_storage_error(monkeypatch: pytest.MonkeyPatch, s3_endpoint: str) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    extra = {"endpoint_url": f"http://127.0.0.1:{port}", "config_kwargs": {"retries": {"max_attempts": 1}}}
    conn = {"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_CHECKMATE_TEST_DEAD", json.dumps(conn))
    io = TaskIO.from_base_url("s3://checkmate-dead/state", conn_id="checkmate_test_dead")
    for call in (lambda: io.read("t/task.json"), lambda: io.write("t/task.json", b"{}"), lambda: io.list("t/")):
        with pytest.raises(TaskIOException, match=f"127.0.0.1:{port}"):
            call()
    with pytest.raises(TaskIOException, match=f"127.0.0.1:{port}"):
        CheckMateEngine(io, "t", make_stages(1)).bind()


# --------------------------------------------------------------------------- the Airflow hook


def test_hook_default_connection_gives_s3_storage(monkeypatch: pytest.MonkeyPatch, s3: str, client: Any) -> None:
    from airflow_checkmate.hooks.checkmate import CheckMateHook

    monkeypatch.delenv("_AIRFLOW_PROCESS_CONTEXT", raising=False)
    extra = {"base_url": s3, "storage_conn_id": S3_CONN_ID, "lease_seconds": 9}
    monkeypatch.setenv("AIRFLOW_CONN_CHECKMATE_DEFAULT", json.dumps({"conn_type": "checkmate", "extra": extra}))
    hook = CheckMateHook()
    io = hook.io
    assert isinstance(io, TaskIOObjectStorage)
    assert io.base_url == s3 and io.lease_seconds == 9.0 and io.conditions.available
    io.write("hooked/task.json", '{"via": "hook"}')
    assert raw(client, s3, "hooked/task.json") == b'{"via": "hook"}'
    assert TaskIO.from_base_url(s3, conn_id=S3_CONN_ID).read("hooked/task.json") == '{"via": "hook"}'
    assert hook.test_connection() == (True, f"CheckMate storage at {s3} is writable")
    assert keys(client, s3) == ["state/hooked/task.json"], "the connection test left its probe behind"


# --------------------------------------------------------------------------- checkpoints


def test_a_checkpoint_costs_one_lease_read_and_one_request_per_object_in_order(
    open_io: Callable[..., TaskIOObjectStorage], client: Any, s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request counts the module docstring and the README give, and the order that keeps prefixes valid."""
    io = open_io()
    sent: list[tuple[str, str]] = []
    original = io.fs._call_s3

    async def recorded(method: str, *args: Any, **kwargs: Any) -> Any:
        sent.append((method, str(kwargs.get("Key", kwargs.get("Prefix", ""))).removeprefix("state/")))
        return await original(method, *args, **kwargs)

    monkeypatch.setattr(io.fs, "_call_s3", recorded)
    keeper = acquire(io, LOCK, None)[0]
    fence = keeper.fence
    sent.clear()
    assert io.read_prefix("t/") == {LOCK: keeper.record.model_dump_json().encode()}  # as a bind reads the task
    assert sent == [("list_objects_v2", "t/"), ("get_object", LOCK)], "a bind lists once and reads each object once"
    sent.clear()
    io.commit([("t/task.json", b"task"), (OBJ, b"s1 RUNNING"), ("t/cancel.json", b"x")], fence=fence)
    assert sent == [("get_object", LOCK), *(("put_object", o) for o in ("t/task.json", OBJ, "t/cancel.json"))]
    sent.clear()
    io.commit([(OBJ, b"s1 COMPLETE"), ("t/s2.stage.json", b"s2 RUNNING")], fence=fence)
    assert sent == [("get_object", LOCK), ("put_object", OBJ), ("put_object", "t/s2.stage.json")]
    sent.clear()
    io.commit([("t/s2.stage.json", b"s2 COMPLETE"), ("t/cancel.json", None)], fence=fence)
    assert sent == [("get_object", LOCK), ("put_object", "t/s2.stage.json"), ("delete_object", "t/cancel.json")]
    sent.clear()
    assert keeper.renew()
    assert sent == [("get_object", LOCK), ("put_object", LOCK)], "a renewal is a read and a conditional PUT"

    assert open_io().lease_swap(LOCK, io.lease_read(LOCK) or "", lease_json("new"))
    before = {key: raw(client, s3, key.removeprefix("state/")) for key in keys(client, s3)}
    sent.clear()
    with pytest.raises(LeaseLostException, match="no longer held"):
        io.commit([(OBJ, b"stale"), ("t/s3.stage.json", b"stale")], fence=fence)
    assert sent == [("get_object", LOCK)], "a checkpoint refused by its lease check sent more than that check"
    assert {key: raw(client, s3, key.removeprefix("state/")) for key in keys(client, s3)} == before


def test_a_checkpoint_refused_midway_leaves_a_prefix_and_says_so(
    open_io: Callable[..., TaskIOObjectStorage], client: Any, s3: str
) -> None:
    """S3 has no multi-object transaction: a write refused by its ETag condition stops the checkpoint there."""
    old, new = open_io(), open_io()
    assert old.lease_create(LOCK, lease_json("old"))
    old.commit([(OBJ, b"s1 RUNNING"), ("t/s2.stage.json", b"s2 CREATED")], fence=Fence(LOCK, "old"))
    new.write("t/s2.stage.json", b"written by another holder")  # unfenced, as a forced reset would
    with pytest.raises(LeaseLostException, match="changed since this engine last read or wrote it"):
        old.commit(
            [(OBJ, b"s1 COMPLETE"), ("t/s2.stage.json", b"s2 RUNNING"), ("t/s3.stage.json", b"x")],
            fence=Fence(LOCK, "old"),
        )
    assert raw(client, s3, OBJ) == b"s1 COMPLETE"
    assert raw(client, s3, "t/s2.stage.json") == b"written by another holder"
    assert "state/t/s3.stage.json" not in keys(client, s3), "the checkpoint went on past a refused write"


def test_an_object_created_after_the_listing_is_not_overwritten(
    open_io: Callable[..., TaskIOObjectStorage], client: Any, s3: str
) -> None:
    """A listing tells which objects were absent (no GET before creating them); one created since is kept."""
    old, other = open_io(), open_io()
    assert old.lease_create(LOCK, lease_json("old"))
    assert list(old.read_prefix("t/")) == [LOCK]
    other.write("t/cancel.json", b"cancel, please")
    with pytest.raises(LeaseLostException, match="changed since this engine last read or wrote it"):
        old.commit([("t/cancel.json", b"mine")], fence=Fence(LOCK, "old"))
    assert raw(client, s3, "t/cancel.json") == b"cancel, please"
