"""The SQL store's commit hook: writes that ride on the transactions Optuna commits anyway.

The per-trial checkpoint is not a separate write: it is added, through SQLAlchemy's documented
``before_commit`` session event, to the transaction in which Optuna stores the trial's final
state, so the two are committed together or not at all and the checkpoint costs one extra
statement instead of one extra transaction. A trial's claim is likewise added to the transaction
that creates it, and the deletion of a finished logical trial's saved state to the transaction
that stores its end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import threading
from typing import TYPE_CHECKING
from typing import Any

from optuna.trial import TrialState
import sqlalchemy as sa
from sqlalchemy import event

from optuna_checkpoint._faults import crash_point
from optuna_checkpoint.exceptions import CheckpointIncompleteError
from optuna_checkpoint.exceptions import StreamOwnedError
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._sql_rows import checkpoint_row
from optuna_checkpoint.stores._sql_schema import OPTUNA_TRIALS_TABLE
from optuna_checkpoint.stores._sql_schema import checkpoints
from optuna_checkpoint.stores._sql_schema import interrupted_trials
from optuna_checkpoint.stores._sql_schema import streams
from optuna_checkpoint.stores._sql_schema import trial_claims
from optuna_checkpoint.stores._sql_schema import trial_states


if TYPE_CHECKING:
    from optuna.storages import RDBStorage
    from sqlalchemy.orm import Session


_CHECKPOINT_COLUMNS = (
    "stream_id",
    "trial_id",
    "logical_number",
    "trial_state",
    "trial_values",
    "adapter",
    "payload",
    "checksum",
    "versions",
)
# INSERT ... SELECT ... WHERE the stream is still ours: the lease check costs no extra statement.
# ``preserve_rowcount``: psycopg reports no row count for an INSERT unless SQLAlchemy asks for it.
_INSERT_IF_OWNER = (
    checkpoints.insert()
    .from_select(
        list(_CHECKPOINT_COLUMNS),
        sa.select(
            *(sa.bindparam(name, type_=checkpoints.c[name].type) for name in _CHECKPOINT_COLUMNS)
        )
        .select_from(streams)
        .where(
            streams.c.stream_id == sa.bindparam("stream_id"),
            streams.c.owner_token == sa.bindparam("owner_token"),
        ),
    )
    .execution_options(preserve_rowcount=True)
)
INSERT_CLAIM = trial_claims.insert()
"""Claim a trial for a stream; fails on the primary key if the trial is claimed already."""
_COUNT_INTERRUPTIONS = (
    sa.select(sa.func.count())
    .select_from(interrupted_trials)
    .where(interrupted_trials.c.study_uid == sa.bindparam("study_uid"))
)
# Where the database has RETURNING (SQLite >= 3.35, PostgreSQL, MariaDB >= 10.5), the count
# comes back with the checkpoint's INSERT, saving the trial's commit a round trip.
_INSERT_IF_OWNER_COUNTING = _INSERT_IF_OWNER.returning(_COUNT_INTERRUPTIONS.scalar_subquery())

_DELETE_TRIAL_STATE = trial_states.delete().where(
    trial_states.c.study_uid == sa.bindparam("study_uid"),
    trial_states.c.logical_trial == sa.bindparam("logical_trial"),
)


@dataclass(frozen=True)
class CreationClaimer:
    """Claims the trials this process creates in one study for one stream.

    ``seal(trial_id)`` seals a new trial's claim: a hash over a few fields, computed in the
    commit that creates the trial.
    """

    study_uid: str
    stream_id: int
    seal: Callable[[int], str]


@dataclass
class DeferredSave:
    """A checkpoint waiting for its trial's commit; ``None`` while it is being prepared."""

    stream_id: int
    study_uid: str
    token: str
    checkpoint: Checkpoint | None


class TrialCommitHook:
    """Adds claims and deferred checkpoints to the transactions Optuna commits anyway.

    One per :class:`RDBStorage`, listening on Optuna's ``scoped_session`` with SQLAlchemy's
    documented session events, so it sees every commit Optuna makes through that storage:

    * a trial created RUNNING in a study this process works on for a stream is claimed for that
      stream in the transaction that creates it, so it is never unclaimed while its process
      lives;
    * a trial turning finished gets its deferred checkpoint in the transaction that stores its
      end, and its logical trial's saved state, if it is to go, is deleted there too.
    """

    _NEW_TRIALS = "optuna_checkpoint_new_trials"  # key in ``Session.info``

    def __init__(self, rdb: RDBStorage) -> None:
        self._deferred: dict[int, DeferredSave] = {}
        # Trial id -> (study uid, logical trial) whose saved state goes with the trial's end.
        self._state_drops: dict[int, tuple[str, int]] = {}
        self._claimers: dict[int, CreationClaimer] = {}  # by study id
        self._claimed_at_creation: dict[int, int] = {}  # trial id -> stream id
        self._lock = threading.Lock()
        # Interruptions per study as counted in the latest checkpoint's transaction: lets the
        # owner notice, at no extra round trip, a trial that another process closed as refused.
        self.interruption_counts: dict[str, int] = {}
        event.listen(rdb.scoped_session, "pending_to_persistent", self._on_inserted)
        event.listen(rdb.scoped_session, "after_soft_rollback", self._on_rollback)
        event.listen(rdb.scoped_session, "before_commit", self._before_commit)

    def defer(self, trial_id: int, save: DeferredSave) -> None:
        """Write ``save`` in the transaction that stores the trial's final state."""
        with self._lock:
            self._deferred[trial_id] = save

    def pending(self) -> set[int]:
        """Trials whose deferred checkpoint has not been committed yet."""
        with self._lock:
            return set(self._deferred)

    def discard(self, trial_id: int) -> None:
        """Forget the trial's deferred checkpoint (and deletion of its saved state)."""
        with self._lock:
            self._deferred.pop(trial_id, None)
            self._state_drops.pop(trial_id, None)

    def drop_state_with_end(self, trial_id: int, study_uid: str, logical_trial: int) -> None:
        """Delete the logical trial's saved state in the transaction storing the trial's end."""
        with self._lock:
            self._state_drops[trial_id] = (study_uid, logical_trial)

    def claim_new_trials(self, study_id: int, claimer: CreationClaimer | None) -> None:
        """Claim the study's trials as they are created, or stop if ``claimer`` is ``None``."""
        with self._lock:
            if claimer is None:
                self._claimers.pop(study_id, None)
            else:
                self._claimers[study_id] = claimer

    def stop_claiming_for(self, stream_id: int) -> None:
        """Stop claiming new trials for the stream, in every study."""
        with self._lock:
            for study_id, claimer in list(self._claimers.items()):
                if claimer.stream_id == stream_id:
                    del self._claimers[study_id]

    def take_creation_claim(self, trial_id: int) -> int | None:
        """The stream the trial was claimed for when it was created here, asked once."""
        with self._lock:
            return self._claimed_at_creation.pop(trial_id, None)

    def _on_inserted(self, session: Session, instance: object) -> None:
        if self._claimers and getattr(instance, "__tablename__", None) == OPTUNA_TRIALS_TABLE:
            session.info.setdefault(self._NEW_TRIALS, []).append(instance)

    def _on_rollback(self, session: Session, previous_transaction: object) -> None:
        session.info.pop(self._NEW_TRIALS, None)

    def _before_commit(self, session: Session) -> None:
        created = session.info.pop(self._NEW_TRIALS, None)
        if created:
            self._claim_created(session, created)
        if not self._deferred and not self._state_drops:
            return
        for trial_id in self._finishing_trials(session):
            with self._lock:
                save = self._deferred.pop(trial_id, None)
                drop = self._state_drops.pop(trial_id, None)
            if drop is not None:
                session.connection().execute(
                    _DELETE_TRIAL_STATE, {"study_uid": drop[0], "logical_trial": drop[1]}
                )
            if save is None:
                continue
            if save.checkpoint is None:
                raise CheckpointIncompleteError(
                    f"trial {trial_id} was about to be stored as finished while its checkpoint "
                    "was still being prepared (the sampler's after_trial raised or was "
                    "interrupted); the trial stays RUNNING and is retried on resume."
                )
            # Core statements on the session's connection: same transaction, none of the ORM
            # execution overhead (this runs once per trial).
            connection = session.connection()
            parameters = {
                **checkpoint_row(save.stream_id, save.checkpoint),
                "owner_token": save.token,
                "study_uid": save.study_uid,
            }
            count: int | None
            if connection.dialect.insert_returning:
                counts = connection.execute(_INSERT_IF_OWNER_COUNTING, parameters).scalars().all()
                inserted, count = len(counts), (counts[0] if counts else None)
            else:
                inserted = connection.execute(_INSERT_IF_OWNER, parameters).rowcount
                count = None
            if inserted != 1:
                raise StreamOwnedError(
                    "this process lost the checkpoint stream's lease to another process while "
                    f"trial {trial_id} ran; the trial stays RUNNING. Run one process per stream."
                )
            if count is None:
                count = connection.execute(
                    _COUNT_INTERRUPTIONS, {"study_uid": save.study_uid}
                ).scalar_one()
            self.interruption_counts[save.study_uid] = count
            crash_point("inside_commit")

    def _claim_created(self, session: Session, created: list[Any]) -> None:
        rows: list[dict[str, Any]] = []
        for trial in created:
            state = getattr(trial, "state", None)
            with self._lock:
                claimer = self._claimers.get(getattr(trial, "study_id", None))  # type: ignore[arg-type]
            # Enqueued trials are created WAITING: whichever worker pops one claims it then.
            if claimer is None or state != TrialState.RUNNING:
                continue
            trial_id = int(getattr(trial, "trial_id"))  # noqa: B009 - untyped ORM row
            rows.append(
                {
                    "study_uid": claimer.study_uid,
                    "trial_id": trial_id,
                    "study_id": int(getattr(trial, "study_id")),  # noqa: B009
                    "stream_id": claimer.stream_id,
                    "seal": claimer.seal(trial_id),
                }
            )
        if not rows:
            return
        # One row (the usual case) as a plain execute: an executemany costs more per statement.
        session.connection().execute(INSERT_CLAIM, rows[0] if len(rows) == 1 else rows)
        with self._lock:
            for row in rows:
                self._claimed_at_creation[int(row["trial_id"])] = int(row["stream_id"])

    def _finishing_trials(self, session: Session) -> list[int]:
        # Optuna loads the trial row ``for_update`` and sets its state before committing; find
        # those rows in the session rather than importing Optuna's private model class. Only a
        # state set in this transaction counts: a read that loads a trial another process
        # finished (told from a copy of the study) finishes nothing here.
        found = []
        for obj in list(session.identity_map.values()):
            if getattr(obj, "__tablename__", None) != OPTUNA_TRIALS_TABLE:
                continue
            state = getattr(obj, "state", None)
            if (
                isinstance(state, TrialState)
                and state.is_finished()
                and sa.inspect(obj).attrs["state"].history.added
            ):
                found.append(int(getattr(obj, "trial_id")))  # noqa: B009 - untyped ORM row
        return found
