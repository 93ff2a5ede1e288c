"""A 20 MiB stage state round-trips through storage, and the engine holds only a few copies of it at once.

- Round trip: a first engine runs the stages and stops on a planned failure; a second engine (a new
  object that only binds) resumes, so the later stages get the big state as parsed back from storage;
  a third engine loads everything and the data is equal, character for character. Each stored object
  is valid JSON of the expected size.
- Memory: tracemalloc's peak over execute() + unbind() of a task whose stages carry the same 20 MiB
  state forward stays within a few copies of it (see the test's docstring for the bound).
"""

import base64
import gc
import json
import os
import random
import tracemalloc
from pathlib import Path
from typing import Any, ClassVar

import pytest

from airflow_checkmate.checkmate import (
    BaseStage,
    BaseStageState,
    CheckMateEngine,
    RetryPolicy,
    StageStatus,
    TaskEngineException,
    TaskIOFile,
)
from support.stages import journal, start_counts
from support.stored_objects import get_object

MiB = 1024 * 1024
BLOB_CHARS = 20 * MiB
TASK = "big"

#: Blobs by key, built by the test before the engine runs (and, for the memory test, before tracing).
BLOBS: dict[str, str] = {}


def make_blob(seed: int, special: bool) -> str:
    """``BLOB_CHARS`` deterministic characters; ``special`` mixes in ones JSON must escape.

    Only Latin-1 characters, so Python stores one byte per character and 20 MiB stays 20 MiB.
    """
    raw = random.Random(seed).randbytes(BLOB_CHARS * 3 // 4)
    blob = base64.b64encode(raw).decode("ascii")
    if special:
        tricky = '"\\\n\t\r\x00\x1f/é\xff</script>'
        step = len(blob) // 64
        blob = "".join(blob[i : i + step - len(tricky)] + tricky for i in range(0, len(blob), step))
    assert len(blob) == BLOB_CHARS
    return blob


class BlobState(BaseStageState[int]):
    """A stage state with a 20 MiB field; ``note`` carries characters outside Latin-1."""

    blob: str = ""
    note: str = ""


class BlobStage(BaseStage[BlobState]):
    """The first stage takes the blob from ``BLOBS``; every later stage carries the previous one forward.

    ``fail_marker``: while that file does not exist, create it and raise (one planned failure).
    """

    #: blob_key is deliberately missing on resume: the state must come from storage, not the template.
    checkmate_identity_exclude: ClassVar[frozenset[str]] = frozenset({"blob_key", "journal_path", "fail_marker"})

    blob_key: str = ""
    journal_path: str = ""
    fail_marker: str = ""
    note_text: str = "€ ✓ 😀"

    def execute_stage(self, previous_state_copy: BlobState) -> None:
        journal(self.journal_path, f"start {self.stage_name} {self.state.attempts}")
        if self.fail_marker and not os.path.exists(self.fail_marker):
            Path(self.fail_marker).touch()
            raise RuntimeError(f"planned failure of {self.stage_name}")
        first = previous_state_copy is self.state
        self.state.blob = BLOBS[self.blob_key] if first else previous_state_copy.blob
        self.state.note = f"{self.stage_name}: {self.note_text}"
        self.state.result = len(self.state.blob)


def blob_stages(
    count: int, key: str, journal_path: Path | str = "", fail_marker: dict[str, str] | None = None
) -> list[BlobStage]:
    fail_marker = fail_marker or {}
    return [
        BlobStage(
            stage_name=f"s{i}",
            state=BlobState(),
            blob_key=key,
            journal_path=str(journal_path),
            fail_marker=fail_marker.get(f"s{i}", ""),
        )
        for i in range(1, count + 1)
    ]


@pytest.fixture
def blob_key() -> Any:
    key = "roundtrip"
    BLOBS[key] = make_blob(seed=20, special=True)
    yield key
    BLOBS.pop(key, None)


def test_20_mib_state_round_trips_through_storage(base: Path, tmp_path: Path, blob_key: str) -> None:
    blob = BLOBS[blob_key]
    io = TaskIOFile(base, durable=True)
    log = tmp_path / "journal.txt"
    marker = str(tmp_path / "s2-failed-once")

    first = CheckMateEngine(io, TASK, blob_stages(3, blob_key, log, {"s2": marker}), RetryPolicy.RETRY, 2)
    with first, pytest.raises(TaskEngineException, match="auto-recovered"):
        first.execute()

    # A new engine resumes at s2: what s2 and s3 carry forward is s1's state as read back from storage.
    second = CheckMateEngine(io, TASK, blob_stages(3, "missing-key", log, {"s2": marker}), RetryPolicy.RETRY, 2)
    with second:
        loaded = second.stages[0].state
        assert loaded.status is StageStatus.COMPLETE
        assert loaded.blob == blob
        assert loaded is not second.stages[1].state
        second.execute()
        assert second.task_result == BLOB_CHARS
    assert start_counts(log) == {"s1": 1, "s2": 2, "s3": 1}

    third = CheckMateEngine(io, TASK, blob_stages(3, "missing-key"), RetryPolicy.RETRY, 2)
    with third:
        assert third.status is StageStatus.COMPLETE
        assert third.check_sync()
        for stage in third.stages:
            assert len(stage.state.blob) == BLOB_CHARS
            assert stage.state.blob == blob
            assert stage.state.note == f"{stage.stage_name}: € ✓ 😀"
            assert stage.state.result == BLOB_CHARS

    utf8_chars = len(blob.encode("utf-8"))
    for name in ("s1", "s2", "s3"):
        raw = get_object(base, f"{TASK}/{name}.stage.json") or b""
        doc = json.loads(raw)  # valid JSON (strict: a raw control character would be refused)
        assert doc["stage_name"] == name
        assert doc["status"] == "COMPLETE"
        assert doc["blob"] == blob
        # The blob once, plus escapes of the few tricky characters and the small rest of the state.
        assert utf8_chars < len(raw) < utf8_chars + 64 * 1024, len(raw)


@pytest.fixture
def shared_blob() -> Any:
    key = "memory"
    BLOBS[key] = make_blob(seed=6, special=False)
    yield key
    BLOBS.pop(key, None)


STAGES_FOR_MEMORY = 8
MAX_COPIES = 6


@pytest.mark.parametrize(
    "note",
    [
        pytest.param("plain ascii", id="ascii"),
        pytest.param("naïve café", id="latin-1"),
        pytest.param("done ✓ 😀", id="beyond-bmp"),
    ],
)
def test_engine_holds_only_a_few_copies_of_a_large_state(fast_io: TaskIOFile, shared_blob: str, note: str) -> None:
    """Peak traced memory of execute() + unbind() stays within MAX_COPIES x 20 MiB, with 8 stages.

    The 20 MiB ASCII blob is allocated before tracing starts and every stage carries the same string
    forward (str is immutable, so the engine's deep copies of the previous state share it); what
    tracemalloc sees is what the engine allocates, mostly the serialised state of each write. A
    careful engine holds at most a couple of serialised copies at a time (the JSON and the bytes for
    the file), freed after each write. The bound allows 6 copies. An engine that kept one serialised
    copy per stage or per write, or serialised every stage again on each write without freeing,
    holds at least 8 copies after 8 COMPLETE writes (160 MiB) plus the live write's: over the bound.
    The peak must also reach one copy, proving the writes are really measured.

    ``note`` is a short field next to the blob. A Python str costs 1, 2 or 4 bytes per character
    depending on the widest character in it, so serialising the state through a str makes one emoji
    anywhere in the state cost 4 bytes per character of the whole 20 MiB document; serialising
    straight to UTF-8 bytes does not. The state's size must not depend on which characters a small
    field holds.
    """
    stages = blob_stages(STAGES_FOR_MEMORY, shared_blob)
    for stage in stages:
        stage.note_text = note
    engine = CheckMateEngine(fast_io, TASK, stages)
    engine.bind()
    gc.collect()
    tracemalloc.start()
    try:
        engine.execute()
        assert all(s.state.blob == BLOBS[shared_blob] for s in engine.stages)
        engine.unbind()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    copy = len(BLOBS[shared_blob])
    assert copy <= peak <= MAX_COPIES * copy, f"peak {peak / MiB:.1f} MiB = {peak / copy:.2f} copies"

    last = json.loads(fast_io.read_bytes(f"{TASK}/s{STAGES_FOR_MEMORY}.stage.json"))
    assert last["blob"] == BLOBS[shared_blob]  # carried forward through every stage
    assert last["note"] == f"s{STAGES_FOR_MEMORY}: {note}"
    for i in range(1, STAGES_FOR_MEMORY):
        assert len(fast_io.read_bytes(f"{TASK}/s{i}.stage.json")) > copy
