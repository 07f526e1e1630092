"""The SQL side-table store: checkpoints live in the study's own database, beside Optuna's tables.

The tables (:mod:`._sql_schema`) have their own ``MetaData`` and are created and upgraded on
first use, so Optuna's schema, its alembic revision and ``optuna storage upgrade`` never see
them; rows map to streams and checkpoints as :mod:`._sql_rows` says. Reads
(:mod:`._sql_queries`) and separate writes (here and in :mod:`._sql_writes`) use Optuna's engine.
The per-trial checkpoint is not a separate write: the commit hook (:mod:`._sql_commit`) adds it
to the transaction in which Optuna stores the trial's final state, so the two are committed
together or not at all and the checkpoint costs one extra statement instead of one extra
transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Sequence
import time
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar

from optuna.storages import RDBStorage
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from optuna_checkpoint.exceptions import StreamOwnedError
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import CheckpointStore
from optuna_checkpoint.stores._base import Claim
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._base import Owner
from optuna_checkpoint.stores._base import PlantedStream
from optuna_checkpoint.stores._base import Resealed
from optuna_checkpoint.stores._base import RowsFor
from optuna_checkpoint.stores._base import StoreRegistry
from optuna_checkpoint.stores._base import Stream
from optuna_checkpoint.stores._base import StreamSummary
from optuna_checkpoint.stores._base import TrialStateRecord
from optuna_checkpoint.stores._base import TrialStateSummary
from optuna_checkpoint.stores._sql_commit import INSERT_CLAIM
from optuna_checkpoint.stores._sql_commit import CreationClaimer
from optuna_checkpoint.stores._sql_commit import DeferredSave
from optuna_checkpoint.stores._sql_commit import TrialCommitHook
from optuna_checkpoint.stores._sql_cursors import close_cursors_left_open
from optuna_checkpoint.stores._sql_queries import find_stream_by_name
from optuna_checkpoint.stores._sql_queries import find_trial_state
from optuna_checkpoint.stores._sql_queries import list_trial_states
from optuna_checkpoint.stores._sql_queries import summarize_stream
from optuna_checkpoint.stores._sql_queries import where_claimed
from optuna_checkpoint.stores._sql_queries import where_interrupted
from optuna_checkpoint.stores._sql_queries import where_latest_checkpoints
from optuna_checkpoint.stores._sql_queries import where_streams_of_study
from optuna_checkpoint.stores._sql_queries import where_trial_states
from optuna_checkpoint.stores._sql_rows import checkpoint_row
from optuna_checkpoint.stores._sql_rows import fingerprint_text
from optuna_checkpoint.stores._sql_rows import owner_columns
from optuna_checkpoint.stores._sql_schema import checkpoints
from optuna_checkpoint.stores._sql_schema import create_tables
from optuna_checkpoint.stores._sql_schema import interrupted_trials
from optuna_checkpoint.stores._sql_schema import streams
from optuna_checkpoint.stores._sql_schema import trial_claims
from optuna_checkpoint.stores._sql_schema import trial_states
from optuna_checkpoint.stores._sql_schema import unsealed_rows_until
from optuna_checkpoint.stores._sql_schema import upgrade_tables
from optuna_checkpoint.stores._sql_writes import add_new_interruptions
from optuna_checkpoint.stores._sql_writes import delete_checkpoints_of_trials
from optuna_checkpoint.stores._sql_writes import plant_streams_at_once
from optuna_checkpoint.stores._sql_writes import remove_rows_of_deleted_studies
from optuna_checkpoint.stores._sql_writes import replace_trial_state
from optuna_checkpoint.stores._sql_writes import reseal_study
from optuna_checkpoint.stores._sql_writes import transaction_with_retries


if TYPE_CHECKING:
    from optuna.storages import BaseStorage


# The tables are exported here too, where code outside this package has long imported them.
__all__ = [
    "SQLCheckpointStore",
    "checkpoints",
    "interrupted_trials",
    "resolve_rdb_storage",
    "streams",
    "trial_claims",
    "trial_states",
]

_RELEASE_BUSY_TIMEOUT_MS = 200
_SQLITE_BUSY_TIMEOUT_MS = 5000  # pysqlite's default, which Optuna's engine uses


def resolve_rdb_storage(storage: BaseStorage) -> RDBStorage | None:
    """Return the :class:`RDBStorage` behind ``storage`` (unwrapping Optuna's cache), if any."""
    if isinstance(storage, RDBStorage):
        return storage
    # ``optuna.storages._CachedStorage`` keeps the RDB backend in ``_backend``; no public accessor.
    backend = getattr(storage, "_backend", None)
    return backend if isinstance(backend, RDBStorage) else None


def _owned_by(owner: Owner | None) -> sa.ColumnElement[bool]:
    """The condition on a streams row that ``owner`` (``None``: nobody) holds it."""
    if owner is None:
        return streams.c.owner_token.is_(None)
    return streams.c.owner_token == owner.token


class SQLCheckpointStore(CheckpointStore):
    """Side tables in the database of an Optuna :class:`RDBStorage`.

    Use :meth:`for_storage` to get the store of a storage: there is one per storage object, since
    it also owns the commit hook registered on that storage's sessions.
    """

    supports_commit_hook = True
    _registry: ClassVar[StoreRegistry[SQLCheckpointStore]] = StoreRegistry()

    def __init__(self, rdb: RDBStorage) -> None:
        self._engine = rdb.engine
        self._url = rdb.url
        upgrade_tables(self._engine, created=create_tables(self._engine))
        self._unsealed_rows_until = unsealed_rows_until(self._engine)
        self._hook = TrialCommitHook(rdb)
        # So that a Ctrl-C cannot leave this process holding SQLite's lock while it stores the
        # trial's failure and releases its lease.
        close_cursors_left_open(self._engine)

    @classmethod
    def for_storage(cls, rdb: RDBStorage) -> SQLCheckpointStore:
        """Return the store for ``rdb``, creating its tables on first use."""
        return cls._registry.get(rdb, lambda: cls(rdb))

    def __repr__(self) -> str:
        return f"SQLCheckpointStore(RDBStorage({self._url!r}))"

    def find_stream(self, study_uid: str, name: str) -> Stream | None:
        """Return the stream, or ``None``."""
        with self._engine.connect() as connection:
            return find_stream_by_name(connection, study_uid, name)

    def list_streams(self, study_uid: str) -> list[Stream]:
        """Return the study's streams in creation order."""
        with self._engine.connect() as connection:
            return where_streams_of_study(connection, study_uid)

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
        """Create the stream with its initial checkpoint, removing deleted studies' rows."""
        remove_rows_of_deleted_studies(self._engine, study_id, study_uid)
        values = {
            "study_id": study_id,
            "study_uid": study_uid,
            "name": name,
            "fingerprint": fingerprint_text(fingerprint),
            "heartbeat_at": time.time(),
            "first_trial_number": first_trial_number,
            **owner_columns(owner),
        }

        def insert(connection: sa.Connection) -> None:
            key = connection.execute(streams.insert().values(values)).inserted_primary_key
            assert key is not None
            connection.execute(checkpoints.insert().values(checkpoint_row(key[0], initial)))

        try:
            transaction_with_retries(self._engine, insert)
        except sa_exc.IntegrityError:
            return None  # another process created the stream first
        return self.find_stream(study_uid, name)

    def reset_stream(
        self,
        stream: Stream,
        fingerprint: Any,
        owner: Owner,
        initial: Checkpoint,
        *,
        first_trial_number: int,
    ) -> Stream | None:
        """Drop the stream's checkpoints and restart it from ``initial``."""
        with self._engine.begin() as connection:
            claimed = connection.execute(
                streams.update()
                .where(streams.c.stream_id == stream.stream_id)
                .where(_owned_by(stream.owner))
                .values(
                    fingerprint=fingerprint_text(fingerprint),
                    first_trial_number=first_trial_number,
                    heartbeat_at=time.time(),
                    **owner_columns(owner),
                )
            )
            if claimed.rowcount != 1:
                return None
            connection.execute(
                checkpoints.delete().where(checkpoints.c.stream_id == stream.stream_id)
            )
            connection.execute(
                checkpoints.insert().values(checkpoint_row(stream.stream_id, initial))
            )
        return self.find_stream(stream.study_uid, stream.name)

    def take_over(self, stream: Stream, owner: Owner, now: float) -> bool:
        """Compare-and-swap the stream's owner."""
        with self._engine.begin() as connection:
            result = connection.execute(
                streams.update()
                .where(streams.c.stream_id == stream.stream_id)
                .where(_owned_by(stream.owner))
                .values(heartbeat_at=now, **owner_columns(owner))
            )
        return result.rowcount == 1

    def heartbeat(self, stream_id: int, token: str, now: float) -> bool:
        """Refresh the lease."""
        with self._engine.begin() as connection:
            result = connection.execute(
                streams.update()
                .where(streams.c.stream_id == stream_id, streams.c.owner_token == token)
                .values(heartbeat_at=now)
            )
        return result.rowcount == 1

    def release(self, stream_id: int, token: str) -> None:
        """Give the lease up, waiting at most briefly for a lock."""
        self._hook.stop_claiming_for(stream_id)
        release = (
            streams.update()
            .where(streams.c.stream_id == stream_id, streams.c.owner_token == token)
            .values(**owner_columns(None))
        )
        with self._engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                # Another process may hold SQLite's lock as this one exits; rather than wait the
                # default five seconds, give up quickly: the lease then simply lapses. The commit
                # waits for the lock too, so the timeout is restored only after it.
                connection.exec_driver_sql(f"PRAGMA busy_timeout = {_RELEASE_BUSY_TIMEOUT_MS}")
            try:
                connection.execute(release)
                connection.commit()
            finally:
                if sqlite:
                    connection.rollback()  # after a commit that gave up; else nothing to end
                    connection.exec_driver_sql(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")

    def save(self, stream: Stream, checkpoint: Checkpoint, token: str, now: float) -> None:
        """Save a checkpoint in its own transaction, replacing one of the same trial."""
        row = checkpoint_row(stream.stream_id, checkpoint)
        with self._engine.begin() as connection:
            claimed = connection.execute(
                streams.update()
                .where(streams.c.stream_id == stream.stream_id, streams.c.owner_token == token)
                .values(heartbeat_at=now)
            )
            if claimed.rowcount != 1:
                raise StreamOwnedError(
                    "this process no longer owns the checkpoint stream; run one process per "
                    "stream."
                )
            connection.execute(
                checkpoints.delete().where(
                    checkpoints.c.stream_id == stream.stream_id,
                    checkpoints.c.trial_id == row["trial_id"],
                )
            )
            connection.execute(checkpoints.insert().values(row))

    def latest_checkpoints(
        self, stream_id: int, *, excluding: Collection[int], limit: int
    ) -> list[Checkpoint]:
        """Return the stream's newest checkpoints, skipping the trials in ``excluding``."""
        with self._engine.connect() as connection:
            return where_latest_checkpoints(connection, stream_id, excluding, limit)

    def where_interrupted(self, study_uid: str) -> list[Interruption]:
        """Return the study's interrupted trials in trial-number order."""
        with self._engine.connect() as connection:
            return where_interrupted(connection, study_uid)

    def resume_point(
        self, study_uid: str, stream_id: int, *, limit: int
    ) -> tuple[list[Interruption], list[Checkpoint]]:
        """Read the interruptions and the newest checkpoints on one connection."""
        with self._engine.connect() as connection:
            known = where_interrupted(connection, study_uid)
            excluding = {i.trial_id for i in known}
            return known, where_latest_checkpoints(connection, stream_id, excluding, limit)

    def stream_summary(self, stream_id: int) -> StreamSummary:
        """Count and size the stream's checkpoints in one query; no payload leaves the server."""
        with self._engine.connect() as connection:
            return summarize_stream(connection, stream_id)

    def delete_checkpoints(self, stream_id: int, trial_ids: Collection[int]) -> int:
        """Delete the trials' checkpoints in one transaction (the initial row is never named)."""
        return delete_checkpoints_of_trials(self._engine, stream_id, trial_ids)

    def add_interruptions(
        self, study_id: int, study_uid: str, interruptions: Sequence[Interruption]
    ) -> None:
        """Record interrupted trials; known ones are skipped."""
        add_new_interruptions(self._engine, study_id, study_uid, interruptions)

    plants_atomically = True

    def plant_streams(
        self,
        study_id: int,
        study_uid: str,
        planted: Sequence[PlantedStream],
        rows_for: RowsFor,
        owner: Owner,
    ) -> None:
        """Plant the streams, released, and their rows in one transaction."""
        plant_streams_at_once(self._engine, study_id, study_uid, planted, rows_for)

    def defer_save_to_trial_commit(
        self, stream: Stream, trial_id: int, checkpoint: Checkpoint | None, token: str
    ) -> None:
        """Add the checkpoint to the transaction that stores the trial's final state."""
        self._hook.defer(
            trial_id, DeferredSave(stream.stream_id, stream.study_uid, token, checkpoint)
        )

    def pending_trial_ids(self) -> set[int]:
        """Trials whose deferred checkpoint has not been committed yet."""
        return self._hook.pending()

    def discard_pending(self, trial_id: int) -> None:
        """Forget a deferred checkpoint (its trial's commit will not come)."""
        self._hook.discard(trial_id)

    def interruption_count_hint(self, study_uid: str) -> int | None:
        """The study's number of interruptions as of the latest checkpoint committed here."""
        return self._hook.interruption_counts.get(study_uid)

    def claim_trial(self, stream: Stream, study_id: int, trial_id: int, seal: str) -> bool:
        """Claim the trial for the stream, unless another stream has it."""
        if self._hook.take_creation_claim(trial_id) == stream.stream_id:
            return True  # claimed in the transaction that created it
        row = {
            "study_uid": stream.study_uid,
            "trial_id": trial_id,
            "study_id": study_id,
            "stream_id": stream.stream_id,
            "seal": seal,
        }
        try:
            with self._engine.begin() as connection:
                connection.execute(INSERT_CLAIM, row)
            return True
        except sa_exc.IntegrityError:
            pass  # claimed before: by this stream (a retried call) or by another
        claim = self.claims(stream.study_uid, [trial_id]).get(trial_id)
        return claim is not None and claim.stream_id == stream.stream_id

    def claims(self, study_uid: str, trial_ids: Collection[int]) -> dict[int, Claim]:
        """Return the claim of each claimed trial among ``trial_ids``."""
        if not trial_ids:
            return {}
        with self._engine.connect() as connection:
            return where_claimed(connection, study_uid, trial_ids)

    def claim_trials_at_creation(
        self, stream: Stream, study_id: int, seal: Callable[[int], str]
    ) -> None:
        """Claim the study's trials created by this process from now on, as they are created."""
        claimer = CreationClaimer(stream.study_uid, stream.stream_id, seal)
        self._hook.claim_new_trials(study_id, claimer)

    def unsealed_rows_until(self, study_uid: str) -> int:
        """As recorded when the tables were upgraded to sealed rows (the same for every study)."""
        return self._unsealed_rows_until

    def save_trial_state(
        self, stream: Stream, token: str, study_id: int, record: TrialStateRecord
    ) -> None:
        """Replace the logical trial's saved state in one transaction, if ``token`` owns it."""
        if not replace_trial_state(
            self._engine, stream.stream_id, token, stream.study_uid, study_id, record, time.time()
        ):
            raise StreamOwnedError(
                "this process lost the checkpoint stream's lease to another process while its "
                "trial ran, so the trial's state was not saved; run one process per stream."
            )

    def find_trial_state(self, study_uid: str, logical_trial: int) -> TrialStateRecord | None:
        """Return the logical trial's saved state, or ``None``."""
        with self._engine.connect() as connection:
            return find_trial_state(connection, study_uid, logical_trial)

    def where_trial_states(self, study_uid: str) -> list[TrialStateRecord]:
        """Return every state the study's logical trials saved."""
        with self._engine.connect() as connection:
            return where_trial_states(connection, study_uid)

    def reseal(self, study_uid: str, resealed: Resealed) -> None:
        """Write the new seals in one transaction."""
        reseal_study(self._engine, study_uid, resealed)

    def delete_trial_state(self, study_uid: str, logical_trial: int) -> bool:
        """Delete the logical trial's saved state; whether there was one."""
        with self._engine.begin() as connection:
            result = connection.execute(
                trial_states.delete().where(
                    trial_states.c.study_uid == study_uid,
                    trial_states.c.logical_trial == logical_trial,
                )
            )
        return result.rowcount > 0

    def list_trial_states(self, study_uid: str) -> list[TrialStateSummary]:
        """The study's saved trial states, sized by the server; no payload leaves it."""
        with self._engine.connect() as connection:
            return list_trial_states(connection, study_uid)

    def delete_trial_state_with_trial_end(
        self, study_uid: str, trial_id: int, logical_trial: int
    ) -> None:
        """Delete the logical trial's saved state in the transaction that stores its end."""
        self._hook.drop_state_with_end(trial_id, study_uid, logical_trial)
