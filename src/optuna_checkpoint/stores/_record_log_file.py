"""A record log in a file, with slot files beside it.

A position is a byte offset. Writers hold an exclusive ``flock`` on the log file, readers a
shared one. Appends are ``fdatasync``-ed before the transaction returns. A torn frame (a writer
killed in the middle of an append) at the end of the log is ignored, and cut off by the next
writer before it appends. Damage followed by intact frames is not a torn append: it is reported
as corruption and nothing is cut.

Claims are kept in ``-sealed-claims``; a ``-claims`` file, where releases before sealed rows
kept unsealed claims, is only read, and only if it exists. Heartbeats are in ``-heartbeats``.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
import errno
import fcntl
import os
import struct
import threading
import time
from typing import Any
import weakref
import zlib

from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.stores._base import Claim
from optuna_checkpoint.stores._record_format import CLAIM
from optuna_checkpoint.stores._record_format import END_MAGIC
from optuna_checkpoint.stores._record_format import HEAD
from optuna_checkpoint.stores._record_format import HEARTBEAT
from optuna_checkpoint.stores._record_format import LEGACY_CLAIM
from optuna_checkpoint.stores._record_format import OVERHEAD
from optuna_checkpoint.stores._record_format import TAIL
from optuna_checkpoint.stores._record_format import Record
from optuna_checkpoint.stores._record_format import base_of
from optuna_checkpoint.stores._record_format import decode_frame
from optuna_checkpoint.stores._record_format import decode_run
from optuna_checkpoint.stores._record_format import encode_frame
from optuna_checkpoint.stores._record_format import frame_size
from optuna_checkpoint.stores._record_log_base import LogBusyError
from optuna_checkpoint.stores._record_log_base import RecordLog
from optuna_checkpoint.stores._record_log_base import RecordSink
from optuna_checkpoint.stores._record_log_base import T
from optuna_checkpoint.stores._record_log_base import Transaction


# How far behind a reader may fall before it re-reads from the newest base record instead (as
# it does when it has read nothing yet).
_MAX_CATCH_UP_BYTES = 1 << 20
# Bytes read per step when looking backwards for the last intact frame.
_SCAN_WINDOW = 64 << 10
# Bytes read when reading one record; a larger one takes a second read.
_READ_AHEAD = 16 << 10


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

    def read_all(self) -> list[int]:
        """The indices of every slot that holds a value (reads the whole file)."""
        data = _pread_all(self._file.get(), os.fstat(self._file.get()).st_size, 0)
        count = len(data) // self._size
        slots = (data[i * self._size : (i + 1) * self._size] for i in range(count))
        return [i for i, slot in enumerate(slots) if self._decode(i, slot) is not None]

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


class _ClaimSlots:
    """The claim slots: sealed ones, and the unsealed ones of earlier releases, if any."""

    def __init__(self, path: str) -> None:
        self.sealed = _SlotFile(path + "-sealed-claims", CLAIM)
        legacy = path + "-claims"
        # Never created: only a log written by an earlier release has one.
        self.legacy = _SlotFile(legacy, LEGACY_CLAIM) if os.path.exists(legacy) else None

    def read_many(self, trial_ids: Collection[int]) -> dict[int, Claim]:
        found = {
            t: Claim(int(v[0]), bytes(v[1]).rstrip(b"\0").decode("ascii"))
            for t, v in self.sealed.read_many(trial_ids).items()
        }
        missing = [t for t in trial_ids if t not in found]
        if self.legacy is not None and missing:
            found.update((t, Claim(int(v[0]))) for t, v in self.legacy.read_many(missing).items())
        return found

    def write(self, trial_id: int, claim: Claim) -> None:
        seal = (claim.seal or "").encode("ascii")
        if len(seal) > CLAIM.size - LEGACY_CLAIM.size:
            raise ValueError(f"a claim's seal of {len(seal)} bytes does not fit its slot")
        self.sealed.write(trial_id, (claim.stream_id, seal))

    def unsealed_until(self) -> int:
        if self.legacy is None:
            return -1
        return max(self.legacy.read_all(), default=-1)


class _FileTransaction(Transaction):
    def __init__(self, end: int, claims: _ClaimSlots) -> None:
        super().__init__(end)
        self._claims = claims

    def claim_of(self, trial_id: int) -> Claim | None:
        # The log's exclusive lock is held: nobody else writes slots meanwhile.
        return self._claims.read_many([trial_id]).get(trial_id)


class FileRecordLog(RecordLog):
    """A record log in a file, with claim and heartbeat slot files beside it."""

    def __init__(self, path: str, sink: RecordSink) -> None:
        super().__init__(sink)
        self.path = path
        self._log = _Descriptor(path)
        self._claims = _ClaimSlots(path)
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
        size = frame_size(buf, 0)
        if size is not None and size > len(buf):
            buf = _pread_all(fd, size, pos)
        record = None if size is None else decode_frame(buf, 0, pos, pos + size)
        if record is None:
            raise CorruptCheckpointError(
                f"the record at byte {pos} of {self.path} is damaged; restore the file from a "
                "backup, or start a new stream."
            )
        return record

    def read_claims(self, trial_ids: Collection[int]) -> dict[int, Claim]:
        """Read claim slots under the shared lock."""
        with self._locked(fcntl.LOCK_SH):
            return self._claims.read_many(trial_ids)

    def unsealed_claims_until(self) -> int:
        """The newest trial id in the claim slots of an earlier release (-1: none).

        Takes no lock: it is called inside a transaction, whose exclusive ``flock`` another
        ``flock`` on the same descriptor would give up, and no release writes those slots.
        """
        return self._claims.unsealed_until()

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
        for trial_id, claim in txn.claims.items():
            self._claims.write(trial_id, claim)
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
        records, used = decode_run(buf, self._end)
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
        base = base_of(last)
        records, used = decode_run(_pread_all(fd, last.end - base, base), base)
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
            at = window.rfind(END_MAGIC)
            while at >= 0:
                frame_end = lo + at + len(END_MAGIC)
                record = self._intact_ending_at(fd, frame_end, window, lo)
                if record is not None:
                    return record
                at = window.rfind(END_MAGIC, 0, at + len(END_MAGIC) - 1)
            if lo == 0:
                return None
            hi = lo + len(END_MAGIC) - 1  # overlap: a magic may straddle two windows
        return None

    @staticmethod
    def _intact_ending_at(fd: int, frame_end: int, window: bytes, lo: int) -> Record | None:
        if frame_end - lo >= TAIL.size:
            trailer = window[frame_end - lo - TAIL.size : frame_end - lo]
        else:
            trailer = _pread_all(fd, TAIL.size, frame_end - TAIL.size)
        if len(trailer) < TAIL.size:
            return None
        _, size, _ = TAIL.unpack(trailer)
        start = frame_end - size
        if size < OVERHEAD or start < 0:
            return None
        if start >= lo:
            frame = window[start - lo : frame_end - lo]
        else:
            # Check the head before reading: a magic number found by chance inside a payload
            # comes with a garbage length, possibly gigabytes.
            if frame_size(_pread_all(fd, HEAD.size, start), 0) != size:
                return None
            frame = _pread_all(fd, size, start)
        return decode_frame(frame, 0, start, frame_end)
