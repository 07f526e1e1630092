"""The side tables of the SQL store: their layout, its format version, creation and upgrade.

The tables have their own ``MetaData`` and are created on first use, so Optuna's schema, its
alembic revision and ``optuna storage upgrade`` never see them. Their layout has a format version
of its own (:data:`TABLES_FORMAT`), recorded in a table beside them and upgraded in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql

from optuna_checkpoint._logging import get_logger
from optuna_checkpoint.exceptions import CheckpointError


_logger = get_logger(__name__)

metadata = sa.MetaData()

TABLES_FORMAT = 4
"""The layout of the side tables. 1: releases 0.1 to 0.3, which had no format table. 2: this
format table, and the checkpoints' ``versions`` column. 3: the trial states table. 4: the
``seal`` columns of the interruptions and claims."""

UNSEALED_ROWS_UNTIL = "unsealed_rows_until"
"""The component of the format table whose ``version`` is the newest trial id that an
interruption or claim row without a seal may belong to: recorded by the upgrade to format 4,
absent from tables created at format 4 or later."""


def _add_column(engine: sa.Engine, column: sa.Column[Any]) -> None:
    """Add ``column`` to its table, unless it is there already (nullable, so rows stay valid)."""
    table = column.table.name

    def present() -> bool:
        return column.name in {c["name"] for c in sa.inspect(engine).get_columns(table)}

    if present():
        return
    ddl = f"ALTER TABLE {table} ADD COLUMN {column.name} "
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(ddl + column.type.compile(dialect=engine.dialect))
    except (sa_exc.OperationalError, sa_exc.ProgrammingError):
        if not present():  # else another worker added it at the same moment
            raise


def _add_versions_column(engine: sa.Engine) -> None:
    """Format 1 to 2: add the checkpoints' ``versions`` column, unless it is there already."""
    _add_column(engine, checkpoints.c.versions)


def _add_trial_states_table(engine: sa.Engine) -> None:
    """Format 2 to 3: create the trial states table, unless it is there already."""
    # create_tables() has usually made it already, on this very start.
    try:
        trial_states.create(engine, checkfirst=True)
    except (sa_exc.OperationalError, sa_exc.ProgrammingError, sa_exc.IntegrityError):
        if not sa.inspect(engine).has_table(trial_states.name):
            raise  # not a race with another worker creating it


def _add_seal_columns(engine: sa.Engine) -> None:
    """Format 3 to 4: seal columns for interruptions and claims, and the bound of unsealed rows.

    The rows already there have no seal. The newest trial id among them is recorded, so that
    a row without a seal is accepted only for a trial up to it: every later row is sealed.
    """
    _add_column(engine, interrupted_trials.c.seal)
    _add_column(engine, trial_claims.c.seal)
    newest = sa.union_all(
        *(
            sa.select(sa.func.max(t.c.trial_id).label("trial_id")).where(t.c.seal.is_(None))
            for t in (interrupted_trials, trial_claims)
        )
    ).subquery()
    with engine.connect() as connection:
        found = connection.execute(sa.select(sa.func.max(newest.c.trial_id))).scalar()
    bound = -1 if found is None else int(found)
    try:
        with engine.begin() as connection:
            connection.execute(
                formats.insert().values(component=UNSEALED_ROWS_UNTIL, version=bound)
            )
    except sa_exc.IntegrityError:
        pass  # another worker upgrading at the same moment recorded it


# Upgrades of the tables, by the format they start from. Each only adds (tables, columns), so
# the rows of earlier releases stay readable, and each is idempotent.
_UPGRADES: dict[int, Callable[[sa.Engine], None]] = {
    1: _add_versions_column,
    2: _add_trial_states_table,
    3: _add_seal_columns,
}

formats = sa.Table(
    "optuna_checkpoint_format",
    metadata,
    sa.Column("component", sa.String(32), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)
_TABLES = "tables"

streams = sa.Table(
    "optuna_checkpoint_streams",
    metadata,
    sa.Column("stream_id", sa.Integer, primary_key=True),
    sa.Column("study_id", sa.Integer, nullable=False, index=True),
    sa.Column("study_uid", sa.String(32), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("fingerprint", sa.Text, nullable=False),
    sa.Column("owner_token", sa.String(32)),
    sa.Column("owner_host", sa.String(255)),
    sa.Column("owner_boot_id", sa.String(64)),
    sa.Column("owner_pid", sa.Integer),
    sa.Column("owner_pid_start", sa.String(32)),
    # Double: MySQL's FLOAT is single precision, which rounds today's epoch to about a minute.
    sa.Column("heartbeat_at", sa.Double, nullable=False),
    sa.Column("first_trial_number", sa.Integer, nullable=False),
    sa.UniqueConstraint("study_uid", "name"),
)

checkpoints = sa.Table(
    "optuna_checkpoint_checkpoints",
    metadata,
    sa.Column("checkpoint_id", sa.Integer, primary_key=True),
    sa.Column(
        "stream_id",
        sa.Integer,
        sa.ForeignKey("optuna_checkpoint_streams.stream_id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("trial_id", sa.Integer, nullable=False),
    sa.Column("logical_number", sa.Integer, nullable=False),
    sa.Column("trial_state", sa.String(16)),
    sa.Column("trial_values", sa.Text),
    sa.Column("adapter", sa.String(64), nullable=False),
    # MySQL's BLOB stops at 64 KiB.
    sa.Column("payload", sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")),
    sa.Column("checksum", sa.String(64), nullable=False),
    # The writer's library versions (JSON); NULL in rows of releases before 0.4. Beside the
    # payload rather than in it: PostgreSQL stores a payload in 2 KB chunks, and 90 bytes more
    # of it cost 400 bytes of pages per TPE checkpoint.
    sa.Column("versions", sa.Text),
    sa.UniqueConstraint("stream_id", "trial_id"),
    # A resume reads a stream's newest checkpoints: walked backwards along this index, the
    # lookup stays flat; without it the database sorts every checkpoint of the stream.
    sa.Index("ix_optuna_checkpoint_checkpoints_newest", "stream_id", "checkpoint_id"),
)

interrupted_trials = sa.Table(
    "optuna_checkpoint_interrupted_trials",
    metadata,
    # Keyed by study too: SQLite reuses the trial ids of a deleted study.
    sa.Column("study_uid", sa.String(32), primary_key=True),
    sa.Column("trial_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("study_id", sa.Integer, nullable=False, index=True),
    sa.Column("trial_number", sa.Integer, nullable=False),
    sa.Column("logical_number", sa.Integer, nullable=False),
    sa.Column("reason", sa.String(255), nullable=False),
    sa.Column("stream_id", sa.Integer),
    # NULL only in rows of format 3 or earlier (see UNSEALED_ROWS_UNTIL).
    sa.Column("seal", sa.String(64)),
)

trial_claims = sa.Table(
    "optuna_checkpoint_trial_claims",
    metadata,
    # Keyed by study, like interruptions: SQLite reuses the trial ids of a deleted study.
    sa.Column("study_uid", sa.String(32), primary_key=True),
    sa.Column("trial_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("study_id", sa.Integer, nullable=False, index=True),
    sa.Column("stream_id", sa.Integer, nullable=False),
    # NULL only in rows of format 3 or earlier (see UNSEALED_ROWS_UNTIL).
    sa.Column("seal", sa.String(64)),
)

trial_states = sa.Table(
    "optuna_checkpoint_trial_states",
    metadata,
    # One row per logical trial of a study, replaced by each save (``trial_checkpoint``).
    sa.Column("study_uid", sa.String(32), primary_key=True),
    sa.Column("logical_trial", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("study_id", sa.Integer, nullable=False, index=True),
    # The attempt that saved it.
    sa.Column("trial_id", sa.Integer, nullable=False),
    sa.Column(
        "payload",
        sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"),
        nullable=False,
    ),
    sa.Column("checksum", sa.String(64), nullable=False),
)


# Optuna's own table of studies, named but never created or altered here (a separate MetaData).
optuna_studies = sa.Table("studies", sa.MetaData(), sa.Column("study_id", sa.Integer))
# Optuna's trial model, recognised by table name so that no private class is imported.
OPTUNA_TRIALS_TABLE = "trials"


def create_tables(engine: sa.Engine) -> bool:
    """Create the missing tables; return whether the checkpoints table was among them."""
    # One query finds the tables that exist, which is all of them after a study's start.
    existing = set(sa.inspect(engine).get_table_names())
    # Table by table: workers starting together race, and one that loses the race for the
    # first table must still create the others rather than assume the winner has already.
    for table in metadata.sorted_tables:
        if table.name in existing:
            continue
        try:
            table.create(engine, checkfirst=True)
        except (sa_exc.OperationalError, sa_exc.ProgrammingError, sa_exc.IntegrityError):
            # Another process created it between our check and our CREATE; fine if it exists.
            if not sa.inspect(engine).has_table(table.name):
                raise
    return checkpoints.name not in existing


def upgrade_tables(engine: sa.Engine, *, created: bool) -> None:
    """Bring the tables to :data:`TABLES_FORMAT`; refuse tables of a newer format.

    Args:
        engine: The engine of the database holding the tables.
        created: Whether this process has just created the checkpoints table, so that the
            tables are of the current format already.

    Raises:
        CheckpointError: The tables are of a newer format than this release reads.
    """
    version = _tables_format(engine)
    if version is None:
        # Format 1 had no format table. If another worker records it first, its guess wins;
        # a wrong guess of 1 only makes the (idempotent) upgrades run on current tables.
        guess = TABLES_FORMAT if created else 1
        try:
            with engine.begin() as connection:
                connection.execute(formats.insert().values(component=_TABLES, version=guess))
        except sa_exc.IntegrityError:
            pass
        version = _tables_format(engine)
    assert version is not None
    if version > TABLES_FORMAT:
        raise CheckpointError(
            f"the optuna-checkpoint tables in this database have format {version}, written "
            f"by a newer optuna-checkpoint; this release reads up to format {TABLES_FORMAT}. "
            "Upgrade optuna-checkpoint on every worker of the study."
        )
    while version < TABLES_FORMAT:
        _logger.info("Upgrading the optuna-checkpoint tables from format %d.", version)
        # Each step is idempotent, so workers upgrading at once may all run it; the format
        # is recorded only after the step (MySQL commits DDL at once, so not in one go).
        _UPGRADES[version](engine)
        with engine.begin() as connection:
            connection.execute(
                formats.update()
                .where(formats.c.component == _TABLES, formats.c.version == version)
                .values(version=version + 1)
            )
        version = _tables_format(engine) or version


def unsealed_rows_until(engine: sa.Engine) -> int:
    """The newest trial id whose interruption or claim may lack a seal (-1: none may)."""
    with engine.connect() as connection:
        found = connection.execute(
            sa.select(formats.c.version).where(formats.c.component == UNSEALED_ROWS_UNTIL)
        ).scalar()
    return -1 if found is None else int(found)


def _tables_format(engine: sa.Engine) -> int | None:
    with engine.connect() as connection:
        found = connection.execute(
            sa.select(formats.c.version).where(formats.c.component == _TABLES)
        ).scalar()
    return None if found is None else int(found)
