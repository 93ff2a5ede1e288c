"""The file journal's on-disk format: a header, then records framed by length and checksum.

A journal starts with a 16-byte header: the magic ``CMJOURNL``, a format version (u16) and 6 random
bytes that tell one incarnation of the file from the next (a compaction writes a new one). Each record
is one checkpoint: a 16-byte frame (crc32 of the rest of the frame, payload length u64, crc32 of the
payload) and a binary payload listing its entries (an object written with its bytes, or removed). The
frame carries its own checksum so a flipped byte in a length is caught instead of read as a short file.

Reading stops at the torn tail a crash mid-append leaves (a frame or payload cut short, or a tail of
zeros a filesystem exposes for an extension it never wrote); the bytes before it are the last complete
checkpoint. A complete record whose checksum fails is damage, never dropped: it raises.
"""

import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from airflow_checkmate.checkmate.exceptions import PersistenceDataNotFoundException

MAGIC = b"CMJOURNL"
VERSION = 1
_HEADER = struct.Struct(">8sH6s")
_FRAME = struct.Struct(">IQI")  # crc32 of the next 12 bytes, payload length, crc32 of the payload
_ENTRY = struct.Struct(">HBQ")  # name length, kind, data length
_WRITE, _REMOVE = 1, 0
HEADER_SIZE = _HEADER.size
FRAME_SIZE = _FRAME.size

#: An entry of a checkpoint: an object's name and its new bytes, or None to remove it.
Entry = tuple[str, bytes | None]

WAY_OUT = (
    "nothing was removed; restore the file from a backup, or start the task over with "
    "`checkmate reset ID` (or remove it with `checkmate clean --force ID`)"
)


def new_header() -> bytes:
    """The header of a new journal file, with a fresh incarnation id."""
    return _HEADER.pack(MAGIC, VERSION, os.urandom(6))


def parse_header(data: bytes, path: str) -> bytes:
    """Check a journal's header; return its incarnation id. Raise naming the file if it is not ours."""
    if len(data) < HEADER_SIZE or data[:8] != MAGIC:
        raise PersistenceDataNotFoundException(
            f"{path} is not a CheckMate journal (its header is missing or wrong); {WAY_OUT}"
        )
    _, version, ident = _HEADER.unpack_from(data)
    if version != VERSION:
        raise PersistenceDataNotFoundException(
            f"journal {path} has format version {version}, this CheckMate reads version {VERSION} only "
            f"(written by another CheckMate release?); it was left in place. Use the release that wrote "
            f"it, or {WAY_OUT}"
        )
    return bytes(ident)


def encode_record(entries: Sequence[Entry]) -> bytes:
    """One checkpoint as a framed record (one buffer: it is appended with a single write)."""
    parts: list[bytes] = []
    for name, data in entries:
        raw_name = name.encode("utf-8")
        if data is None:
            parts += (_ENTRY.pack(len(raw_name), _REMOVE, 0), raw_name)
        else:
            parts += (_ENTRY.pack(len(raw_name), _WRITE, len(data)), raw_name, data)
    payload = b"".join(parts)
    tail = struct.pack(">QI", len(payload), zlib.crc32(payload))
    return b"".join((struct.pack(">I", zlib.crc32(tail)), tail, payload))


@dataclass
class Replay:
    """The live objects of a journal read up to ``end`` (the end of its last complete record)."""

    objects: dict[str, bytes] = field(default_factory=dict)
    end: int = HEADER_SIZE
    live_bytes: int = 0

    def apply(self, entries: Sequence[Entry]) -> None:
        for name, data in entries:
            old = self.objects.pop(name, None)
            if old is not None:
                self.live_bytes -= len(name) + len(old)
            if data is not None:
                self.objects[name] = data
                self.live_bytes += len(name) + len(data)


def read_records(replay: Replay, data: bytes | memoryview, start: int, path: str) -> int:
    """Apply the complete records in ``data`` (the file's bytes from offset ``start``) to ``replay``.

    Stops at a torn tail; raises PersistenceDataNotFoundException naming ``path`` and the offset of a
    complete record that fails its checksum. Returns how many records were applied.
    """
    view = memoryview(data)
    pos = count = 0
    while len(view) - pos >= FRAME_SIZE:
        frame_crc, length, payload_crc = _FRAME.unpack_from(view, pos)
        if zlib.crc32(view[pos + 4 : pos + FRAME_SIZE]) != frame_crc:
            if not any(view[pos:]):
                break  # zeros past the last record: an extension the filesystem never wrote
            raise _damaged(path, start + pos, "its frame (length) fails its checksum")
        body_start = pos + FRAME_SIZE
        if len(view) - body_start < length:
            break  # torn: the crash cut this record short
        body = view[body_start : body_start + length]
        if zlib.crc32(body) != payload_crc:
            raise _damaged(path, start + pos, "its payload fails its checksum")
        replay.apply(_entries(body, path, start + pos))
        pos = body_start + length
        replay.end = start + pos
        count += 1
    return count


def replay_file(path: "os.PathLike[str] | str") -> dict[str, bytes]:
    """A journal file's live objects read whole, with no cache: for tools and checks that look at storage
    from outside a TaskIOFile. A torn tail is ignored; damage raises as in :func:`read_records`."""
    with open(path, "rb") as f:
        data = f.read()
    parse_header(data, os.fspath(path))
    replay = Replay()
    read_records(replay, memoryview(data)[HEADER_SIZE:], HEADER_SIZE, os.fspath(path))
    return replay.objects


def _entries(body: memoryview, path: str, offset: int) -> list[Entry]:
    entries: list[Entry] = []
    pos = 0
    try:
        while pos < len(body):
            name_len, kind, data_len = _ENTRY.unpack_from(body, pos)
            pos += _ENTRY.size
            name = bytes(body[pos : pos + name_len]).decode("utf-8")
            pos += name_len
            if kind == _WRITE:
                entries.append((name, bytes(body[pos : pos + data_len])))
                pos += data_len
            elif kind == _REMOVE:
                entries.append((name, None))
            else:
                raise ValueError(f"unknown entry kind {kind}")
        if pos != len(body):
            raise ValueError("entries overrun the record")
    except (struct.error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise _damaged(path, offset, f"its entries do not parse ({exc})") from exc
    return entries


def _damaged(path: str, offset: int, what: str) -> PersistenceDataNotFoundException:
    return PersistenceDataNotFoundException(
        f"journal {path} is damaged at byte offset {offset}: the record there is complete but {what}; {WAY_OUT}"
    )
