"""The file journal's on-disk format: a header, then records framed by length and checksum.

A journal starts with a 16-byte header: the magic ``CMJOURNL``, a format version (u16) and 6 random
bytes that tell one incarnation of the file from the next (a compaction writes a new one). Each record
is one checkpoint: a 16-byte frame (crc32 of the rest of the frame, payload length u64, crc32 of the
payload) and a binary payload listing its entries (an object written with its bytes, or removed). The
frame carries its own checksum so a flipped byte in a length is caught instead of read as a short file.

Reading stops at the torn tail a crash mid-append leaves (a frame or payload cut short, or a tail of
zeros a filesystem exposes for an extension it never wrote); the bytes before it are the last complete
checkpoint. A complete record whose checksum fails is damage, never dropped: it raises. Records are read
one at a time and only where each object's bytes sit is kept, so reading a journal of large states
costs one record's memory, not the file's.
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
ENTRY_SIZE = _ENTRY.size
_ZERO_CHUNK = 1 << 20

#: An entry of a checkpoint: an object's name and its new bytes, or None to remove it.
Entry = tuple[str, bytes | None]
#: Where an object's bytes sit: (offset, length), in the file or relative to the start of its record.
Location = tuple[int, int]

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


def encode_record(entries: Sequence[Entry]) -> tuple[list[bytes], list[tuple[str, Location | None]]]:
    """One checkpoint as the pieces of a framed record (written together with one ``writev``, so the
    objects' bytes are never copied into one buffer) and where each written object sits in the record."""
    pieces = [b""]
    located: list[tuple[str, Location | None]] = []
    crc = length = 0
    for name, data in entries:
        raw = name.encode("utf-8")
        if data is None:
            parts: tuple[bytes, ...] = (_ENTRY.pack(len(raw), _REMOVE, 0), raw)
            located.append((name, None))
        else:
            parts = (_ENTRY.pack(len(raw), _WRITE, len(data)), raw, data)
            located.append((name, (FRAME_SIZE + length + ENTRY_SIZE + len(raw), len(data))))
        for part in parts:
            crc = zlib.crc32(part, crc)
            length += len(part)
        pieces += parts
    tail = struct.pack(">QI", length, crc)
    pieces[0] = struct.pack(">I", zlib.crc32(tail)) + tail
    return pieces, located


@dataclass
class Replay:
    """Where the live objects of a journal sit, read up to ``end`` (the end of its last complete record)."""

    objects: dict[str, Location] = field(default_factory=dict)
    end: int = HEADER_SIZE
    live_bytes: int = 0
    records: int = 0

    def apply(self, located: Sequence[tuple[str, Location | None]], record_at: int) -> None:
        """Apply a record that starts at file offset ``record_at``."""
        for name, where in located:
            old = self.objects.pop(name, None)
            if old is not None:
                self.live_bytes -= len(name) + old[1]
            if where is not None:
                self.objects[name] = (record_at + where[0], where[1])
                self.live_bytes += len(name) + where[1]

    def dead_bytes(self) -> int:
        """Bytes of records past the one record per live object a compaction writes."""
        compact = sum(FRAME_SIZE + ENTRY_SIZE + len(n.encode("utf-8")) + size for n, (_, size) in self.objects.items())
        return self.end - HEADER_SIZE - compact


def pread_all(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes at ``offset`` (fewer only at the end of the file)."""
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def scan(replay: Replay, fd: int, size: int, path: str) -> None:
    """Apply the complete records from ``replay.end`` to ``size`` (the file's size), one at a time.

    Stops at a torn tail; raises PersistenceDataNotFoundException naming ``path`` and the offset of a
    complete record that fails its checksum.
    """
    pos = replay.end
    while size - pos >= FRAME_SIZE:
        frame = pread_all(fd, FRAME_SIZE, pos)
        if len(frame) < FRAME_SIZE:
            break  # cut meanwhile: a torn tail truncated by the next writer
        frame_crc, length, payload_crc = _FRAME.unpack(frame)
        if zlib.crc32(frame[4:]) != frame_crc:
            if _zeros(fd, pos, size):
                break  # zeros past the last record: an extension the filesystem never wrote
            raise _damaged(path, pos, "its frame (length) fails its checksum")
        if size - pos - FRAME_SIZE < length:
            break  # torn: the crash cut this record short
        body = pread_all(fd, length, pos + FRAME_SIZE)
        if len(body) < length:
            break
        if zlib.crc32(body) != payload_crc:
            raise _damaged(path, pos, f"its payload fails its checksum{_held(body)}")
        replay.apply(_entries(body, path, pos), pos)
        pos += FRAME_SIZE + length
        replay.end = pos
        replay.records += 1


def decode_record(record: bytes) -> list[Entry]:
    """The entries of one framed record held in memory (what a test probe sees being appended)."""
    body = record[FRAME_SIZE:]
    return [
        (name, None if where is None else body[where[0] - FRAME_SIZE : sum(where) - FRAME_SIZE])
        for name, where in _entries(body, "the record", 0)
    ]


def replay_file(path: "os.PathLike[str] | str") -> dict[str, bytes]:
    """A journal file's live objects read whole, with no cache: for tools and checks that look at storage
    from outside a TaskIOFile. A torn tail is ignored; damage raises as in :func:`scan`."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parse_header(pread_all(fd, HEADER_SIZE, 0), os.fspath(path))
        replay = Replay()
        scan(replay, fd, os.fstat(fd).st_size, os.fspath(path))
        return {name: pread_all(fd, size, offset) for name, (offset, size) in replay.objects.items()}
    finally:
        os.close(fd)


def _zeros(fd: int, pos: int, size: int) -> bool:
    while pos < size:
        chunk = pread_all(fd, min(_ZERO_CHUNK, size - pos), pos)
        if not chunk or chunk.count(0) != len(chunk):
            return not chunk
        pos += len(chunk)
    return True


def _entries(body: bytes, path: str, offset: int) -> list[tuple[str, Location | None]]:
    """A record's entries, each written object located relative to the start of the record."""
    located: list[tuple[str, Location | None]] = []
    pos = 0
    try:
        while pos < len(body):
            name_len, kind, data_len = _ENTRY.unpack_from(body, pos)
            pos += ENTRY_SIZE
            name = body[pos : pos + name_len].decode("utf-8")
            pos += name_len
            if kind == _WRITE:
                located.append((name, (FRAME_SIZE + pos, data_len)))
                pos += data_len
            elif kind == _REMOVE:
                located.append((name, None))
            else:
                raise ValueError(f"unknown entry kind {kind}")
        if pos != len(body):
            raise ValueError("entries overrun the record")
    except (struct.error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise _damaged(path, offset, f"its entries do not parse ({exc})") from exc
    return located


def _held(body: bytes) -> str:
    """What a damaged record seems to hold, as far as its entries still parse, for the message."""
    try:
        names = [name for name, _ in _entries(body, "", 0)]
    except PersistenceDataNotFoundException:
        return ""
    return f" (it seems to hold {', '.join(names)})" if names else ""


def _damaged(path: str, offset: int, what: str) -> PersistenceDataNotFoundException:
    return PersistenceDataNotFoundException(
        f"journal {path} is damaged at byte offset {offset}: the record there is complete but {what}; {WAY_OUT}"
    )
