"""The store for studies in Optuna's :class:`~optuna.storages.JournalStorage`.

Checkpoints are kept in a side record beside the journal, never in the journal itself: every
Optuna process replays the whole journal, so 5 KB per trial there would slow every reader down
as the study grows, and an operation Optuna does not know would crash them. The side record is
an append-only log of checksummed records (see :mod:`._record_log`):

* with :class:`~optuna.storages.journal.JournalFileBackend`, the file
  ``<journal>.optuna-checkpoint`` with ``-claims`` and ``-heartbeats`` slot files beside it;
* with :class:`~optuna.storages.journal.JournalRedisBackend`, keys under
  ``optuna-checkpoint:{<the backend's prefix>}:``.

Each step of the contract is one transaction of the log: the conditional ones (a stream's
creation, a take-over, a save...) check their condition and append under the log's lock (a file)
or ``WATCH`` (Redis), so they are compare-and-swaps across threads and processes.

Two kinds of content go into records. The *catalog*, small, is the whole of the metadata
(streams with their leases, interruptions) and is rewritten in full whenever it changes, and
every few dozen checkpoints. A *checkpoint* record holds one checkpoint and points to the
stream's previous one. The newest catalog plus the records after it give every stream's newest
checkpoint, so opening the store reads a bounded tail of the log however long the study, and
:meth:`JournalCheckpointStore.latest_checkpoints` follows the chain from there. Claims and
heartbeats live in slots, so neither makes the log grow.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
import hashlib
import logging
import os
import threading
import time
from typing import Any
from typing import ClassVar

import optuna
from optuna.storages import BaseStorage
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal import JournalRedisBackend

from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.exceptions import StreamOwnedError
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import CheckpointStore
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._base import Owner
from optuna_checkpoint.stores._base import StoreRegistry
from optuna_checkpoint.stores._base import Stream
from optuna_checkpoint.stores._base import StreamSummary
from optuna_checkpoint.stores._record_log import BASE_KEY
from optuna_checkpoint.stores._record_log import CATALOG_KEY
from optuna_checkpoint.stores._record_log import FileRecordLog
from optuna_checkpoint.stores._record_log import LogBusyError
from optuna_checkpoint.stores._record_log import Record
from optuna_checkpoint.stores._record_log import RecordLog
from optuna_checkpoint.stores._record_log import RecordSink
from optuna_checkpoint.stores._record_log import RedisRecordLog
from optuna_checkpoint.stores._record_log import Transaction


_logger = logging.getLogger(__name__)

SIDE_FILE_SUFFIX = ".optuna-checkpoint"
_CHECKPOINT_KEY = "checkpoint"
# A checkpoint record also carries the catalog once this many records or bytes were written
# since the last one: that bounds what a fresh process reads to find every stream's newest.
_CATALOG_EVERY_RECORDS = 32
_CATALOG_EVERY_BYTES = 256 << 10
_RELEASE_TIMEOUT = 0.2
_MISSING = object()


def _token_tag(token: str) -> bytes:
    """What a heartbeat slot keeps of the owner's token: enough to tell owners apart."""
    return hashlib.sha256(token.encode()).digest()[:8]


def _token(owner: Owner | None) -> str | None:
    return None if owner is None else owner.token


def _holds(owner: Owner | None, token: str) -> bool:
    return owner is not None and owner.token == token


# -- the catalog ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """A stream as the catalog knows it.

    ``stream.heartbeat_at`` is the time of its last change of owner; later heartbeats are in
    the heartbeat slot. ``head`` is the position of its newest checkpoint record.
    """

    stream: Stream
    study_id: int
    head: int | None


@dataclass(frozen=True)
class _Recorded:
    """An interruption with the study it belongs to."""

    interruption: Interruption
    study_uid: str
    study_id: int


@dataclass(frozen=True)
class _Catalog:
    """All the metadata: streams in creation order, and interruptions. Never mutated."""

    next_stream_id: int = 1
    entries: Mapping[int, _Entry] = field(default_factory=dict)
    interruptions: tuple[_Recorded, ...] = ()

    def find(self, study_uid: str, name: str) -> _Entry | None:
        return next(
            (
                e
                for e in self.entries.values()
                if e.stream.study_uid == study_uid and e.stream.name == name
            ),
            None,
        )

    def with_entry(self, entry: _Entry) -> _Catalog:
        entries = dict(self.entries)
        entries[entry.stream.stream_id] = entry
        next_id = max(self.next_stream_id, entry.stream.stream_id + 1)
        return replace(self, entries=entries, next_stream_id=next_id)

    def forget_reused_study_id(self, study_id: int, study_uid: str) -> _Catalog:
        """Drop what a deleted study left under ``study_id``, which now names another study."""

        def stale(this_id: int, this_uid: str) -> bool:
            return this_id == study_id and this_uid != study_uid

        return replace(
            self,
            entries={
                i: e for i, e in self.entries.items() if not stale(e.study_id, e.stream.study_uid)
            },
            interruptions=tuple(
                r for r in self.interruptions if not stale(r.study_id, r.study_uid)
            ),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "next_stream_id": self.next_stream_id,
            "streams": [_entry_to_json(e) for e in self.entries.values()],
            "interruptions": [_recorded_to_json(r) for r in self.interruptions],
        }

    @classmethod
    def from_json(cls, data: Any) -> _Catalog:
        entries = [_entry_from_json(e) for e in data["streams"]]
        return cls(
            next_stream_id=int(data["next_stream_id"]),
            entries={e.stream.stream_id: e for e in entries},
            interruptions=tuple(_recorded_from_json(r) for r in data["interruptions"]),
        )


def _owner_to_json(owner: Owner | None) -> dict[str, Any] | None:
    if owner is None:
        return None
    return {
        "token": owner.token,
        "host": owner.host,
        "boot_id": owner.boot_id,
        "pid": owner.pid,
        "pid_start": owner.pid_start,
    }


def _owner_from_json(data: Any) -> Owner | None:
    if data is None:
        return None
    return Owner(
        token=str(data["token"]),
        host=str(data["host"]),
        boot_id=str(data["boot_id"]),
        pid=int(data["pid"]),
        pid_start=str(data["pid_start"]),
    )


def _entry_to_json(entry: _Entry) -> dict[str, Any]:
    s = entry.stream
    return {
        "stream_id": s.stream_id,
        "study_id": entry.study_id,
        "study_uid": s.study_uid,
        "name": s.name,
        "fingerprint": s.fingerprint,
        "owner": _owner_to_json(s.owner),
        "heartbeat_at": s.heartbeat_at.hex(),
        "first_trial_number": s.first_trial_number,
        "head": entry.head,
    }


def _entry_from_json(data: Any) -> _Entry:
    head = data["head"]
    stream = Stream(
        stream_id=int(data["stream_id"]),
        study_uid=str(data["study_uid"]),
        name=str(data["name"]),
        fingerprint=data["fingerprint"],
        owner=_owner_from_json(data["owner"]),
        heartbeat_at=float.fromhex(data["heartbeat_at"]),
        first_trial_number=int(data["first_trial_number"]),
    )
    return _Entry(stream, int(data["study_id"]), None if head is None else int(head))


def _recorded_to_json(recorded: _Recorded) -> dict[str, Any]:
    i = recorded.interruption
    return {
        "study_uid": recorded.study_uid,
        "study_id": recorded.study_id,
        "trial_id": i.trial_id,
        "trial_number": i.trial_number,
        "logical_number": i.logical_number,
        "reason": i.reason,
        "stream_id": i.stream_id,
    }


def _recorded_from_json(data: Any) -> _Recorded:
    stream_id = data["stream_id"]
    interruption = Interruption(
        trial_id=int(data["trial_id"]),
        trial_number=int(data["trial_number"]),
        logical_number=int(data["logical_number"]),
        reason=str(data["reason"]),
        stream_id=None if stream_id is None else int(stream_id),
    )
    return _Recorded(interruption, str(data["study_uid"]), int(data["study_id"]))


def _checkpoint_to_json(stream_id: int, checkpoint: Checkpoint, prev: int | None) -> Any:
    values = checkpoint.trial_values
    return {
        "stream_id": stream_id,
        "trial_id": checkpoint.trial_id,
        "logical_number": checkpoint.logical_number,
        "trial_state": checkpoint.trial_state,
        # float.hex: the values are restored bit for bit when a trial is rolled forward.
        "trial_values": None if values is None else [float(v).hex() for v in values],
        "adapter": checkpoint.adapter,
        "checksum": checkpoint.checksum,
        "versions": checkpoint.versions,
        "prev": prev,
    }


def _checkpoint_from_json(data: Any, payload: bytes) -> Checkpoint:
    trial_id, state, values = data["trial_id"], data["trial_state"], data["trial_values"]
    return Checkpoint(
        trial_id=None if trial_id is None else int(trial_id),
        logical_number=int(data["logical_number"]),
        trial_state=None if state is None else str(state),
        trial_values=None if values is None else [float.fromhex(v) for v in values],
        adapter=str(data["adapter"]),
        payload=payload,
        checksum=str(data["checksum"]),
        versions=data.get("versions"),  # absent in records of releases before 0.4
    )


def _damaged(what: str, error: Exception) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{what} of the checkpoint side record cannot be read ({type(error).__name__}: {error}); "
        "restore the side record from a backup, or start a new stream."
    )


# -- the replica ----------------------------------------------------------------------------


class _Replica:
    """This process's copy of the catalog, kept current by the records the log hands it."""

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.catalog = _Catalog()
        self.base = 0  # position of the record holding the newest catalog
        self._records_since_base = 0
        self._bytes_since_base = 0

    def apply(self, records: Sequence[Record], reset: bool) -> None:
        """Apply records in log order (a :data:`RecordSink`)."""
        if reset:
            self._clear()
        for record in records:
            try:
                self._apply(record)
            except (KeyError, TypeError, ValueError) as e:
                raise _damaged(f"the record at position {record.pos}", e) from e

    def _apply(self, record: Record) -> None:
        if record.is_base:
            # Written with this record's checkpoint, if any, already counted in.
            self.catalog = _Catalog.from_json(record.header[CATALOG_KEY])
            self.base = record.pos
            self._records_since_base = self._bytes_since_base = 0
            return
        self._records_since_base += 1
        self._bytes_since_base += record.size
        checkpoint = record.header.get(_CHECKPOINT_KEY)
        if checkpoint is not None:
            entry = self.catalog.entries.get(int(checkpoint["stream_id"]))
            if entry is not None:
                self.catalog = self.catalog.with_entry(replace(entry, head=record.pos))

    def catalog_due(self) -> bool:
        """Whether the next record should carry the catalog, to keep the tail short."""
        return (
            self._records_since_base + 1 >= _CATALOG_EVERY_RECORDS
            or self._bytes_since_base >= _CATALOG_EVERY_BYTES
        )


# -- the store ------------------------------------------------------------------------------


class JournalCheckpointStore(CheckpointStore):
    """Checkpoints of the studies of one :class:`~optuna.storages.JournalStorage`.

    Use :meth:`for_storage` to get the store of a storage. Checkpoints are saved in their own
    transaction (no commit hook): ``save`` returns once the checkpoint is durable.
    """

    supports_commit_hook = False
    _registry: ClassVar[StoreRegistry[JournalCheckpointStore]] = StoreRegistry()

    def __init__(self, open_log: Callable[[RecordSink], RecordLog]) -> None:
        """Create a store on the log ``open_log`` opens, feeding a fresh replica."""
        self._replica = _Replica()
        self._log = open_log(self._replica.apply)
        # One step at a time per process; the log excludes other processes.
        self._lock = threading.Lock()

    @classmethod
    def for_storage(cls, storage: JournalStorage) -> JournalCheckpointStore:
        """Return the store beside ``storage``'s journal.

        Raises:
            CheckpointError: The journal backend is not supported, or this Optuna version keeps
                it where optuna-checkpoint cannot find it.
        """
        return cls._registry.get(storage, lambda: cls(_log_opener(storage)))

    def __repr__(self) -> str:
        return f"JournalCheckpointStore({self._log!r})"

    # -- reading -----------------------------------------------------------------------------

    def _read(self) -> _Catalog:
        self._log.refresh()
        return self._replica.catalog

    def _with_heartbeats(self, entries: Sequence[_Entry]) -> list[Stream]:
        """The streams, with the newest heartbeat of each one's current owner."""
        beats = self._log.read_heartbeats([e.stream.stream_id for e in entries])
        streams = []
        for entry in entries:
            stream = entry.stream
            beat = beats.get(stream.stream_id)
            if (
                beat is not None
                and stream.owner is not None
                and beat[0] == _token_tag(stream.owner.token)
                and beat[1] > stream.heartbeat_at
            ):
                stream = replace(stream, heartbeat_at=beat[1])
            streams.append(stream)
        return streams

    def find_stream(self, study_uid: str, name: str) -> Stream | None:
        """Return the stream, or ``None``."""
        with self._lock:
            entry = self._read().find(study_uid, name)
            return None if entry is None else self._with_heartbeats([entry])[0]

    def list_streams(self, study_uid: str) -> list[Stream]:
        """Return the study's streams in creation order."""
        with self._lock:
            entries = [e for e in self._read().entries.values() if e.stream.study_uid == study_uid]
            return self._with_heartbeats(entries)

    def latest_checkpoints(
        self, stream_id: int, *, excluding: Collection[int], limit: int
    ) -> list[Checkpoint]:
        """Follow the stream's chain of checkpoints back from the newest.

        Reads the newest ``limit`` checkpoints plus those of hidden or re-saved trials among
        them: the number of checkpoints the stream has does not matter.
        """
        found: list[Checkpoint] = []
        if limit <= 0:
            return found
        with self._lock:
            for checkpoint in self._chain(stream_id):
                if checkpoint.trial_id is None or checkpoint.trial_id not in excluding:
                    found.append(checkpoint)
                    if len(found) >= limit:
                        break
        return found

    def _chain(self, stream_id: int) -> Iterator[Checkpoint]:
        """The stream's checkpoints, newest first, each trial once; the caller holds the lock."""
        entry = self._read().entries.get(stream_id)
        pos = None if entry is None else entry.head
        seen: set[int | None] = set()  # a re-saved trial's older records are superseded
        while pos is not None:
            record = self._log.read(pos)
            try:
                data = record.header[_CHECKPOINT_KEY]
                if int(data["stream_id"]) != stream_id:
                    raise ValueError(f"it belongs to stream {data['stream_id']}")
                checkpoint = _checkpoint_from_json(data, record.payload)
                prev = data["prev"]
                if prev is not None and not 0 <= int(prev) < pos:
                    raise ValueError(f"it points forward, to {prev}")
            except (KeyError, TypeError, ValueError) as e:
                raise _damaged(f"the checkpoint record at position {pos}", e) from e
            if checkpoint.trial_id not in seen:
                seen.add(checkpoint.trial_id)
                yield checkpoint
            pos = None if prev is None else int(prev)

    def stream_summary(self, stream_id: int) -> StreamSummary:
        """Walk the stream's whole chain, keeping only counts.

        The log has no index to count from, so this reads every record of the stream; that is
        for tools, never for a trial.
        """
        count = size = 0
        newest: Checkpoint | None = None
        with self._lock:
            for checkpoint in self._chain(stream_id):
                newest = newest or checkpoint
                count += 1
                size += len(checkpoint.payload)
        return StreamSummary(
            checkpoints=count,
            payload_bytes=size,
            newest_trial_id=None if newest is None else newest.trial_id,
            newest_logical_number=None if newest is None else newest.logical_number,
        )

    deletion_unsupported = (
        "pruning checkpoints is not supported for JournalStorage: its checkpoints live in an "
        "append-only side record beside the journal, where each checkpoint points to the "
        "stream's previous one, so a checkpoint cannot be taken out without rewriting the "
        "record under every worker's feet, and the file would not shrink anyway. Keep such "
        "studies' checkpoints, or run studies whose checkpoints you want to prune on an RDB "
        "storage (SQLite, PostgreSQL, MySQL)."
    )

    def delete_checkpoints(self, stream_id: int, trial_ids: Collection[int]) -> int:
        """Refuse: the side record is append-only (see :attr:`deletion_unsupported`)."""
        raise CheckpointError(self.deletion_unsupported)

    def where_interrupted(self, study_uid: str) -> list[Interruption]:
        """Return the study's interrupted trials in trial-number order."""
        with self._lock:
            found = [
                r.interruption for r in self._read().interruptions if r.study_uid == study_uid
            ]
        return sorted(found, key=lambda i: i.trial_number)

    def claims(self, study_uid: str, trial_ids: Collection[int]) -> dict[int, int]:
        """Return the claiming stream of each claimed trial of the study."""
        with self._lock:
            # Slots first: every stream they name is then in the catalog read next.
            raw = self._log.read_claims(trial_ids)
            entries = self._read().entries
            return {
                trial_id: stream_id
                for trial_id, stream_id in raw.items()
                if stream_id in entries and entries[stream_id].stream.study_uid == study_uid
            }

    def interruption_count_hint(self, study_uid: str) -> int | None:
        """The study's number of interruptions as of this process's last step, at no I/O.

        Every step (each save included) catches up with the log, so this is never older than
        the latest checkpoint saved here.
        """
        return sum(r.study_uid == study_uid for r in self._replica.catalog.interruptions)

    # -- writing -----------------------------------------------------------------------------

    def _append_catalog(
        self,
        txn: Transaction,
        catalog: _Catalog,
        checkpoint: tuple[int, Checkpoint, int | None] | None = None,
    ) -> None:
        """Append a record carrying ``catalog`` (and a checkpoint): a new base record."""
        header: dict[str, Any] = {BASE_KEY: txn.end, CATALOG_KEY: catalog.to_json()}
        payload = b""
        if checkpoint is not None:
            header[_CHECKPOINT_KEY] = _checkpoint_to_json(*checkpoint)
            payload = checkpoint[1].payload
        txn.append(header, payload)

    def _stream_after(self, stream_id: int | None) -> Stream | None:
        if stream_id is None:
            return None
        entry = self._replica.catalog.entries[stream_id]
        return self._with_heartbeats([entry])[0]

    def create_stream(
        self,
        study_id: int,
        study_uid: str,
        name: str,
        fingerprint: Any,
        owner: Owner,
        initial: Checkpoint,
        *,
        first_trial_number: int,
    ) -> Stream | None:
        """Create the stream with its initial checkpoint, unless it exists."""

        def decide(txn: Transaction) -> int | None:
            catalog = self._replica.catalog
            if catalog.find(study_uid, name) is not None:
                return None
            stream_id = catalog.next_stream_id
            stream = Stream(
                stream_id, study_uid, name, fingerprint, owner, time.time(), first_trial_number
            )
            catalog = catalog.forget_reused_study_id(study_id, study_uid)
            catalog = catalog.with_entry(_Entry(stream, study_id, head=txn.end))
            self._append_catalog(txn, catalog, (stream_id, initial, None))
            return stream_id

        with self._lock:
            return self._stream_after(self._log.transact(decide))

    def reset_stream(
        self,
        stream: Stream,
        fingerprint: Any,
        owner: Owner,
        initial: Checkpoint,
        *,
        first_trial_number: int,
    ) -> Stream | None:
        """Restart the stream from ``initial`` if its owner is still ``stream.owner``."""

        def decide(txn: Transaction) -> int | None:
            entry = self._replica.catalog.entries.get(stream.stream_id)
            if entry is None or _token(entry.stream.owner) != _token(stream.owner):
                return None
            restarted = replace(
                entry.stream,
                fingerprint=fingerprint,
                owner=owner,
                heartbeat_at=time.time(),
                first_trial_number=first_trial_number,
            )
            # The new chain starts here: the old checkpoints are no longer reachable.
            catalog = self._replica.catalog.with_entry(
                replace(entry, stream=restarted, head=txn.end)
            )
            self._append_catalog(txn, catalog, (stream.stream_id, initial, None))
            return stream.stream_id

        with self._lock:
            return self._stream_after(self._log.transact(decide))

    def take_over(self, stream: Stream, owner: Owner, now: float) -> bool:
        """Compare-and-swap the owner."""

        def decide(txn: Transaction) -> bool:
            entry = self._replica.catalog.entries.get(stream.stream_id)
            if entry is None or _token(entry.stream.owner) != _token(stream.owner):
                return False
            taken = replace(entry.stream, owner=owner, heartbeat_at=now)
            self._append_catalog(
                txn, self._replica.catalog.with_entry(replace(entry, stream=taken))
            )
            return True

        with self._lock:
            return self._log.transact(decide)

    def heartbeat(self, stream_id: int, token: str, now: float) -> bool:
        """Refresh the lease in its slot: the log does not grow."""

        def decide(txn: Transaction) -> bool:
            entry = self._replica.catalog.entries.get(stream_id)
            if entry is None or not _holds(entry.stream.owner, token):
                return False
            txn.set_heartbeat(stream_id, _token_tag(token), now)
            return True

        with self._lock:
            return self._log.transact(decide)

    def release(self, stream_id: int, token: str) -> None:
        """Give the lease up, waiting at most briefly for the lock (the lease lapses if not)."""

        def decide(txn: Transaction) -> None:
            entry = self._replica.catalog.entries.get(stream_id)
            if entry is None or not _holds(entry.stream.owner, token):
                return
            released = replace(entry.stream, owner=None)
            catalog = self._replica.catalog.with_entry(replace(entry, stream=released))
            self._append_catalog(txn, catalog)

        # Bounded waits: this runs from finalizers, possibly in a thread that holds the lock.
        if not self._lock.acquire(timeout=_RELEASE_TIMEOUT):
            _logger.debug("Could not release the checkpoint lease: the store is busy.")
            return
        try:
            self._log.transact(decide, timeout=_RELEASE_TIMEOUT)
        except LogBusyError:
            _logger.debug("Could not release the checkpoint lease: the log is locked.")
        finally:
            self._lock.release()

    def save(self, stream: Stream, checkpoint: Checkpoint, token: str, now: float) -> None:
        """Append the checkpoint if ``token`` owns the stream; durable when this returns."""

        def decide(txn: Transaction) -> None:
            entry = self._replica.catalog.entries.get(stream.stream_id)
            if entry is None or not _holds(entry.stream.owner, token):
                raise StreamOwnedError(
                    "this process no longer owns the checkpoint stream; run one process per "
                    "stream."
                )
            link = (stream.stream_id, checkpoint, entry.head)
            if self._replica.catalog_due():
                catalog = self._replica.catalog.with_entry(replace(entry, head=txn.end))
                self._append_catalog(txn, catalog, link)
            else:
                header = {
                    BASE_KEY: self._replica.base,
                    _CHECKPOINT_KEY: _checkpoint_to_json(*link),
                }
                txn.append(header, checkpoint.payload)
            txn.set_heartbeat(stream.stream_id, _token_tag(token), now)

        with self._lock:
            self._log.transact(decide)

    def add_interruptions(
        self, study_id: int, study_uid: str, interruptions: Sequence[Interruption]
    ) -> None:
        """Record interrupted trials; known ones are skipped."""

        def decide(txn: Transaction) -> None:
            catalog = self._replica.catalog
            known = {
                r.interruption.trial_id for r in catalog.interruptions if r.study_uid == study_uid
            }
            fresh = []
            for interruption in interruptions:
                if interruption.trial_id not in known:
                    known.add(interruption.trial_id)
                    fresh.append(_Recorded(interruption, study_uid, study_id))
            if fresh:
                catalog = replace(catalog, interruptions=(*catalog.interruptions, *fresh))
                self._append_catalog(txn, catalog)

        if not interruptions:
            return
        with self._lock:
            self._log.transact(decide)

    def claim_trial(self, stream: Stream, study_id: int, trial_id: int) -> bool:
        """Claim the trial for ``stream`` unless a stream of the study claimed it first."""

        def decide(txn: Transaction) -> bool:
            current = txn.claim_of(trial_id)
            entries = self._replica.catalog.entries
            if (
                current is not None
                and current in entries
                and entries[current].stream.study_uid == stream.study_uid
            ):
                return current == stream.stream_id
            # Empty, or left by a stream that no longer exists: the trial is free.
            txn.set_claim(trial_id, stream.stream_id)
            return True

        with self._lock:
            return self._log.transact(decide)


# -- finding the journal --------------------------------------------------------------------


def resolve_journal_storage(storage: BaseStorage) -> JournalStorage | None:
    """Return the :class:`JournalStorage` behind ``storage``, if any."""
    if isinstance(storage, JournalStorage):
        return storage
    # A wrapper such as ``optuna.storages._CachedStorage`` keeps what it wraps in ``_backend``.
    inner = getattr(storage, "_backend", None)
    return inner if isinstance(inner, JournalStorage) else None


def _optuna_private(obj: object, owner: str, name: str, kind: type | tuple[type, ...]) -> Any:
    """Read a private Optuna attribute, failing clearly if this Optuna version lacks it."""
    value = getattr(obj, name, _MISSING)
    if not isinstance(value, kind):  # the sentinel is an instance of none of the kinds
        raise CheckpointError(
            f"optuna-checkpoint reads Optuna's private attribute {owner}.{name} to find where "
            f"the journal is kept, and Optuna {optuna.__version__} has no such attribute of the "
            "expected type: this Optuna version is not supported with JournalStorage. Install "
            "the Optuna version optuna-checkpoint requires, or use an RDB storage."
        )
    return value


def _log_opener(storage: JournalStorage) -> Callable[[RecordSink], RecordLog]:
    """How to open the side record of ``storage``'s journal backend."""
    backend = _optuna_private(storage, "JournalStorage", "_backend", BaseJournalBackend)
    # The deprecated JournalFileStorage and JournalRedisStorage are subclasses of these two.
    if isinstance(backend, JournalFileBackend):
        path = os.fspath(
            _optuna_private(backend, "JournalFileBackend", "_file_path", (str, os.PathLike))
        )
        return lambda sink: FileRecordLog(path + SIDE_FILE_SUFFIX, sink)
    if isinstance(backend, JournalRedisBackend):
        url = _optuna_private(backend, "JournalRedisBackend", "_url", str)
        prefix = _optuna_private(backend, "JournalRedisBackend", "_prefix", str)
        return lambda sink: RedisRecordLog(url, prefix, sink)
    raise CheckpointError(
        f"journal backend {type(backend).__name__} is not supported by optuna-checkpoint; use "
        "JournalFileBackend or JournalRedisBackend, or an RDB storage."
    )
