"""What the journal store's side record means: the catalog, its records, and their replay.

Two kinds of content go into records. The *catalog*, small, is the whole of the metadata
(streams with their leases, interruptions) and is rewritten in full whenever it changes, and
every few dozen checkpoints. A *checkpoint* record holds one checkpoint and points to the
stream's previous one. Both are JSON in a record's header (see :mod:`._record_format`); a
checkpoint's payload is the record's payload. A :class:`Replica` replays the records a log
hands it into this process's copy of the catalog.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from typing import Any

from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.stores._base import NO_UNSEALED_ROWS
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._base import Owner
from optuna_checkpoint.stores._base import Stream
from optuna_checkpoint.stores._record_log import CATALOG_KEY
from optuna_checkpoint.stores._record_log import Record


CHECKPOINT_KEY = "checkpoint"
"""The key of a record's header holding the checkpoint it carries."""
# A checkpoint record also carries the catalog once this many records or bytes were written
# since the last one: that bounds what a fresh process reads to find every stream's newest.
_CATALOG_EVERY_RECORDS = 32
_CATALOG_EVERY_BYTES = 256 << 10


@dataclass(frozen=True)
class Entry:
    """A stream as the catalog knows it.

    ``stream.heartbeat_at`` is the time of its last change of owner; later heartbeats are in
    the heartbeat slot. ``head`` is the position of its newest checkpoint record.
    """

    stream: Stream
    study_id: int
    head: int | None


@dataclass(frozen=True)
class Recorded:
    """An interruption with the study it belongs to."""

    interruption: Interruption
    study_uid: str
    study_id: int


@dataclass(frozen=True)
class Catalog:
    """All the metadata: streams in creation order, and interruptions. Never mutated.

    ``unsealed_rows_until`` is the newest trial id whose interruption or claim may lack a seal
    (:meth:`CheckpointStore.unsealed_rows_until`); ``None`` in a catalog an earlier release
    wrote, which did not seal rows: the next catalog written records it.
    """

    next_stream_id: int = 1
    entries: Mapping[int, Entry] = field(default_factory=dict)
    interruptions: tuple[Recorded, ...] = ()
    unsealed_rows_until: int | None = NO_UNSEALED_ROWS

    def find(self, study_uid: str, name: str) -> Entry | None:
        """Return the study's stream called ``name``, or ``None``."""
        return next(
            (
                e
                for e in self.entries.values()
                if e.stream.study_uid == study_uid and e.stream.name == name
            ),
            None,
        )

    def with_entry(self, entry: Entry) -> Catalog:
        """Return the catalog with ``entry`` added, or replacing its stream's entry."""
        entries = dict(self.entries)
        entries[entry.stream.stream_id] = entry
        next_id = max(self.next_stream_id, entry.stream.stream_id + 1)
        return replace(self, entries=entries, next_stream_id=next_id)

    def forget_reused_study_id(self, study_id: int, study_uid: str) -> Catalog:
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
        """The catalog as a base record's header carries it."""
        if self.unsealed_rows_until is None:
            raise ValueError("the bound of unsealed rows is recorded before a catalog is written")
        return {
            "next_stream_id": self.next_stream_id,
            "streams": [_entry_to_json(e) for e in self.entries.values()],
            "interruptions": [_recorded_to_json(r) for r in self.interruptions],
            "unsealed_rows_until": self.unsealed_rows_until,
        }

    @classmethod
    def from_json(cls, data: Any) -> Catalog:
        """Read the catalog from :meth:`to_json`'s form."""
        entries = [_entry_from_json(e) for e in data["streams"]]
        bound = data.get("unsealed_rows_until")  # absent from earlier releases' catalogs
        return cls(
            next_stream_id=int(data["next_stream_id"]),
            entries={e.stream.stream_id: e for e in entries},
            interruptions=tuple(_recorded_from_json(r) for r in data["interruptions"]),
            unsealed_rows_until=None if bound is None else int(bound),
        )

    def with_unsealed_bound(self, unsealed_claims_until: int) -> Catalog:
        """The catalog with its bound of unsealed rows recorded, if an earlier release wrote it.

        Args:
            unsealed_claims_until: The newest trial id of a claim an earlier release wrote.
        """
        if self.unsealed_rows_until is not None:
            return self
        unsealed = [r.interruption.trial_id for r in self.interruptions if not r.interruption.seal]
        bound = max([*unsealed, unsealed_claims_until], default=NO_UNSEALED_ROWS)
        return replace(self, unsealed_rows_until=bound)


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


def _entry_to_json(entry: Entry) -> dict[str, Any]:
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


def _entry_from_json(data: Any) -> Entry:
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
    return Entry(stream, int(data["study_id"]), None if head is None else int(head))


def _recorded_to_json(recorded: Recorded) -> dict[str, Any]:
    i = recorded.interruption
    return {
        "study_uid": recorded.study_uid,
        "study_id": recorded.study_id,
        "trial_id": i.trial_id,
        "trial_number": i.trial_number,
        "logical_number": i.logical_number,
        "reason": i.reason,
        "stream_id": i.stream_id,
        "seal": i.seal,
    }


def _recorded_from_json(data: Any) -> Recorded:
    stream_id = data["stream_id"]
    interruption = Interruption(
        trial_id=int(data["trial_id"]),
        trial_number=int(data["trial_number"]),
        logical_number=int(data["logical_number"]),
        reason=str(data["reason"]),
        stream_id=None if stream_id is None else int(stream_id),
        seal=data.get("seal"),  # absent in records of releases before sealed rows
    )
    return Recorded(interruption, str(data["study_uid"]), int(data["study_id"]))


def checkpoint_to_json(stream_id: int, checkpoint: Checkpoint, prev: int | None) -> Any:
    """A checkpoint record's header entry; ``prev`` is the stream's previous one's position."""
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


def checkpoint_from_json(data: Any, payload: bytes) -> Checkpoint:
    """Read a checkpoint from :func:`checkpoint_to_json`'s form and the record's payload."""
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


def damaged(what: str, error: Exception) -> CorruptCheckpointError:
    """The error for a record, named by ``what``, whose content cannot be read."""
    return CorruptCheckpointError(
        f"{what} of the checkpoint side record cannot be read ({type(error).__name__}: {error}); "
        "restore the side record from a backup, or start a new stream."
    )


class Replica:
    """This process's copy of the catalog, kept current by the records the log hands it."""

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.catalog = Catalog()
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
                raise damaged(f"the record at position {record.pos}", e) from e

    def _apply(self, record: Record) -> None:
        if record.is_base:
            # Written with this record's checkpoint, if any, already counted in.
            self.catalog = Catalog.from_json(record.header[CATALOG_KEY])
            self.base = record.pos
            self._records_since_base = self._bytes_since_base = 0
            return
        self._records_since_base += 1
        self._bytes_since_base += record.size
        checkpoint = record.header.get(CHECKPOINT_KEY)
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
