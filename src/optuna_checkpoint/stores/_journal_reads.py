"""The reading half of the journal store: streams, chains of checkpoints, claims.

Every read first catches up with the side record, so that this process's replica of the catalog
(see :mod:`._journal_catalog`) is current; checkpoints are then read by following a stream's
chain back from its newest record, and leases and claims from their slots.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import replace
import hashlib
import threading

from optuna_checkpoint.stores._base import ANY_UNSEALED_ROWS
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import CheckpointStore
from optuna_checkpoint.stores._base import Claim
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._base import Stream
from optuna_checkpoint.stores._base import StreamSummary
from optuna_checkpoint.stores._journal_catalog import CHECKPOINT_KEY
from optuna_checkpoint.stores._journal_catalog import Catalog
from optuna_checkpoint.stores._journal_catalog import Entry
from optuna_checkpoint.stores._journal_catalog import Replica
from optuna_checkpoint.stores._journal_catalog import checkpoint_from_json
from optuna_checkpoint.stores._journal_catalog import damaged
from optuna_checkpoint.stores._record_log import RecordLog
from optuna_checkpoint.stores._record_log import RecordSink


def token_tag(token: str) -> bytes:
    """What a heartbeat slot keeps of the owner's token: enough to tell owners apart."""
    return hashlib.sha256(token.encode()).digest()[:8]


class JournalReads(CheckpointStore):
    """The reads of :class:`~._journal.JournalCheckpointStore`, which adds the writes.

    Holds the side record's log, the replica it feeds, and the lock that lets one step at a
    time of this process use them.
    """

    def __init__(self, open_log: Callable[[RecordSink], RecordLog]) -> None:
        """Create a store on the log ``open_log`` opens, feeding a fresh replica."""
        self._replica = Replica()
        self._log = open_log(self._replica.apply)
        # One step at a time per process; the log excludes other processes.
        self._lock = threading.Lock()

    def _read(self) -> Catalog:
        self._log.refresh()
        return self._replica.catalog

    def _with_heartbeats(self, entries: Sequence[Entry]) -> list[Stream]:
        """The streams, with the newest heartbeat of each one's current owner."""
        beats = self._log.read_heartbeats([e.stream.stream_id for e in entries])
        streams = []
        for entry in entries:
            stream = entry.stream
            beat = beats.get(stream.stream_id)
            if (
                beat is not None
                and stream.owner is not None
                and beat[0] == token_tag(stream.owner.token)
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
                data = record.header[CHECKPOINT_KEY]
                if int(data["stream_id"]) != stream_id:
                    raise ValueError(f"it belongs to stream {data['stream_id']}")
                checkpoint = checkpoint_from_json(data, record.payload)
                prev = data["prev"]
                if prev is not None and not 0 <= int(prev) < pos:
                    raise ValueError(f"it points forward, to {prev}")
            except (KeyError, TypeError, ValueError) as e:
                raise damaged(f"the checkpoint record at position {pos}", e) from e
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

    def where_interrupted(self, study_uid: str) -> list[Interruption]:
        """Return the study's interrupted trials in trial-number order."""
        with self._lock:
            found = [
                r.interruption for r in self._read().interruptions if r.study_uid == study_uid
            ]
        return sorted(found, key=lambda i: i.trial_number)

    def claims(self, study_uid: str, trial_ids: Collection[int]) -> dict[int, Claim]:
        """Return the claim of each claimed trial of the study."""
        with self._lock:
            # Slots first: every stream they name is then in the catalog read next.
            raw = self._log.read_claims(trial_ids)
            entries = self._read().entries
            return {
                trial_id: claim
                for trial_id, claim in raw.items()
                if claim.stream_id in entries
                and entries[claim.stream_id].stream.study_uid == study_uid
            }

    def unsealed_rows_until(self, study_uid: str) -> int:
        """As the newest catalog records it (any row, if an earlier release wrote it)."""
        with self._lock:
            bound = self._read().unsealed_rows_until
        return ANY_UNSEALED_ROWS if bound is None else bound

    def interruption_count_hint(self, study_uid: str) -> int | None:
        """The study's number of interruptions as of this process's last step, at no I/O.

        Every step (each save included) catches up with the log, so this is never older than
        the latest checkpoint saved here.
        """
        return sum(r.study_uid == study_uid for r in self._replica.catalog.interruptions)
