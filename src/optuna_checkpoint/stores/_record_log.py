"""An append-only log of checksummed records, with small overwritable slots beside it.

This is the storage layer of :mod:`optuna_checkpoint.stores._journal`: it knows frames,
positions, locking and compare-and-swap, and nothing of streams or checkpoints.

A *record* is a JSON header plus raw payload bytes, framed as::

    b"OCr1" | header length (u32) | payload length (u32) | header | payload
            | CRC-32 of everything before | frame length (u32) | b"1rCO"

all little endian; the ``1`` in the magic numbers is the format version. The leading length and
magic let a reader walk forwards; the trailing length and magic let it walk backwards from the
end of the log, so the newest records are found without reading the older ones. The CRC detects
a torn frame (a writer killed in the middle of an append) and garbled bytes; such a frame at the
end of a log is ignored, and cut off by the next writer before it appends. Damage followed by
intact frames is not a torn append: it is reported as corruption and nothing is cut.

Besides the log there are two tables of *slots*, values overwritten in place: ``claims`` (trial
id -> stream id) and ``heartbeats`` (stream id -> owner tag and time). They are not in the log
because they would make it grow with every trial and every heartbeat.

Two backends implement :class:`RecordLog`:

* :class:`FileRecordLog`: a file, where a position is a byte offset, and two slot files beside
  it. Writers hold an exclusive ``flock`` on the log file, readers a shared one. Appends are
  ``fdatasync``-ed before the transaction returns.
* :class:`RedisRecordLog`: one key per record, where a position is the record's index, and two
  hashes. A transaction runs under ``WATCH`` of the record counter and commits with
  ``MULTI``/``EXEC``, retrying if another client wrote first.

Every log keeps a reader's position and hands each record it reads, exactly once and in order,
to the *sink* it was created with. A log that has fallen far behind, or is opened fresh, is
re-read only from its newest *base* record (one whose header carries ``"catalog"``): every
record's header names the base that was current when it was written.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
import errno
import fcntl
import json
import os
import struct
import threading
import time
from typing import TYPE_CHECKING
from typing import Any
from typing import TypeVar
import weakref
import zlib

from optuna_checkpoint.exceptions import CorruptCheckpointError


if TYPE_CHECKING:
    import redis


T = TypeVar("T")

_MAGIC = b"OCr1"
_END_MAGIC = b"1rCO"
_HEAD = struct.Struct("<4sII")  # magic, header length, payload length
_TAIL = struct.Struct("<II4s")  # CRC-32, frame length, end magic
_OVERHEAD = _HEAD.size + _TAIL.size
_MAX_HEADER = 64 << 20
_MAX_PAYLOAD = (1 << 32) - 1 - _OVERHEAD - _MAX_HEADER

# How far behind a reader may fall before it re-reads from the newest base record instead (as
# it does when it has read nothing yet).
_MAX_CATCH_UP_BYTES = 1 << 20
_MAX_CATCH_UP_RECORDS = 256
# Bytes read per step when looking backwards for the last intact frame.
_SCAN_WINDOW = 64 << 10
# Bytes read when reading one record; a larger one takes a second read.
_READ_AHEAD = 16 << 10

# Slot values. A claim is the stream id; a heartbeat is the owner's token tag and the time.
CLAIM = struct.Struct("<q")
HEARTBEAT = struct.Struct("<8sd")

BASE_KEY = "base"
CATALOG_KEY = "catalog"


class LogBusyError(Exception):
    """The log's lock was not free within the time a caller was willing to wait."""


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


# Receives the records a log reads, in order; ``reset`` means forget what came before.
RecordSink = Callable[[Sequence[Record], bool], None]


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """Frame a header and payload as one record."""
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    if len(header_bytes) > _MAX_HEADER or len(payload) > _MAX_PAYLOAD:
        raise ValueError("record too large")
    head = _HEAD.pack(_MAGIC, len(header_bytes), len(payload))
    crc = zlib.crc32(payload, zlib.crc32(header_bytes, zlib.crc32(head)))
    size = len(head) + len(header_bytes) + len(payload) + _TAIL.size
    return b"".join((head, header_bytes, payload, _TAIL.pack(crc, size, _END_MAGIC)))


def _frame_size(buf: bytes | memoryview, offset: int) -> int | None:
    """The size the frame starting at ``offset`` claims, or ``None`` if that is no frame."""
    if len(buf) - offset < _HEAD.size:
        return None
    magic, header_len, payload_len = _HEAD.unpack_from(buf, offset)
    if magic != _MAGIC or header_len > _MAX_HEADER or payload_len > _MAX_PAYLOAD:
        return None
    return int(header_len + payload_len + _OVERHEAD)


def decode_frame(buf: bytes | memoryview, offset: int, pos: int, end: int) -> Record | None:
    """Decode the frame at ``buf[offset:]``; ``None`` if it is incomplete or damaged.

    Args:
        buf: Bytes holding the frame.
        offset: Where the frame starts in ``buf``.
        pos: The record's position in its log.
        end: The position after it.
    """
    size = _frame_size(buf, offset)
    if size is None or len(buf) - offset < size:
        return None
    view = memoryview(buf)[offset : offset + size]
    crc, length, end_magic = _TAIL.unpack_from(view, size - _TAIL.size)
    if end_magic != _END_MAGIC or length != size or crc != zlib.crc32(view[: -_TAIL.size]):
        return None
    _, header_len, _ = _HEAD.unpack_from(view)
    try:
        header = json.loads(bytes(view[_HEAD.size : _HEAD.size + header_len]))
    except ValueError:
        return None
    if not isinstance(header, dict):
        return None
    payload = bytes(view[_HEAD.size + header_len : -_TAIL.size])
    return Record(pos, end, size, header, payload)


def _decode_run(buf: bytes, start: int) -> tuple[list[Record], int]:
    """Decode consecutive frames of a file from byte ``start``; stop at the first bad one.

    Returns:
        The records, and how many bytes of ``buf`` they cover.
    """
    records = []
    offset = 0
    while offset < len(buf):
        size = _frame_size(buf, offset)
        pos = start + offset
        record = None if size is None else decode_frame(buf, offset, pos, pos + size)
        if record is None:
            break
        records.append(record)
        offset += record.size
    return records, offset


def _base_of(record: Record) -> int:
    base = record.header.get(BASE_KEY)
    if not isinstance(base, int) or not 0 <= base <= record.pos:
        raise CorruptCheckpointError(
            f"the checkpoint record at position {record.pos} names no valid base record; the "
            "side record is damaged."
        )
    return base


class Transaction(abc.ABC):
    """The writes one atomic step of a store makes: at most one record, and slot values.

    ``end`` is the position the appended record gets, so a header may point at it.
    """

    def __init__(self, end: int) -> None:
        self.end = end
        self.record: tuple[dict[str, Any], bytes] | None = None
        self.claims: dict[int, int] = {}
        self.heartbeats: dict[int, tuple[bytes, float]] = {}

    @abc.abstractmethod
    def claim_of(self, trial_id: int) -> int | None:
        """Return the stream id in the claim slot of ``trial_id``, read inside the transaction."""

    def append(self, header: dict[str, Any], payload: bytes = b"") -> None:
        """Append one record (at position :attr:`end`) when the transaction commits."""
        if self.record is not None:
            raise RuntimeError("a transaction appends at most one record")
        self.record = (header, payload)

    def set_claim(self, trial_id: int, stream_id: int) -> None:
        """Overwrite the claim slot of ``trial_id``."""
        self.claims[trial_id] = stream_id

    def set_heartbeat(self, stream_id: int, tag: bytes, at: float) -> None:
        """Overwrite the heartbeat slot of ``stream_id``."""
        self.heartbeats[stream_id] = (tag, at)

    @property
    def empty(self) -> bool:
        """Whether there is nothing to write."""
        return self.record is None and not self.claims and not self.heartbeats


class RecordLog(abc.ABC):
    """An append-only record log with claim and heartbeat slots (see the module docstring)."""

    def __init__(self, sink: RecordSink) -> None:
        self._sink = sink
        self._end = 0  # the position up to which records went to the sink

    @abc.abstractmethod
    def refresh(self) -> None:
        """Hand the records written since the last read to the sink."""

    @abc.abstractmethod
    def transact(self, decide: Callable[[Transaction], T], *, timeout: float | None = None) -> T:
        """Catch up, let ``decide`` fill a transaction, and commit it atomically.

        ``decide`` sees the log as of the moment of the commit: the sink has every record up
        to :attr:`Transaction.end`, and nobody writes in between. It may run more than once
        (when another writer came first) and must only record its writes in the transaction.
        After the commit the appended record goes to the sink like any other.

        Raises:
            LogBusyError: ``timeout`` seconds passed without getting the lock.
        """

    @abc.abstractmethod
    def read(self, pos: int) -> Record:
        """Read the record at ``pos`` (a position a record header or base gave)."""

    @abc.abstractmethod
    def read_claims(self, trial_ids: Collection[int]) -> dict[int, int]:
        """Return the stream id in each claim slot of ``trial_ids`` that holds one."""

    @abc.abstractmethod
    def read_heartbeats(self, stream_ids: Collection[int]) -> dict[int, tuple[bytes, float]]:
        """Return the owner tag and time in each heartbeat slot of ``stream_ids`` that has one."""


# -- files ----------------------------------------------------------------------------------


class _Descriptor:
    """A file descriptor opened on first use, and again in a forked child.

    ``flock`` locks belong to the open file description, which a forked child would share
    with its parent: the child must open its own to be excluded by it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self._pid = -1
        self._lock = threading.Lock()

    def get(self) -> int:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    fd = self._open()
                    weakref.finalize(self, os.close, fd)
                    self._fd, self._pid = fd, os.getpid()
        return self._fd

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return os.open(self.path, flags)
        # A new file's name is durable only once its directory is synced.
        directory = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return fd


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class _SlotFile:
    """Fixed-size slots addressed by index, each ``value | CRC-32 | padding``.

    A slot never straddles a page, so a write of one is not torn by a killed process; an
    all-zero slot (a hole of the sparse file) is empty, and one failing its CRC counts as empty.
    """

    def __init__(self, path: str, value: struct.Struct) -> None:
        self._file = _Descriptor(path)
        self._value = value
        self._crc = struct.Struct("<I")
        self._size = 16
        while self._size < value.size + self._crc.size:
            self._size *= 2

    def read_many(self, indices: Collection[int]) -> dict[int, tuple[Any, ...]]:
        wanted = sorted({i for i in indices if i >= 0})
        if not wanted:
            return {}
        fd = self._file.get()
        found = {}
        span = (wanted[-1] - wanted[0] + 1) * self._size
        if span <= _MAX_CATCH_UP_BYTES:
            block = _pread_all(fd, span, wanted[0] * self._size)
            offsets = {i: (i - wanted[0]) * self._size for i in wanted}
            slots = {i: block[o : o + self._size] for i, o in offsets.items()}
        else:
            slots = {i: _pread_all(fd, self._size, i * self._size) for i in wanted}
        for index, slot in slots.items():
            value = self._decode(index, slot)
            if value is not None:
                found[index] = value
        return found

    def write(self, index: int, value: tuple[Any, ...]) -> None:
        packed = self._value.pack(*value)
        crc = self._crc.pack(zlib.crc32(packed, zlib.crc32(struct.pack("<Q", index))))
        slot = (packed + crc).ljust(self._size, b"\0")
        _pwrite_all(self._file.get(), slot, index * self._size)

    def _decode(self, index: int, slot: bytes) -> tuple[Any, ...] | None:
        if len(slot) < self._size or not any(slot):
            return None
        packed = slot[: self._value.size]
        (crc,) = self._crc.unpack_from(slot, self._value.size)
        if crc != zlib.crc32(packed, zlib.crc32(struct.pack("<Q", index))):
            return None
        return self._value.unpack(packed)


class _FileTransaction(Transaction):
    def __init__(self, end: int, claims: _SlotFile) -> None:
        super().__init__(end)
        self._claims = claims

    def claim_of(self, trial_id: int) -> int | None:
        # The log's exclusive lock is held: nobody else writes slots meanwhile.
        value = self._claims.read_many([trial_id]).get(trial_id)
        return None if value is None else int(value[0])


class FileRecordLog(RecordLog):
    """A record log in a file, with ``-claims`` and ``-heartbeats`` slot files beside it."""

    def __init__(self, path: str, sink: RecordSink) -> None:
        super().__init__(sink)
        self.path = path
        self._log = _Descriptor(path)
        self._claims = _SlotFile(path + "-claims", CLAIM)
        self._heartbeats = _SlotFile(path + "-heartbeats", HEARTBEAT)

    def __repr__(self) -> str:
        return f"FileRecordLog({self.path!r})"

    @contextmanager
    def _locked(self, operation: int, timeout: float | None = None) -> Iterator[int]:
        fd = self._log.get()
        if timeout is None:
            fcntl.flock(fd, operation)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, operation | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                    if time.monotonic() >= deadline:
                        raise LogBusyError(f"{self.path} is locked by another process") from e
                    time.sleep(0.005)
        try:
            yield fd
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def refresh(self) -> None:
        """Hand the records written since the last read to the sink."""
        with self._locked(fcntl.LOCK_SH) as fd:
            self._catch_up(fd, writer=False)

    def transact(self, decide: Callable[[Transaction], T], *, timeout: float | None = None) -> T:
        """Run ``decide`` and commit its writes under the exclusive lock."""
        with self._locked(fcntl.LOCK_EX, timeout) as fd:
            self._catch_up(fd, writer=True)
            txn = _FileTransaction(self._end, self._claims)
            result = decide(txn)
            self._commit(fd, txn)
            return result

    def read(self, pos: int) -> Record:
        """Read the record at byte ``pos``; records never move once written."""
        fd = self._log.get()
        buf = os.pread(fd, _READ_AHEAD, pos)
        size = _frame_size(buf, 0)
        if size is not None and size > len(buf):
            buf = _pread_all(fd, size, pos)
        record = None if size is None else decode_frame(buf, 0, pos, pos + size)
        if record is None:
            raise CorruptCheckpointError(
                f"the record at byte {pos} of {self.path} is damaged; restore the file from a "
                "backup, or start a new stream."
            )
        return record

    def read_claims(self, trial_ids: Collection[int]) -> dict[int, int]:
        """Read claim slots under the shared lock."""
        with self._locked(fcntl.LOCK_SH):
            return {t: int(v[0]) for t, v in self._claims.read_many(trial_ids).items()}

    def read_heartbeats(self, stream_ids: Collection[int]) -> dict[int, tuple[bytes, float]]:
        """Read heartbeat slots under the shared lock."""
        with self._locked(fcntl.LOCK_SH):
            return {
                s: (bytes(v[0]), float(v[1]))
                for s, v in self._heartbeats.read_many(stream_ids).items()
            }

    def _commit(self, fd: int, txn: Transaction) -> None:
        written = None
        if txn.record is not None:
            frame = encode_frame(*txn.record)
            _pwrite_all(fd, frame, txn.end)
            # Durable before the caller goes on to write the trial's end to the journal.
            os.fdatasync(fd)
            written = decode_frame(frame, 0, txn.end, txn.end + len(frame))
            assert written is not None
        # Not synced: a claim lost to a power cut leaves its trial unclaimed, and a resuming
        # worker adopts an unclaimed trial once the claim window has passed, as it would have
        # taken it over as its own. A sync per trial would cost more than the rest of the claim.
        for trial_id, stream_id in txn.claims.items():
            self._claims.write(trial_id, (stream_id,))
        for stream_id, beat in txn.heartbeats.items():
            # Not synced: a heartbeat lost to a power cut only makes the lease look older.
            self._heartbeats.write(stream_id, beat)
        if written is not None:
            self._deliver([written], reset=False, end=written.end)

    def _deliver(self, records: Sequence[Record], *, reset: bool, end: int) -> None:
        self._sink(records, reset)
        self._end = end

    def _catch_up(self, fd: int, *, writer: bool) -> None:
        size = os.fstat(fd).st_size
        if size == self._end:
            return
        if self._end == 0 or size < self._end or size - self._end > _MAX_CATCH_UP_BYTES:
            self._load_from_base(fd, size, writer=writer)
            return
        buf = _pread_all(fd, size - self._end, self._end)
        records, used = _decode_run(buf, self._end)
        if used < len(buf):
            self._cut_torn_tail(fd, self._end + used, size, writer=writer)
        self._deliver(records, reset=False, end=self._end + used)

    def _load_from_base(self, fd: int, size: int, *, writer: bool) -> None:
        """Read only from the newest base record: the cost does not grow with the log."""
        last = self._last_intact(fd, size)
        if last is None:
            self._cut_torn_tail(fd, 0, size, writer=writer)
            self._deliver([], reset=True, end=0)
            return
        base = _base_of(last)
        records, used = _decode_run(_pread_all(fd, last.end - base, base), base)
        if base + used != last.end or not records[0].is_base:
            raise self._corrupt(base + used)
        if writer and size > last.end:
            os.ftruncate(fd, last.end)  # whatever follows the last intact frame is torn
        self._deliver(records, reset=True, end=last.end)

    def _cut_torn_tail(self, fd: int, at: int, size: int, *, writer: bool) -> None:
        """Drop a partial or garbled last frame, which a killed writer leaves behind.

        Only damage after the last intact frame is a torn tail; damage followed by intact frames
        is corruption, and nothing is cut.
        """
        if at >= size:
            return
        last = self._last_intact(fd, size)
        if last is not None and last.end > at:
            raise self._corrupt(at)
        if writer:
            os.ftruncate(fd, at)

    def _corrupt(self, at: int) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"{self.path} is damaged at byte {at}, before intact records: not a torn append "
            "but corruption. Restore the file from a backup, or start a new stream."
        )

    def _last_intact(self, fd: int, size: int) -> Record | None:
        """Find the last intact frame by walking backwards over trailing magic numbers."""
        hi = size
        while hi > 0:
            lo = max(0, hi - _SCAN_WINDOW)
            window = _pread_all(fd, hi - lo, lo)
            at = window.rfind(_END_MAGIC)
            while at >= 0:
                frame_end = lo + at + len(_END_MAGIC)
                record = self._intact_ending_at(fd, frame_end, window, lo)
                if record is not None:
                    return record
                at = window.rfind(_END_MAGIC, 0, at + len(_END_MAGIC) - 1)
            if lo == 0:
                return None
            hi = lo + len(_END_MAGIC) - 1  # overlap: a magic may straddle two windows
        return None

    @staticmethod
    def _intact_ending_at(fd: int, frame_end: int, window: bytes, lo: int) -> Record | None:
        if frame_end - lo >= _TAIL.size:
            trailer = window[frame_end - lo - _TAIL.size : frame_end - lo]
        else:
            trailer = _pread_all(fd, _TAIL.size, frame_end - _TAIL.size)
        if len(trailer) < _TAIL.size:
            return None
        _, size, _ = _TAIL.unpack(trailer)
        start = frame_end - size
        if size < _OVERHEAD or start < 0:
            return None
        if start >= lo:
            frame = window[start - lo : frame_end - lo]
        else:
            # Check the head before reading: a magic number found by chance inside a payload
            # comes with a garbage length, possibly gigabytes.
            if _frame_size(_pread_all(fd, _HEAD.size, start), 0) != size:
                return None
            frame = _pread_all(fd, size, start)
        return decode_frame(frame, 0, start, frame_end)


# -- Redis ----------------------------------------------------------------------------------


class _RedisTransaction(Transaction):
    def __init__(self, end: int, pipe: redis.client.Pipeline, claims_key: str) -> None:
        super().__init__(end)
        self._pipe = pipe
        self._claims_key = claims_key

    def claim_of(self, trial_id: int) -> int | None:
        # Watched from here on: a claim another client writes before our EXEC aborts it.
        self._pipe.watch(self._claims_key)  # type: ignore[no-untyped-call]
        value = self._pipe.hget(self._claims_key, str(trial_id))
        return None if value is None else int(value)


class RedisRecordLog(RecordLog):
    """A record log in Redis: ``<ns>:record:<i>`` keys, a counter, a base index, two hashes.

    ``<ns>`` is ``optuna-checkpoint:{<journal prefix>}``: the braces make it a Redis Cluster
    hash tag, so every key of one log lives in the same slot and a transaction may span them.
    """

    def __init__(self, url: str, prefix: str, sink: RecordSink) -> None:
        import redis

        super().__init__(sink)
        self._client = redis.Redis.from_url(url)
        self._watch_error = redis.WatchError
        self.namespace = f"optuna-checkpoint:{{{prefix}}}"
        self._end_key = f"{self.namespace}:end"
        self._base_key = f"{self.namespace}:base"
        self._claims_key = f"{self.namespace}:claims"
        self._heartbeats_key = f"{self.namespace}:heartbeats"

    def __repr__(self) -> str:
        return f"RedisRecordLog({self.namespace!r})"

    def _record_key(self, index: int) -> str:
        return f"{self.namespace}:record:{index}"

    def refresh(self) -> None:
        """Hand the records written since the last read to the sink."""
        self._catch_up(self._client)

    def transact(self, decide: Callable[[Transaction], T], *, timeout: float | None = None) -> T:
        """Run ``decide`` under WATCH of the counter; commit with MULTI/EXEC, or retry."""
        while True:
            with self._client.pipeline() as pipe:
                try:
                    pipe.watch(self._end_key)  # type: ignore[no-untyped-call]
                    self._catch_up(pipe)
                    txn = _RedisTransaction(self._end, pipe, self._claims_key)
                    result = decide(txn)
                    if txn.empty:
                        return result
                    written = self._commit(pipe, txn)
                except self._watch_error:
                    continue  # another client wrote first: catch up and decide again
            if written is not None:
                self._sink([written], False)
                self._end = written.end
            return result

    def _commit(self, pipe: redis.client.Pipeline, txn: Transaction) -> Record | None:
        written = None
        pipe.multi()
        if txn.record is not None:
            frame = encode_frame(*txn.record)
            written = decode_frame(frame, 0, txn.end, txn.end + 1)
            assert written is not None
            pipe.set(self._record_key(txn.end), frame)
            pipe.set(self._end_key, txn.end + 1)
            if written.is_base:
                pipe.set(self._base_key, txn.end)
        if txn.claims:
            pipe.hset(self._claims_key, mapping={str(t): s for t, s in txn.claims.items()})
        if txn.heartbeats:
            beats = {str(s): HEARTBEAT.pack(*beat) for s, beat in txn.heartbeats.items()}
            pipe.hset(self._heartbeats_key, mapping=beats)  # type: ignore[arg-type]
        pipe.execute()
        return written

    def read(self, pos: int) -> Record:
        """Read the record with index ``pos``."""
        return self._fetch(self._client, pos, pos + 1)[0]

    def read_claims(self, trial_ids: Collection[int]) -> dict[int, int]:
        """Read claim slots (one HMGET)."""
        ids = list(trial_ids)
        if not ids:
            return {}
        values = self._client.hmget(self._claims_key, [str(t) for t in ids])
        return {t: int(v) for t, v in zip(ids, values, strict=True) if v is not None}

    def read_heartbeats(self, stream_ids: Collection[int]) -> dict[int, tuple[bytes, float]]:
        """Read heartbeat slots (one HMGET)."""
        ids = list(stream_ids)
        if not ids:
            return {}
        values = self._client.hmget(self._heartbeats_key, [str(s) for s in ids])
        found = {}
        for stream_id, value in zip(ids, values, strict=True):
            if isinstance(value, bytes) and len(value) == HEARTBEAT.size:
                tag, at = HEARTBEAT.unpack(value)
                found[stream_id] = (bytes(tag), float(at))
        return found

    def _catch_up(self, client: redis.Redis | redis.client.Pipeline) -> None:
        raw_end, raw_base = client.mget([self._end_key, self._base_key])
        end = int(raw_end or 0)
        if end == self._end:
            return
        if self._end == 0 or end < self._end or end - self._end > _MAX_CATCH_UP_RECORDS:
            base = int(raw_base or 0)
            records = self._fetch(client, base, end)
            if records and not records[0].is_base:
                raise CorruptCheckpointError(
                    f"record {base} of {self.namespace} should carry the catalog but does not; "
                    "the side record is damaged."
                )
            self._sink(records, True)
        else:
            self._sink(self._fetch(client, self._end, end), False)
        self._end = end

    def _fetch(
        self, client: redis.Redis | redis.client.Pipeline, lo: int, hi: int
    ) -> list[Record]:
        if hi <= lo:
            return []
        frames = client.mget([self._record_key(i) for i in range(lo, hi)])
        records = []
        for index, frame in zip(range(lo, hi), frames, strict=True):
            record = decode_frame(frame, 0, index, index + 1) if isinstance(frame, bytes) else None
            if record is None:
                raise CorruptCheckpointError(
                    f"record {index} of {self.namespace} is missing or damaged; restore Redis "
                    "from a backup, or start a new stream."
                )
            records.append(record)
        return records
