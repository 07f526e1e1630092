"""The SQL side-table store: checkpoints live in the study's own database, beside Optuna's tables.

The tables have their own ``MetaData`` and are created on first use, so Optuna's schema, its
alembic revision and ``optuna storage upgrade`` never see them. Their layout has a format version
of its own (:data:`TABLES_FORMAT`), recorded in a table beside them and upgraded in place. Reads
and separate writes use Optuna's engine. The per-trial checkpoint is not a separate write: it is
added, through SQLAlchemy's documented ``before_commit`` session event, to the transaction in
which Optuna stores the trial's final state, so the two are committed together or not at all and
the checkpoint costs one extra statement instead of one extra transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Sequence
from dataclasses import dataclass
import json
import logging
import random
import threading
import time
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar

from optuna.storages import RDBStorage
from optuna.trial import TrialState
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql

from optuna_checkpoint._faults import crash_point
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import CheckpointIncompleteError
from optuna_checkpoint.exceptions import StreamOwnedError
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import CheckpointStore
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._base import Owner
from optuna_checkpoint.stores._base import StoreRegistry
from optuna_checkpoint.stores._base import Stream
from optuna_checkpoint.stores._base import StreamSummary


if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from sqlalchemy.orm import Session


_logger = logging.getLogger(__name__)

_TRANSIENT_RETRIES = 5
_INITIAL_TRIAL_ID = -1  # the row holding the state from before the stream's first trial
_RELEASE_BUSY_TIMEOUT_MS = 200
_SQLITE_BUSY_TIMEOUT_MS = 5000  # pysqlite's default, which Optuna's engine uses
# Trial ids per DELETE statement: SQLite allows 32766 bound parameters per statement.
_DELETE_CHUNK = 10000
# Optuna's trial model, recognised by table name so that no private class is imported.
_OPTUNA_TRIALS_TABLE = "trials"

metadata = sa.MetaData()

TABLES_FORMAT = 2
"""The layout of the side tables. 1: releases 0.1 to 0.3, which had no format table. 2: this
format table, and the checkpoints' ``versions`` column."""


def _add_versions_column(engine: sa.Engine) -> None:
    """Format 1 to 2: add the checkpoints' ``versions`` column, unless it is there already."""
    column = checkpoints.c.versions

    def present() -> bool:
        return column.name in {c["name"] for c in sa.inspect(engine).get_columns(checkpoints.name)}

    if present():
        return
    ddl = f"ALTER TABLE {checkpoints.name} ADD COLUMN {column.name} "
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(ddl + column.type.compile(dialect=engine.dialect))
    except (sa_exc.OperationalError, sa_exc.ProgrammingError):
        # Another worker added it at the same moment.
        if column.name not in {
            c["name"] for c in sa.inspect(engine).get_columns(checkpoints.name)
        }:
            raise


# Upgrades of the tables, by the format they start from. Each only adds (tables, columns), so
# the rows of earlier releases stay readable, and each is idempotent.
_UPGRADES: dict[int, Callable[[sa.Engine], None]] = {1: _add_versions_column}

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
)

trial_claims = sa.Table(
    "optuna_checkpoint_trial_claims",
    metadata,
    # Keyed by study, like interruptions: SQLite reuses the trial ids of a deleted study.
    sa.Column("study_uid", sa.String(32), primary_key=True),
    sa.Column("trial_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("study_id", sa.Integer, nullable=False, index=True),
    sa.Column("stream_id", sa.Integer, nullable=False),
)


# Optuna's own table of studies, named but never created or altered here (a separate MetaData).
_optuna_studies = sa.Table("studies", sa.MetaData(), sa.Column("study_id", sa.Integer))

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
_INSERT_CLAIM = trial_claims.insert()
_COUNT_INTERRUPTIONS = (
    sa.select(sa.func.count())
    .select_from(interrupted_trials)
    .where(interrupted_trials.c.study_uid == sa.bindparam("study_uid"))
)
# Where the database has RETURNING (SQLite >= 3.35, PostgreSQL, MariaDB >= 10.5), the count
# comes back with the checkpoint's INSERT, saving the trial's commit a round trip.
_INSERT_IF_OWNER_COUNTING = _INSERT_IF_OWNER.returning(_COUNT_INTERRUPTIONS.scalar_subquery())


def resolve_rdb_storage(storage: BaseStorage) -> RDBStorage | None:
    """Return the :class:`RDBStorage` behind ``storage`` (unwrapping Optuna's cache), if any."""
    if isinstance(storage, RDBStorage):
        return storage
    # ``optuna.storages._CachedStorage`` keeps the RDB backend in ``_backend``; no public accessor.
    backend = getattr(storage, "_backend", None)
    return backend if isinstance(backend, RDBStorage) else None


def _is_transient(error: sa_exc.OperationalError) -> bool:
    """Whether the server asks for the transaction to be retried (deadlock, lock timeout)."""
    sqlstate = getattr(error.orig, "sqlstate", None)  # psycopg
    code = error.orig.args[0] if error.orig is not None and error.orig.args else None
    return sqlstate in ("40001", "40P01") or code in (1205, 1213)  # PG; MySQL/MariaDB


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _values_to_text(values: list[float] | None) -> str | None:
    return None if values is None else json.dumps([float(v).hex() for v in values])


def _values_from_text(text: str | None) -> list[float] | None:
    return None if text is None else [float.fromhex(v) for v in json.loads(text)]


def _owner_columns(owner: Owner | None) -> dict[str, Any]:
    if owner is None:
        return dict.fromkeys(
            ("owner_token", "owner_host", "owner_boot_id", "owner_pid", "owner_pid_start")
        )
    return {
        "owner_token": owner.token,
        "owner_host": owner.host,
        "owner_boot_id": owner.boot_id,
        "owner_pid": owner.pid,
        "owner_pid_start": owner.pid_start,
    }


def _checkpoint_row(stream_id: int, checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "stream_id": stream_id,
        "trial_id": _INITIAL_TRIAL_ID if checkpoint.trial_id is None else checkpoint.trial_id,
        "logical_number": checkpoint.logical_number,
        "trial_state": checkpoint.trial_state,
        "trial_values": _values_to_text(checkpoint.trial_values),
        "adapter": checkpoint.adapter,
        "payload": checkpoint.payload,
        "checksum": checkpoint.checksum,
        "versions": None if checkpoint.versions is None else _compact_json(checkpoint.versions),
    }


def _stream_from_row(row: sa.Row[Any]) -> Stream:
    owner = None
    if row.owner_token is not None:
        owner = Owner(
            token=row.owner_token,
            host=row.owner_host,
            boot_id=row.owner_boot_id,
            pid=row.owner_pid,
            pid_start=row.owner_pid_start,
        )
    return Stream(
        stream_id=row.stream_id,
        study_uid=row.study_uid,
        name=row.name,
        fingerprint=json.loads(row.fingerprint),
        owner=owner,
        heartbeat_at=row.heartbeat_at,
        first_trial_number=row.first_trial_number,
    )


@dataclass(frozen=True)
class _CreationClaimer:
    """Claims the trials this process creates in one study for one stream."""

    study_uid: str
    stream_id: int


@dataclass
class _DeferredSave:
    stream_id: int
    study_uid: str
    token: str
    checkpoint: Checkpoint | None


class _TrialCommitHook:
    """Adds claims and deferred checkpoints to the transactions Optuna commits anyway.

    One per :class:`RDBStorage`, listening on Optuna's ``scoped_session`` with SQLAlchemy's
    documented session events, so it sees every commit Optuna makes through that storage:

    * a trial created RUNNING in a study this process works on for a stream is claimed for that
      stream in the transaction that creates it, so it is never unclaimed while its process
      lives;
    * a trial turning finished gets its deferred checkpoint in the transaction that stores its
      end.
    """

    _NEW_TRIALS = "optuna_checkpoint_new_trials"  # key in ``Session.info``

    def __init__(self, rdb: RDBStorage) -> None:
        self._deferred: dict[int, _DeferredSave] = {}
        self._claimers: dict[int, _CreationClaimer] = {}  # by study id
        self._claimed_at_creation: dict[int, int] = {}  # trial id -> stream id
        self._lock = threading.Lock()
        # Interruptions per study as counted in the latest checkpoint's transaction: lets the
        # owner notice, at no extra round trip, a trial that another process closed as refused.
        self.interruption_counts: dict[str, int] = {}
        event.listen(rdb.scoped_session, "pending_to_persistent", self._on_inserted)
        event.listen(rdb.scoped_session, "after_soft_rollback", self._on_rollback)
        event.listen(rdb.scoped_session, "before_commit", self._before_commit)

    def defer(self, trial_id: int, save: _DeferredSave) -> None:
        with self._lock:
            self._deferred[trial_id] = save

    def pending(self) -> set[int]:
        with self._lock:
            return set(self._deferred)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._deferred.pop(trial_id, None)

    def claim_new_trials(self, study_id: int, claimer: _CreationClaimer | None) -> None:
        with self._lock:
            if claimer is None:
                self._claimers.pop(study_id, None)
            else:
                self._claimers[study_id] = claimer

    def stop_claiming_for(self, stream_id: int) -> None:
        with self._lock:
            for study_id, claimer in list(self._claimers.items()):
                if claimer.stream_id == stream_id:
                    del self._claimers[study_id]

    def take_creation_claim(self, trial_id: int) -> int | None:
        """The stream the trial was claimed for when it was created here, asked once."""
        with self._lock:
            return self._claimed_at_creation.pop(trial_id, None)

    def _on_inserted(self, session: Session, instance: object) -> None:
        if self._claimers and getattr(instance, "__tablename__", None) == _OPTUNA_TRIALS_TABLE:
            session.info.setdefault(self._NEW_TRIALS, []).append(instance)

    def _on_rollback(self, session: Session, previous_transaction: object) -> None:
        session.info.pop(self._NEW_TRIALS, None)

    def _before_commit(self, session: Session) -> None:
        created = session.info.pop(self._NEW_TRIALS, None)
        if created:
            self._claim_created(session, created)
        if not self._deferred:
            return
        for trial_id in self._finishing_trials(session):
            with self._lock:
                save = self._deferred.pop(trial_id, None)
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
                **_checkpoint_row(save.stream_id, save.checkpoint),
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
                }
            )
        if not rows:
            return
        # One row (the usual case) as a plain execute: an executemany costs more per statement.
        session.connection().execute(_INSERT_CLAIM, rows[0] if len(rows) == 1 else rows)
        with self._lock:
            for row in rows:
                self._claimed_at_creation[int(row["trial_id"])] = int(row["stream_id"])

    def _finishing_trials(self, session: Session) -> list[int]:
        # Optuna loads the trial row ``for_update`` and sets its state before committing; find
        # those rows in the session rather than importing Optuna's private model class.
        found = []
        for obj in list(session.identity_map.values()):
            if getattr(obj, "__tablename__", None) != _OPTUNA_TRIALS_TABLE:
                continue
            state = getattr(obj, "state", None)
            if isinstance(state, TrialState) and state.is_finished():
                found.append(int(getattr(obj, "trial_id")))  # noqa: B009 - untyped ORM row
        return found


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
        self._upgrade_tables(created=self._create_tables())
        self._hook = _TrialCommitHook(rdb)

    @classmethod
    def for_storage(cls, rdb: RDBStorage) -> SQLCheckpointStore:
        """Return the store for ``rdb``, creating its tables on first use."""
        return cls._registry.get(rdb, lambda: cls(rdb))

    def __repr__(self) -> str:
        return f"SQLCheckpointStore(RDBStorage({self._url!r}))"

    def _create_tables(self) -> bool:
        """Create the missing tables; return whether the checkpoints table was among them."""
        # One query finds the tables that exist, which is all of them after a study's start.
        existing = set(sa.inspect(self._engine).get_table_names())
        # Table by table: workers starting together race, and one that loses the race for the
        # first table must still create the others rather than assume the winner has already.
        for table in metadata.sorted_tables:
            if table.name in existing:
                continue
            try:
                table.create(self._engine, checkfirst=True)
            except (sa_exc.OperationalError, sa_exc.ProgrammingError, sa_exc.IntegrityError):
                # Another process created it between our check and our CREATE; fine if it exists.
                if not sa.inspect(self._engine).has_table(table.name):
                    raise
        return checkpoints.name not in existing

    def _upgrade_tables(self, *, created: bool) -> None:
        """Bring the tables to :data:`TABLES_FORMAT`; refuse tables of a newer format.

        Args:
            created: Whether this process has just created the checkpoints table, so that the
                tables are of the current format already.
        """
        version = self._tables_format()
        if version is None:
            # Format 1 had no format table. If another worker records it first, its guess wins;
            # a wrong guess of 1 only makes the (idempotent) upgrades run on current tables.
            guess = TABLES_FORMAT if created else 1
            try:
                with self._engine.begin() as connection:
                    connection.execute(formats.insert().values(component=_TABLES, version=guess))
            except sa_exc.IntegrityError:
                pass
            version = self._tables_format()
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
            _UPGRADES[version](self._engine)
            with self._engine.begin() as connection:
                connection.execute(
                    formats.update()
                    .where(formats.c.component == _TABLES, formats.c.version == version)
                    .values(version=version + 1)
                )
            version = self._tables_format() or version

    def _tables_format(self) -> int | None:
        with self._engine.connect() as connection:
            found = connection.execute(
                sa.select(formats.c.version).where(formats.c.component == _TABLES)
            ).scalar()
        return None if found is None else int(found)

    def find_stream(self, study_uid: str, name: str) -> Stream | None:
        """Return the stream, or ``None``."""
        with self._engine.connect() as connection:
            row = connection.execute(
                streams.select().where(streams.c.study_uid == study_uid, streams.c.name == name)
            ).first()
        return None if row is None else _stream_from_row(row)

    def list_streams(self, study_uid: str) -> list[Stream]:
        """Return the study's streams in creation order."""
        with self._engine.connect() as connection:
            rows = connection.execute(
                streams.select()
                .where(streams.c.study_uid == study_uid)
                .order_by(streams.c.stream_id)
            ).all()
        return [_stream_from_row(row) for row in rows]

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
        self._remove_rows_of_deleted_studies(study_id, study_uid)
        values = {
            "study_id": study_id,
            "study_uid": study_uid,
            "name": name,
            "fingerprint": json.dumps(fingerprint, sort_keys=True),
            "heartbeat_at": time.time(),
            "first_trial_number": first_trial_number,
            **_owner_columns(owner),
        }

        def insert(connection: sa.Connection) -> None:
            key = connection.execute(streams.insert().values(values)).inserted_primary_key
            assert key is not None
            connection.execute(checkpoints.insert().values(_checkpoint_row(key[0], initial)))

        try:
            self._transaction_with_retries(insert)
        except sa_exc.IntegrityError:
            return None  # another process created the stream first
        return self.find_stream(study_uid, name)

    def _transaction_with_retries(self, work: Callable[[sa.Connection], None]) -> None:
        # Workers starting together make MySQL/MariaDB and PostgreSQL report deadlocks on
        # concurrent inserts into the same index range; the server's advice is to retry.
        for attempt in range(_TRANSIENT_RETRIES + 1):
            try:
                with self._engine.begin() as connection:
                    work(connection)
                return
            except sa_exc.OperationalError as e:
                if attempt == _TRANSIENT_RETRIES or not _is_transient(e):
                    raise
                time.sleep(random.uniform(0.01, 0.1) * (attempt + 1))

    def _remove_rows_of_deleted_studies(self, study_id: int, study_uid: str) -> None:
        """Remove the rows of studies that ``optuna.delete_study`` deleted.

        Our tables have no foreign key into Optuna's schema, so that Optuna's migrations and
        ``delete_study`` never trip over them; rows of deleted studies are removed here instead,
        whenever a stream is created. That includes a study deleted and recreated under the
        same id (SQLite reuses ids), recognised by its other ``study_uid``. Optuna's ``studies``
        table is only read. Nothing is locked unless there is something to remove.
        """
        live = sa.select(_optuna_studies.c.study_id)

        def stale(table: sa.Table) -> sa.ColumnElement[bool]:
            return sa.or_(
                sa.and_(table.c.study_id == study_id, table.c.study_uid != study_uid),
                table.c.study_id.not_in(live),
            )

        tables = (streams, interrupted_trials, trial_claims)
        with self._engine.connect() as connection:
            stale_streams = list(
                connection.execute(sa.select(streams.c.stream_id).where(stale(streams))).scalars()
            )
            if not stale_streams and not any(
                connection.execute(sa.select(t.c.study_id).where(stale(t)).limit(1)).first()
                for t in tables[1:]
            ):
                return

        def remove(connection: sa.Connection) -> None:
            # SQLite does not enforce the foreign key's cascade, so children go first.
            connection.execute(
                checkpoints.delete().where(checkpoints.c.stream_id.in_(stale_streams))
            )
            connection.execute(streams.delete().where(streams.c.stream_id.in_(stale_streams)))
            for table in tables[1:]:
                connection.execute(table.delete().where(stale(table)))

        self._transaction_with_retries(remove)

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
                .where(self._owned_by(stream.owner))
                .values(
                    fingerprint=json.dumps(fingerprint, sort_keys=True),
                    first_trial_number=first_trial_number,
                    heartbeat_at=time.time(),
                    **_owner_columns(owner),
                )
            )
            if claimed.rowcount != 1:
                return None
            connection.execute(
                checkpoints.delete().where(checkpoints.c.stream_id == stream.stream_id)
            )
            connection.execute(
                checkpoints.insert().values(_checkpoint_row(stream.stream_id, initial))
            )
        return self.find_stream(stream.study_uid, stream.name)

    @staticmethod
    def _owned_by(owner: Owner | None) -> sa.ColumnElement[bool]:
        if owner is None:
            return streams.c.owner_token.is_(None)
        return streams.c.owner_token == owner.token

    def take_over(self, stream: Stream, owner: Owner, now: float) -> bool:
        """Compare-and-swap the stream's owner."""
        with self._engine.begin() as connection:
            result = connection.execute(
                streams.update()
                .where(streams.c.stream_id == stream.stream_id)
                .where(self._owned_by(stream.owner))
                .values(heartbeat_at=now, **_owner_columns(owner))
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
        with self._engine.begin() as connection:
            if connection.dialect.name == "sqlite":
                # A statement cut short by Ctrl-C can hold SQLite's lock until exit; rather than
                # the default five seconds, give up quickly: the lease then simply lapses.
                connection.exec_driver_sql(f"PRAGMA busy_timeout = {_RELEASE_BUSY_TIMEOUT_MS}")
            try:
                connection.execute(
                    streams.update()
                    .where(streams.c.stream_id == stream_id, streams.c.owner_token == token)
                    .values(**_owner_columns(None))
                )
            finally:
                if connection.dialect.name == "sqlite":
                    connection.exec_driver_sql(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")

    def save(self, stream: Stream, checkpoint: Checkpoint, token: str, now: float) -> None:
        """Save a checkpoint in its own transaction, replacing one of the same trial."""
        row = _checkpoint_row(stream.stream_id, checkpoint)
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
            return self._latest_checkpoints(connection, stream_id, excluding, limit)

    def where_interrupted(self, study_uid: str) -> list[Interruption]:
        """Return the study's interrupted trials in trial-number order."""
        with self._engine.connect() as connection:
            return self._where_interrupted(connection, study_uid)

    def resume_point(
        self, study_uid: str, stream_id: int, *, limit: int
    ) -> tuple[list[Interruption], list[Checkpoint]]:
        """Read the interruptions and the newest checkpoints on one connection."""
        with self._engine.connect() as connection:
            known = self._where_interrupted(connection, study_uid)
            excluding = {i.trial_id for i in known}
            return known, self._latest_checkpoints(connection, stream_id, excluding, limit)

    @staticmethod
    def _latest_checkpoints(
        connection: sa.Connection, stream_id: int, excluding: Collection[int], limit: int
    ) -> list[Checkpoint]:
        query = checkpoints.select().where(checkpoints.c.stream_id == stream_id)
        if excluding:
            query = query.where(checkpoints.c.trial_id.not_in(list(excluding)))
        query = query.order_by(checkpoints.c.checkpoint_id.desc()).limit(limit)
        return [
            Checkpoint(
                trial_id=None if row.trial_id == _INITIAL_TRIAL_ID else row.trial_id,
                logical_number=row.logical_number,
                trial_state=row.trial_state,
                trial_values=_values_from_text(row.trial_values),
                adapter=row.adapter,
                payload=bytes(row.payload),
                checksum=row.checksum,
                versions=None if row.versions is None else json.loads(row.versions),
            )
            for row in connection.execute(query)
        ]

    @staticmethod
    def _where_interrupted(connection: sa.Connection, study_uid: str) -> list[Interruption]:
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
            )
            for r in rows
        ]

    def stream_summary(self, stream_id: int) -> StreamSummary:
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
        with self._engine.connect() as connection:
            row = connection.execute(query).one()
        trial_id = None if row.trial_id in (None, _INITIAL_TRIAL_ID) else int(row.trial_id)
        return StreamSummary(
            checkpoints=int(row.n),
            # int(): MySQL sums integers into a DECIMAL.
            payload_bytes=int(row.size),
            newest_trial_id=trial_id,
            newest_logical_number=None if row.logical_number is None else int(row.logical_number),
        )

    def delete_checkpoints(self, stream_id: int, trial_ids: Collection[int]) -> int:
        """Delete the trials' checkpoints in one transaction (the initial row is never named)."""
        ids = sorted({int(t) for t in trial_ids} - {_INITIAL_TRIAL_ID})
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
            self._transaction_with_retries(delete)
        return deleted

    def add_interruptions(
        self, study_id: int, study_uid: str, interruptions: Sequence[Interruption]
    ) -> None:
        """Record interrupted trials; known ones are skipped."""
        if not interruptions:
            return
        with self._engine.begin() as connection:
            known = set(
                connection.execute(
                    sa.select(interrupted_trials.c.trial_id).where(
                        interrupted_trials.c.study_uid == study_uid,
                        interrupted_trials.c.trial_id.in_([i.trial_id for i in interruptions]),
                    )
                ).scalars()
            )
            rows = [
                {
                    "trial_id": i.trial_id,
                    "study_uid": study_uid,
                    "study_id": study_id,
                    "trial_number": i.trial_number,
                    "logical_number": i.logical_number,
                    "reason": i.reason[:255],
                    "stream_id": i.stream_id,
                }
                for i in interruptions
                if i.trial_id not in known
            ]
            if rows:
                connection.execute(interrupted_trials.insert(), rows)

    def defer_save_to_trial_commit(
        self, stream: Stream, trial_id: int, checkpoint: Checkpoint | None, token: str
    ) -> None:
        """Add the checkpoint to the transaction that stores the trial's final state."""
        self._hook.defer(
            trial_id, _DeferredSave(stream.stream_id, stream.study_uid, token, checkpoint)
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

    def claim_trial(self, stream: Stream, study_id: int, trial_id: int) -> bool:
        """Claim the trial for the stream, unless another stream has it."""
        if self._hook.take_creation_claim(trial_id) == stream.stream_id:
            return True  # claimed in the transaction that created it
        row = {
            "study_uid": stream.study_uid,
            "trial_id": trial_id,
            "study_id": study_id,
            "stream_id": stream.stream_id,
        }
        try:
            with self._engine.begin() as connection:
                connection.execute(_INSERT_CLAIM, row)
            return True
        except sa_exc.IntegrityError:
            pass  # claimed before: by this stream (a retried call) or by another
        return self.claims(stream.study_uid, [trial_id]).get(trial_id) == stream.stream_id

    def claims(self, study_uid: str, trial_ids: Collection[int]) -> dict[int, int]:
        """Return the claiming stream of each claimed trial among ``trial_ids``."""
        if not trial_ids:
            return {}
        with self._engine.connect() as connection:
            rows = connection.execute(
                sa.select(trial_claims.c.trial_id, trial_claims.c.stream_id).where(
                    trial_claims.c.study_uid == study_uid,
                    trial_claims.c.trial_id.in_(list(trial_ids)),
                )
            ).all()
        return {row.trial_id: row.stream_id for row in rows}

    def claim_trials_at_creation(self, stream: Stream, study_id: int) -> None:
        """Claim the study's trials created by this process from now on, as they are created."""
        self._hook.claim_new_trials(study_id, _CreationClaimer(stream.study_uid, stream.stream_id))
