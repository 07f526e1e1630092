"""Reads of the SQL store's side tables, each on a connection the caller holds.

Named by outcome, as Optuna's models are: ``find_*`` returns one object or ``None``,
``where_*`` returns everything that matches (possibly nothing), and the rest return exactly one
answer. Holding the connection lets a caller make several reads on one connection.
"""

from __future__ import annotations

from collections.abc import Collection
from collections.abc import Iterable

import sqlalchemy as sa

from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import Claim
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._base import Stream
from optuna_checkpoint.stores._base import StreamSummary
from optuna_checkpoint.stores._base import TrialStateRecord
from optuna_checkpoint.stores._base import TrialStateSummary
from optuna_checkpoint.stores._sql_rows import INITIAL_TRIAL_ID
from optuna_checkpoint.stores._sql_rows import checkpoint_from_row
from optuna_checkpoint.stores._sql_rows import stream_from_row
from optuna_checkpoint.stores._sql_schema import checkpoints
from optuna_checkpoint.stores._sql_schema import interrupted_trials
from optuna_checkpoint.stores._sql_schema import optuna_studies
from optuna_checkpoint.stores._sql_schema import streams
from optuna_checkpoint.stores._sql_schema import trial_claims
from optuna_checkpoint.stores._sql_schema import trial_states


_CLAIMS_CHUNK = 5000  # trial ids per claims query: an IN list stays well within SQL limits


def find_stream_by_name(connection: sa.Connection, study_uid: str, name: str) -> Stream | None:
    """Return the study's stream called ``name``, or ``None``."""
    row = connection.execute(
        streams.select().where(streams.c.study_uid == study_uid, streams.c.name == name)
    ).first()
    return None if row is None else stream_from_row(row)


def where_streams_of_study(connection: sa.Connection, study_uid: str) -> list[Stream]:
    """Return the study's streams in creation order."""
    rows = connection.execute(
        streams.select().where(streams.c.study_uid == study_uid).order_by(streams.c.stream_id)
    ).all()
    return [stream_from_row(row) for row in rows]


def where_latest_checkpoints(
    connection: sa.Connection, stream_id: int, excluding: Collection[int], limit: int
) -> list[Checkpoint]:
    """Return the stream's newest ``limit`` checkpoints, skipping the trials in ``excluding``."""
    query = checkpoints.select().where(checkpoints.c.stream_id == stream_id)
    if excluding:
        query = query.where(checkpoints.c.trial_id.not_in(list(excluding)))
    query = query.order_by(checkpoints.c.checkpoint_id.desc()).limit(limit)
    return [checkpoint_from_row(row) for row in connection.execute(query)]


def where_interrupted(connection: sa.Connection, study_uid: str) -> list[Interruption]:
    """Return the study's interrupted trials in trial-number order."""
    rows = connection.execute(
        interrupted_trials.select()
        .where(interrupted_trials.c.study_uid == study_uid)
        .order_by(interrupted_trials.c.trial_number)
    )
    return [
        Interruption(
            trial_id=r.trial_id,
            trial_number=r.trial_number,
            logical_number=r.logical_number,
            reason=r.reason,
            stream_id=r.stream_id,
            seal=r.seal,
        )
        for r in rows
    ]


def where_claimed(
    connection: sa.Connection, study_uid: str, trial_ids: Collection[int]
) -> dict[int, Claim]:
    """Return the claim of each claimed trial among ``trial_ids``, however many there are."""
    ids = list(trial_ids)
    found: dict[int, Claim] = {}
    for start in range(0, len(ids), _CLAIMS_CHUNK):
        rows = connection.execute(
            sa.select(
                trial_claims.c.trial_id, trial_claims.c.stream_id, trial_claims.c.seal
            ).where(
                trial_claims.c.study_uid == study_uid,
                trial_claims.c.trial_id.in_(ids[start : start + _CLAIMS_CHUNK]),
            )
        ).all()
        found.update((row.trial_id, Claim(row.stream_id, row.seal)) for row in rows)
    return found


def find_trial_state(
    connection: sa.Connection, study_uid: str, logical_trial: int
) -> TrialStateRecord | None:
    """Return the logical trial's saved state, or ``None``."""
    row = connection.execute(
        sa.select(trial_states.c.trial_id, trial_states.c.payload, trial_states.c.checksum).where(
            trial_states.c.study_uid == study_uid,
            trial_states.c.logical_trial == logical_trial,
        )
    ).first()
    if row is None:
        return None
    return TrialStateRecord(logical_trial, int(row.trial_id), bytes(row.payload), row.checksum)


def list_trial_states(connection: sa.Connection, study_uid: str) -> list[TrialStateSummary]:
    """The study's saved trial states, by logical trial; only their sizes are read."""
    rows = connection.execute(
        sa.select(
            trial_states.c.logical_trial,
            trial_states.c.trial_id,
            sa.func.length(trial_states.c.payload).label("size"),
        )
        .where(trial_states.c.study_uid == study_uid)
        .order_by(trial_states.c.logical_trial)
    ).all()
    return [TrialStateSummary(int(r.logical_trial), int(r.trial_id), int(r.size)) for r in rows]


def where_trial_states(connection: sa.Connection, study_uid: str) -> list[TrialStateRecord]:
    """Return every state the study's logical trials saved, in logical-trial order."""
    rows = connection.execute(
        trial_states.select()
        .where(trial_states.c.study_uid == study_uid)
        .order_by(trial_states.c.logical_trial)
    )
    return [
        TrialStateRecord(int(r.logical_trial), int(r.trial_id), bytes(r.payload), r.checksum)
        for r in rows
    ]


def summarize_stream(connection: sa.Connection, stream_id: int) -> StreamSummary:
    """Count and size the stream's checkpoints in one query; no payload leaves the server."""
    mine = checkpoints.c.stream_id == stream_id
    totals = sa.select(
        sa.func.count().label("n"),
        sa.func.coalesce(sa.func.sum(sa.func.length(checkpoints.c.payload)), 0).label("size"),
    ).where(mine)
    # Walked backwards along the (stream_id, checkpoint_id) index: one row is read.
    newest = (
        sa.select(checkpoints.c.trial_id, checkpoints.c.logical_number)
        .where(mine)
        .order_by(checkpoints.c.checkpoint_id.desc())
        .limit(1)
    )
    totals_sq, newest_sq = totals.subquery(), newest.subquery()
    query = sa.select(
        totals_sq.c.n, totals_sq.c.size, newest_sq.c.trial_id, newest_sq.c.logical_number
    ).select_from(totals_sq.outerjoin(newest_sq, sa.true()))
    row = connection.execute(query).one()
    trial_id = None if row.trial_id in (None, INITIAL_TRIAL_ID) else int(row.trial_id)
    return StreamSummary(
        checkpoints=int(row.n),
        # int(): MySQL sums integers into a DECIMAL.
        payload_bytes=int(row.size),
        newest_trial_id=trial_id,
        newest_logical_number=None if row.logical_number is None else int(row.logical_number),
    )


def of_deleted_studies(table: sa.Table, study_id: int, study_uid: str) -> sa.ColumnElement[bool]:
    """The condition on ``table``'s rows that picks those of studies Optuna has deleted.

    That includes a study deleted and recreated under ``study_id`` (SQLite reuses ids),
    recognised by a ``study_uid`` other than ``study_uid``. Optuna's ``studies`` table is only
    read.
    """
    live = sa.select(optuna_studies.c.study_id)
    return sa.or_(
        sa.and_(table.c.study_id == study_id, table.c.study_uid != study_uid),
        table.c.study_id.not_in(live),
    )


def where_streams_of_deleted_studies(
    connection: sa.Connection, study_id: int, study_uid: str
) -> list[int]:
    """Return the ids of the streams of deleted studies (see :func:`of_deleted_studies`)."""
    query = sa.select(streams.c.stream_id).where(of_deleted_studies(streams, study_id, study_uid))
    return list(connection.execute(query).scalars())


def has_rows_of_deleted_studies(
    connection: sa.Connection, tables: Iterable[sa.Table], study_id: int, study_uid: str
) -> bool:
    """Whether any of ``tables`` has a row of a deleted study; locks nothing."""
    return any(
        connection.execute(
            sa.select(t.c.study_id).where(of_deleted_studies(t, study_id, study_uid)).limit(1)
        ).first()
        for t in tables
    )
