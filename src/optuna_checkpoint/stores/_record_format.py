"""The bytes of a record log: record frames, and the values kept in slots.

A *record* is a JSON header plus raw payload bytes, framed as::

    b"OCr1" | header length (u32) | payload length (u32) | header | payload
            | CRC-32 of everything before | frame length (u32) | b"1rCO"

all little endian; the ``1`` in the magic numbers is the format version. The leading length and
magic let a reader walk forwards; the trailing length and magic let it walk backwards from the
end of the log, so the newest records are found without reading the older ones. The CRC detects
a torn frame (a writer killed in the middle of an append) and garbled bytes.

Every record's header names, under :data:`BASE_KEY`, the newest *base* record when it was
written: one whose header carries the catalog (under :data:`CATALOG_KEY`), from which a reader
may start.
"""

from __future__ import annotations

from dataclasses import dataclass
import json
import struct
from typing import Any
import zlib

from optuna_checkpoint.exceptions import CorruptCheckpointError


_MAGIC = b"OCr1"
END_MAGIC = b"1rCO"
"""The magic number closing a frame, which a reader walking backwards looks for."""
HEAD = struct.Struct("<4sII")  # magic, header length, payload length
TAIL = struct.Struct("<II4s")  # CRC-32, frame length, end magic
OVERHEAD = HEAD.size + TAIL.size
"""The bytes of a frame beyond its header and payload."""
_MAX_HEADER = 64 << 20
_MAX_PAYLOAD = (1 << 32) - 1 - OVERHEAD - _MAX_HEADER

# Slot values. A claim is the stream id and the claim's seal (ASCII, NUL-padded; releases
# before sealed rows kept the stream id alone, in a file of their own); a heartbeat is the
# owner's token tag and the time.
LEGACY_CLAIM = struct.Struct("<q")
CLAIM = struct.Struct("<q56s")
HEARTBEAT = struct.Struct("<8sd")

BASE_KEY = "base"
CATALOG_KEY = "catalog"


@dataclass(frozen=True)
class Record:
    """One record of a log.

    Attributes:
        pos: Its position: a byte offset in a file, an index in Redis.
        end: The position right after it.
        size: Its frame's size in bytes.
        header: The decoded JSON header.
        payload: The raw payload.
    """

    pos: int
    end: int
    size: int
    header: dict[str, Any]
    payload: bytes

    @property
    def is_base(self) -> bool:
        """Whether the record carries a full catalog, so reading may start here."""
        return CATALOG_KEY in self.header


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """Frame a header and payload as one record."""
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    if len(header_bytes) > _MAX_HEADER or len(payload) > _MAX_PAYLOAD:
        raise ValueError("record too large")
    head = HEAD.pack(_MAGIC, len(header_bytes), len(payload))
    crc = zlib.crc32(payload, zlib.crc32(header_bytes, zlib.crc32(head)))
    size = len(head) + len(header_bytes) + len(payload) + TAIL.size
    return b"".join((head, header_bytes, payload, TAIL.pack(crc, size, END_MAGIC)))


def frame_size(buf: bytes | memoryview, offset: int) -> int | None:
    """The size the frame starting at ``offset`` claims, or ``None`` if that is no frame."""
    if len(buf) - offset < HEAD.size:
        return None
    magic, header_len, payload_len = HEAD.unpack_from(buf, offset)
    if magic != _MAGIC or header_len > _MAX_HEADER or payload_len > _MAX_PAYLOAD:
        return None
    return int(header_len + payload_len + OVERHEAD)


def decode_frame(buf: bytes | memoryview, offset: int, pos: int, end: int) -> Record | None:
    """Decode the frame at ``buf[offset:]``; ``None`` if it is incomplete or damaged.

    Args:
        buf: Bytes holding the frame.
        offset: Where the frame starts in ``buf``.
        pos: The record's position in its log.
        end: The position after it.
    """
    size = frame_size(buf, offset)
    if size is None or len(buf) - offset < size:
        return None
    view = memoryview(buf)[offset : offset + size]
    crc, length, end_magic = TAIL.unpack_from(view, size - TAIL.size)
    if end_magic != END_MAGIC or length != size or crc != zlib.crc32(view[: -TAIL.size]):
        return None
    _, header_len, _ = HEAD.unpack_from(view)
    try:
        header = json.loads(bytes(view[HEAD.size : HEAD.size + header_len]))
    except ValueError:
        return None
    if not isinstance(header, dict):
        return None
    payload = bytes(view[HEAD.size + header_len : -TAIL.size])
    return Record(pos, end, size, header, payload)


def decode_run(buf: bytes, start: int) -> tuple[list[Record], int]:
    """Decode consecutive frames of a file from byte ``start``; stop at the first bad one.

    Returns:
        The records, and how many bytes of ``buf`` they cover.
    """
    records = []
    offset = 0
    while offset < len(buf):
        size = frame_size(buf, offset)
        pos = start + offset
        record = None if size is None else decode_frame(buf, offset, pos, pos + size)
        if record is None:
            break
        records.append(record)
        offset += record.size
    return records, offset


def base_of(record: Record) -> int:
    """The position of the base record that ``record`` names.

    Raises:
        CorruptCheckpointError: The header names none, or one after the record itself.
    """
    base = record.header.get(BASE_KEY)
    if not isinstance(base, int) or not 0 <= base <= record.pos:
        raise CorruptCheckpointError(
            f"the checkpoint record at position {record.pos} names no valid base record; the "
            "side record is damaged."
        )
    return base
