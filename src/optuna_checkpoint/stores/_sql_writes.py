"""Writes to the SQL store's side tables that take more than a statement, and their retries.

Each runs in a transaction of its own on the engine it is given. Those that workers starting
together may run at once are retried when the server reports a deadlock.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Sequence
import random
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from optuna_checkpoint._faults import crash_point
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._base import PlantedStream
from optuna_checkpoint.stores._base import Resealed
from optuna_checkpoint.stores._base import RowsFor
from optuna_checkpoint.stores._base import TrialStateRecord
from optuna_checkpoint.stores._base import require_seals
from optuna_checkpoint.stores._sql_queries import has_rows_of_deleted_studies
from optuna_checkpoint.stores._sql_queries import of_deleted_studies
from optuna_checkpoint.stores._sql_queries import where_streams_of_deleted_studies
from optuna_checkpoint.stores._sql_rows import INITIAL_TRIAL_ID
from optuna_checkpoint.stores._sql_rows import checkpoint_row
from optuna_checkpoint.stores._sql_rows import fingerprint_text
from optuna_checkpoint.stores._sql_rows import interruption_row
from optuna_checkpoint.stores._sql_rows import owner_columns
from optuna_checkpoint.stores._sql_schema import checkpoints
from optuna_checkpoint.stores._sql_schema import interrupted_trials
from optuna_checkpoint.stores._sql_schema import streams
from optuna_checkpoint.stores._sql_schema import trial_claims
from optuna_checkpoint.stores._sql_schema import trial_states


_TRANSIENT_RETRIES = 5
# Trial ids per DELETE statement: SQLite allows 32766 bound parameters per statement.
_DELETE_CHUNK = 10000


def _is_transient(error: sa_exc.OperationalError) -> bool:
    """Whether the server asks for the transaction to be retried (deadlock, lock timeout)."""
    sqlstate = getattr(error.orig, "sqlstate", None)  # psycopg
    code = error.orig.args[0] if error.orig is not None and error.orig.args else None
    return sqlstate in ("40001", "40P01") or code in (1205, 1213)  # PG; MySQL/MariaDB


def transaction_with_retries(engine: sa.Engine, work: Callable[[sa.Connection], None]) -> None:
    """Run ``work`` in a transaction, again in a new one if the server asks for a retry.

    ``work`` may therefore run more than once, and must start from scratch each time.
    """
    # Workers starting together make MySQL/MariaDB and PostgreSQL report deadlocks on
    # concurrent inserts into the same index range; the server's advice is to retry.
    for attempt in range(_TRANSIENT_RETRIES + 1):
        try:
            with engine.begin() as connection:
                work(connection)
            return
        except sa_exc.OperationalError as e:
            if attempt == _TRANSIENT_RETRIES or not _is_transient(e):
                raise
            time.sleep(random.uniform(0.01, 0.1) * (attempt + 1))


def remove_rows_of_deleted_studies(engine: sa.Engine, study_id: int, study_uid: str) -> None:
    """Remove the rows of studies that ``optuna.delete_study`` deleted.

    Our tables have no foreign key into Optuna's schema, so that Optuna's migrations and
    ``delete_study`` never trip over them; the store removes rows of deleted studies instead,
    whenever a stream is created (see :func:`._sql_queries.of_deleted_studies`). Nothing is
    locked unless there is something to remove.
    """
    others = (interrupted_trials, trial_claims, trial_states)
    with engine.connect() as connection:
        stale_streams = where_streams_of_deleted_studies(connection, study_id, study_uid)
        if not stale_streams and not has_rows_of_deleted_studies(
            connection, others, study_id, study_uid
        ):
            return

    def remove(connection: sa.Connection) -> None:
        # SQLite does not enforce the foreign key's cascade, so children go first.
        connection.execute(checkpoints.delete().where(checkpoints.c.stream_id.in_(stale_streams)))
        connection.execute(streams.delete().where(streams.c.stream_id.in_(stale_streams)))
        for table in others:
            stale = of_deleted_studies(table, study_id, study_uid)
            connection.execute(table.delete().where(stale))

    transaction_with_retries(engine, remove)


def delete_checkpoints_of_trials(
    engine: sa.Engine, stream_id: int, trial_ids: Collection[int]
) -> int:
    """Delete the trials' checkpoints in one transaction; return how many rows went.

    The initial row is never deleted, even if its placeholder trial id is named.
    """
    ids = sorted({int(t) for t in trial_ids} - {INITIAL_TRIAL_ID})
    deleted = 0

    def delete(connection: sa.Connection) -> None:
        nonlocal deleted
        deleted = 0  # a retried transaction counts again
        # Usually one statement; a very long list is cut to stay under SQLite's limit.
        for start in range(0, len(ids), _DELETE_CHUNK):
            result = connection.execute(
                checkpoints.delete().where(
                    checkpoints.c.stream_id == stream_id,
                    checkpoints.c.trial_id.in_(ids[start : start + _DELETE_CHUNK]),
                )
            )
            deleted += result.rowcount

    if ids:
        transaction_with_retries(engine, delete)
    return deleted


def add_new_interruptions(
    engine: sa.Engine, study_id: int, study_uid: str, interruptions: Sequence[Interruption]
) -> None:
    """Record the interrupted trials the study has not recorded yet, in one transaction.

    Workers that find the same dead trial at once may both try to record it; the one whose
    insert loses reads the known ones again and skips them.
    """
    require_seals(interruptions)
    if not interruptions:
        return

    def add(connection: sa.Connection) -> None:
        known = set(
            connection.execute(
                sa.select(interrupted_trials.c.trial_id).where(
                    interrupted_trials.c.study_uid == study_uid,
                    interrupted_trials.c.trial_id.in_([i.trial_id for i in interruptions]),
                )
            ).scalars()
        )
        rows = [
            interruption_row(study_id, study_uid, i)
            for i in interruptions
            if i.trial_id not in known
        ]
        if rows:
            connection.execute(interrupted_trials.insert(), rows)

    try:
        transaction_with_retries(engine, add)
    except sa_exc.IntegrityError:
        # Another process recorded some of them between this one's read and its insert: they
        # are known now, and committed once recorded, so the second read sees them.
        transaction_with_retries(engine, add)


def plant_streams_at_once(
    engine: sa.Engine,
    study_id: int,
    study_uid: str,
    planted: Sequence[PlantedStream],
    rows_for: RowsFor,
) -> None:
    """Create the streams, released, with their checkpoints, then their rows: one transaction.

    Raises:
        CheckpointError: The study has a stream of one of those names already, or rows of
            those trials (nothing is written then).
    """

    def plant(connection: sa.Connection) -> None:
        ids = {}
        for spec in planted:
            stream = {
                "study_id": study_id,
                "study_uid": study_uid,
                "name": spec.name,
                "fingerprint": fingerprint_text(spec.fingerprint),
                "heartbeat_at": time.time(),
                "first_trial_number": spec.first_trial_number,
                **owner_columns(None),
            }
            key = connection.execute(streams.insert().values(stream)).inserted_primary_key
            assert key is not None
            ids[spec.name] = key[0]
            rows = [checkpoint_row(key[0], c) for c in spec.checkpoints]
            connection.execute(checkpoints.insert(), rows)
            crash_point("inside_import")
        interruptions, claims = rows_for(ids)
        require_seals(interruptions)
        if not all(claim.seal for claim in claims.values()):
            raise ValueError("claims are sealed before they are stored")
        if interruptions:
            rows = [interruption_row(study_id, study_uid, i) for i in interruptions]
            connection.execute(interrupted_trials.insert(), rows)
        if claims:
            connection.execute(
                trial_claims.insert(),
                [
                    {
                        "study_uid": study_uid,
                        "trial_id": trial_id,
                        "study_id": study_id,
                        "stream_id": claim.stream_id,
                        "seal": claim.seal,
                    }
                    for trial_id, claim in claims.items()
                ],
            )
        crash_point("inside_import")

    remove_rows_of_deleted_studies(engine, study_id, study_uid)
    try:
        transaction_with_retries(engine, plant)
    except sa_exc.IntegrityError as e:
        raise CheckpointError(
            "the study already has a checkpoint stream of that name, or records of its trials, "
            "so nothing was planted; plant into a fresh copy of the study"
        ) from e


_RESEAL_CHECKPOINT = (
    checkpoints.update()
    .where(
        checkpoints.c.stream_id == sa.bindparam("b_stream_id"),
        checkpoints.c.trial_id == sa.bindparam("b_trial_id"),
    )
    .values(checksum=sa.bindparam("b_seal"))
)


def _reseal_by_trial(table: sa.Table, column: str, key: str) -> sa.Update:
    """``UPDATE table SET column = :b_seal`` for one study and one ``key`` (bound as b_key)."""
    return (
        table.update()
        .where(
            table.c.study_uid == sa.bindparam("b_study_uid"),
            table.c[key] == sa.bindparam("b_key"),
        )
        .values({column: sa.bindparam("b_seal")})
    )


def reseal_study(engine: sa.Engine, study_uid: str, resealed: Resealed) -> None:
    """Write the new seals of a study's checkpoints, rows and trial states: one transaction."""
    statements: list[tuple[sa.Update, list[dict[str, Any]]]] = [
        (
            _RESEAL_CHECKPOINT,
            [
                {
                    "b_stream_id": stream_id,
                    "b_trial_id": INITIAL_TRIAL_ID if c.trial_id is None else c.trial_id,
                    "b_seal": c.checksum,
                }
                for stream_id, listed in resealed.checkpoints.items()
                for c in listed
            ],
        ),
        (
            _reseal_by_trial(interrupted_trials, "seal", "trial_id"),
            [{"b_key": i.trial_id, "b_seal": i.seal} for i in resealed.interruptions],
        ),
        (
            _reseal_by_trial(trial_claims, "seal", "trial_id"),
            [{"b_key": t, "b_seal": c.seal} for t, c in resealed.claims.items()],
        ),
        (
            _reseal_by_trial(trial_states, "checksum", "logical_trial"),
            [{"b_key": r.logical_trial, "b_seal": r.checksum} for r in resealed.trial_states],
        ),
    ]

    def reseal(connection: sa.Connection) -> None:
        for statement, rows in statements:
            if rows:
                connection.execute(statement, [{"b_study_uid": study_uid, **r} for r in rows])
                crash_point("inside_reseal")

    transaction_with_retries(engine, reseal)


_REPLACE_RACES = 3


def replace_trial_state(
    engine: sa.Engine,
    stream_id: int,
    token: str,
    study_uid: str,
    study_id: int,
    record: TrialStateRecord,
    now: float,
) -> bool:
    """Replace a logical trial's saved state, if ``token`` owns the stream; whether it does.

    One transaction: the previous row goes and the new one comes together, so a kill leaves
    one of the two. The lease is checked with an UPDATE of the stream's heartbeat, whose row
    lock makes a concurrent take-over wait until this commits.
    """
    row = {
        "study_uid": study_uid,
        "logical_trial": record.logical_trial,
        "study_id": study_id,
        "trial_id": record.trial_id,
        "payload": record.payload,
        "checksum": record.checksum,
    }
    owned = True

    def replace(connection: sa.Connection) -> None:
        nonlocal owned
        owned = (
            connection.execute(
                streams.update()
                .where(streams.c.stream_id == stream_id, streams.c.owner_token == token)
                .values(heartbeat_at=now)
            ).rowcount
            == 1
        )
        if not owned:
            return
        connection.execute(
            trial_states.delete().where(
                trial_states.c.study_uid == study_uid,
                trial_states.c.logical_trial == record.logical_trial,
            )
        )
        crash_point("inside_trial_state_save")
        connection.execute(trial_states.insert().values(row))

    for attempt in range(_REPLACE_RACES):
        try:
            transaction_with_retries(engine, replace)
            break
        except sa_exc.IntegrityError:
            # Two attempts at one logical trial (deterministic mode may run a position twice)
            # inserted at once; the loser replaces the winner's row on its next try.
            if attempt == _REPLACE_RACES - 1:
                raise
    return owned
