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

Two kinds of content go into records (see :mod:`._journal_catalog`). The *catalog*, small, is
the whole of the metadata (streams with their leases, interruptions) and is rewritten in full
whenever it changes, and every few dozen checkpoints. A *checkpoint* record holds one checkpoint
and points to the stream's previous one. The newest catalog plus the records after it give every
stream's newest checkpoint, so opening the store reads a bounded tail of the log however long
the study, and :meth:`JournalCheckpointStore.latest_checkpoints` follows the chain from there
(the reads are in :mod:`._journal_reads`; this module has the writes). Claims and heartbeats
live in slots, so neither makes the log grow.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Sequence
from dataclasses import replace
import os
import time
from typing import Any
from typing import ClassVar

import optuna
from optuna.storages import BaseStorage
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal import JournalRedisBackend

from optuna_checkpoint._logging import get_logger
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import StreamOwnedError
from optuna_checkpoint.stores._base import REASON_CHARS
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import Claim
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._base import Owner
from optuna_checkpoint.stores._base import PlantedStream
from optuna_checkpoint.stores._base import Resealed
from optuna_checkpoint.stores._base import RowsFor
from optuna_checkpoint.stores._base import StoreRegistry
from optuna_checkpoint.stores._base import Stream
from optuna_checkpoint.stores._base import TrialStateRecord
from optuna_checkpoint.stores._base import TrialStateSummary
from optuna_checkpoint.stores._base import require_seals
from optuna_checkpoint.stores._journal_catalog import CHECKPOINT_KEY
from optuna_checkpoint.stores._journal_catalog import Catalog
from optuna_checkpoint.stores._journal_catalog import Entry
from optuna_checkpoint.stores._journal_catalog import Recorded
from optuna_checkpoint.stores._journal_catalog import checkpoint_to_json
from optuna_checkpoint.stores._journal_reads import JournalReads
from optuna_checkpoint.stores._journal_reads import token_tag
from optuna_checkpoint.stores._plant import plant_step_by_step
from optuna_checkpoint.stores._record_log import BASE_KEY
from optuna_checkpoint.stores._record_log import CATALOG_KEY
from optuna_checkpoint.stores._record_log import FileRecordLog
from optuna_checkpoint.stores._record_log import LogBusyError
from optuna_checkpoint.stores._record_log import RecordLog
from optuna_checkpoint.stores._record_log import RecordSink
from optuna_checkpoint.stores._record_log import RedisRecordLog
from optuna_checkpoint.stores._record_log import Transaction


_logger = get_logger(__name__)

SIDE_FILE_SUFFIX = ".optuna-checkpoint"
_RELEASE_TIMEOUT = 0.2
_MISSING = object()


def _token(owner: Owner | None) -> str | None:
    return None if owner is None else owner.token


def _holds(owner: Owner | None, token: str) -> bool:
    return owner is not None and owner.token == token


class JournalCheckpointStore(JournalReads):
    """Checkpoints of the studies of one :class:`~optuna.storages.JournalStorage`.

    Use :meth:`for_storage` to get the store of a storage. Checkpoints are saved in their own
    transaction (no commit hook): ``save`` returns once the checkpoint is durable.
    """

    supports_commit_hook = False
    _registry: ClassVar[StoreRegistry[JournalCheckpointStore]] = StoreRegistry()

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

    deletion_unsupported = (
        "pruning checkpoints is not supported for JournalStorage: its checkpoints live in an "
        "append-only side record beside the journal, where each checkpoint points to the "
        "stream's previous one, so a checkpoint cannot be taken out without rewriting the "
        "record under every worker's feet, and the file would not shrink anyway. Keep such "
        "studies' checkpoints, or run studies whose checkpoints you want to prune on an RDB "
        "storage (SQLite, PostgreSQL, MySQL)."
    )

    trial_states_unsupported = (
        "trial_checkpoint is not supported on JournalStorage yet: a trial's state is replaced "
        "at every save, and the journal's side record is append-only, so it would grow by "
        "every state ever saved. Run studies that use trial_checkpoint on an RDB storage "
        "(a SQLite file such as sqlite:///study.db, PostgreSQL or MySQL)."
    )

    resealing_unsupported = (
        "re-keying is not supported for JournalStorage: its checkpoints live in an append-only "
        "side record, where each points to the stream's previous one, so they cannot be given "
        "new seals in place, nor all at once. Export the study under the old key and import it "
        "into a copy on an RDB storage (SQLite, PostgreSQL, MySQL), then re-key the copy."
    )

    def reseal(self, study_uid: str, resealed: Resealed) -> None:
        """Refuse: the side record is append-only (see :attr:`resealing_unsupported`)."""
        raise CheckpointError(self.resealing_unsupported)

    def where_trial_states(self, study_uid: str) -> list[TrialStateRecord]:
        """None: a journal keeps no trial states."""
        return []

    def save_trial_state(
        self, stream: Stream, token: str, study_id: int, record: TrialStateRecord
    ) -> None:
        """Not supported here (:attr:`trial_states_unsupported`)."""
        raise CheckpointError(self.trial_states_unsupported)

    def find_trial_state(self, study_uid: str, logical_trial: int) -> TrialStateRecord | None:
        """Not supported here (:attr:`trial_states_unsupported`)."""
        raise CheckpointError(self.trial_states_unsupported)

    def delete_trial_state(self, study_uid: str, logical_trial: int) -> bool:
        """Not supported here (:attr:`trial_states_unsupported`)."""
        raise CheckpointError(self.trial_states_unsupported)

    def list_trial_states(self, study_uid: str) -> list[TrialStateSummary]:
        """None: a journal keeps no trial states."""
        return []

    def delete_checkpoints(self, stream_id: int, trial_ids: Collection[int]) -> int:
        """Refuse: the side record is append-only (see :attr:`deletion_unsupported`)."""
        raise CheckpointError(self.deletion_unsupported)

    def _append_catalog(
        self,
        txn: Transaction,
        catalog: Catalog,
        checkpoint: tuple[int, Checkpoint, int | None] | None = None,
    ) -> None:
        """Append a record carrying ``catalog`` (and a checkpoint): a new base record.

        The first catalog this release writes in a log of an earlier release records which
        rows that release left unsealed.
        """
        if catalog.unsealed_rows_until is None:
            catalog = catalog.with_unsealed_bound(self._log.unsealed_claims_until())
        header: dict[str, Any] = {BASE_KEY: txn.end, CATALOG_KEY: catalog.to_json()}
        payload = b""
        if checkpoint is not None:
            header[CHECKPOINT_KEY] = checkpoint_to_json(*checkpoint)
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
            catalog = catalog.with_entry(Entry(stream, study_id, head=txn.end))
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
            txn.set_heartbeat(stream_id, token_tag(token), now)
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
                    CHECKPOINT_KEY: checkpoint_to_json(*link),
                }
                txn.append(header, checkpoint.payload)
            txn.set_heartbeat(stream.stream_id, token_tag(token), now)

        with self._lock:
            self._log.transact(decide)

    def add_interruptions(
        self, study_id: int, study_uid: str, interruptions: Sequence[Interruption]
    ) -> None:
        """Record interrupted trials; known ones are skipped."""
        require_seals(interruptions)
        interruptions = [replace(i, reason=i.reason[:REASON_CHARS]) for i in interruptions]

        def decide(txn: Transaction) -> None:
            catalog = self._replica.catalog
            known = {
                r.interruption.trial_id for r in catalog.interruptions if r.study_uid == study_uid
            }
            fresh = []
            for interruption in interruptions:
                if interruption.trial_id not in known:
                    known.add(interruption.trial_id)
                    fresh.append(Recorded(interruption, study_uid, study_id))
            if fresh:
                catalog = replace(catalog, interruptions=(*catalog.interruptions, *fresh))
                self._append_catalog(txn, catalog)

        if not interruptions:
            return
        with self._lock:
            self._log.transact(decide)

    def claim_trial(self, stream: Stream, study_id: int, trial_id: int, seal: str) -> bool:
        """Claim the trial for ``stream`` unless a stream of the study claimed it first."""

        def decide(txn: Transaction) -> bool:
            current = txn.claim_of(trial_id)
            entries = self._replica.catalog.entries
            if (
                current is not None
                and current.stream_id in entries
                and entries[current.stream_id].stream.study_uid == stream.study_uid
            ):
                return current.stream_id == stream.stream_id
            # Empty, or left by a stream that no longer exists: the trial is free.
            txn.set_claim(trial_id, Claim(stream.stream_id, seal))
            return True

        with self._lock:
            return self._log.transact(decide)

    def plant_streams(
        self,
        study_id: int,
        study_uid: str,
        planted: Sequence[PlantedStream],
        rows_for: RowsFor,
        owner: Owner,
    ) -> None:
        """Plant the streams and their rows step by step, resumably (see :mod:`._plant`)."""
        plant_step_by_step(self, study_id, study_uid, planted, rows_for, owner)


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
