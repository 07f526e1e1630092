"""What a storage's checkpoints look like, for tools: the data behind ``optuna-checkpoint``.

Everything here returns plain dataclasses, so the command-line tool only renders them and Python
code can call the same functions. Reading never writes: a database without optuna-checkpoint's
tables, or a journal without its side record, is reported as having no checkpoints rather than
given empty ones.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
import datetime
import itertools
import os
import time

import optuna
from optuna.storages import BaseStorage
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from optuna_checkpoint.attach._lease import current_owner
from optuna_checkpoint.attach._lease import judge_lease
from optuna_checkpoint.attach._lease import lease_timing
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import StudyNotFoundError
from optuna_checkpoint.record._retention import Retention
from optuna_checkpoint.record._retention import prune_stream
from optuna_checkpoint.resume._evidence import claiming_streams
from optuna_checkpoint.resume._evidence import describe_missing
from optuna_checkpoint.resume._evidence import finished_without_checkpoint
from optuna_checkpoint.state._rows import SealedRows
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.stores._base import CheckpointStore
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._base import Stream
from optuna_checkpoint.stores._base import StreamSummary
from optuna_checkpoint.stores._open import existing_store
from optuna_checkpoint.study._identity import study_uid
from optuna_checkpoint.tools._retries import retries_due


_SQLITE_MAGIC = b"SQLite format 3\x00"
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class StudySummary:
    """One study of a storage, in a line.

    Attributes:
        study_name: The study's name.
        trials: How many trials it has, in any state.
        streams: How many checkpoint streams (workers) it has.
        checkpoints: How many checkpoints its streams hold in all.
        payload_bytes: Their payloads' total size.
    """

    study_name: str
    trials: int
    streams: int
    checkpoints: int
    payload_bytes: int


@dataclass(frozen=True)
class StreamStatus:
    """One checkpoint stream of a study.

    Attributes:
        name: The worker id that writes it (``main``, ``worker-1``...).
        owner_host: The host of the process holding its lease; ``None`` when released.
        owner_pid: That process's pid; ``None`` when released.
        lease_alive: Whether a live process holds the lease (a worker runs it now).
        lease: Why the lease is judged so, in words.
        heartbeat_age: Seconds since the lease was last refreshed.
        first_trial_number: The number of the first trial the stream ran.
        checkpoints: How many checkpoints it holds, the initial one included.
        payload_bytes: Their payloads' total size.
        newest_trial_number: The trial of its newest checkpoint; ``None`` when that is the
            initial one (or there is none).
        newest_logical_number: That trial's number in the uninterrupted run (``-1`` for the
            initial checkpoint; ``None`` when there is none).
    """

    name: str
    owner_host: str | None
    owner_pid: int | None
    lease_alive: bool
    lease: str
    heartbeat_age: float
    first_trial_number: int
    checkpoints: int
    payload_bytes: int
    newest_trial_number: int | None
    newest_logical_number: int | None


@dataclass(frozen=True)
class SavedTrialState:
    """A state an objective saved with ``trial_checkpoint``, as ``status`` lists it.

    Attributes:
        logical_trial: The logical trial it belongs to.
        saved_by: The number of the trial (attempt) that saved it.
        payload_bytes: Its size in the study's storage (a reference only, for a state kept in
            an artifact store).
        kept_for: Why it is still there: ``"running"`` (its trial runs), ``"retry"`` (its
            trial was cut off: the retry loads it) or ``"kept"`` (its trial finished, and the
            sampler keeps states, ``keep_trial_checkpoints=True``).
    """

    logical_trial: int
    saved_by: int
    payload_bytes: int
    kept_for: str


@dataclass(frozen=True)
class InterruptedTrial:
    """A trial whose process died; it is hidden from the sampler and retried.

    Attributes:
        number: Its trial number (as Optuna stores it).
        logical_number: Its logical trial: its number in the uninterrupted run, which its
            retry takes.
        reason: Why it was taken for interrupted.
        stream: The stream that retries it; ``None`` for a trial no stream ran (or, among the
            retries still to come, one that whichever idle stream resumes first adopts).
    """

    number: int
    logical_number: int
    reason: str
    stream: str | None


@dataclass(frozen=True)
class StudyStatus:
    """A study's checkpoints in detail, and whether a resume would be bit-identical.

    Attributes:
        study_name: The study's name.
        trials: How many trials it has, in any state.
        streams: Its checkpoint streams, in the order they were created.
        interrupted: Its interrupted trials, by trial number, as recorded by the resumes.
        to_retry: The trials the next run will retry, which no resume has recorded yet: left
            RUNNING (or failed) by a process that is gone; by trial number.
        resume_exact: Whether nothing checked stands in the way of a bit-identical resume
            (see :func:`study_status` for what is checked); ``reasons`` is then empty.
        reasons: What stands in the way, one sentence each.
        checkpointed_from: The first trial any stream ran: the trials before it ran without
            optuna-checkpoint, and the guarantee holds from it on (0 for a study that began
            with it; ``None`` without streams).
        trial_states: The states objectives saved with ``trial_checkpoint``, by logical trial.
    """

    study_name: str
    trials: int
    streams: list[StreamStatus]
    interrupted: list[InterruptedTrial]
    to_retry: list[InterruptedTrial]
    resume_exact: bool
    reasons: list[str]
    checkpointed_from: int | None = None
    trial_states: list[SavedTrialState] = field(default_factory=list)


@dataclass(frozen=True)
class StreamPruning:
    """What pruning did to one stream.

    Attributes:
        name: The stream's name.
        checkpoints: How many checkpoints it held before.
        deleted: How many were deleted (or, in a dry run, would be).
    """

    name: str
    checkpoints: int
    deleted: int


@dataclass(frozen=True)
class PruneReport:
    """What pruning did to a study.

    Attributes:
        study_name: The study's name.
        dry_run: Whether nothing was actually deleted.
        streams: One entry per stream.
    """

    study_name: str
    dry_run: bool
    streams: list[StreamPruning]

    @property
    def deleted(self) -> int:
        """Checkpoints deleted in all (or that would be, in a dry run)."""
        return sum(s.deleted for s in self.streams)


def open_storage(location: str, *, create: bool = False) -> BaseStorage:
    """Open a storage the way ``optuna-checkpoint --storage`` does.

    A database URL opens as Optuna's own command-line tool opens it; an existing file path
    (no ``://``) opens as a :class:`~optuna.storages.journal.JournalFileBackend` journal.

    Args:
        location: The URL or journal path.
        create: Create a missing SQLite file, for a storage about to be written (a fork's
            destination). Without it such a file is refused: a command that only reads would
            otherwise leave an empty database behind a mistyped path.

    Raises:
        ValueError: ``location`` is neither, names an SQLite file that does not exist (unless
            ``create``), or one in a directory that does not exist.
    """
    if "://" not in location:
        if not os.path.isfile(location):
            raise ValueError(
                f"{location!r} is neither a database URL (such as sqlite:///study.db) nor an "
                "existing journal file"
            )
        with open(location, "rb") as f:
            if f.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC:
                raise ValueError(
                    f"{location!r} is an SQLite database, not a journal file: pass "
                    f"sqlite:///{location}"
                )
        return JournalStorage(JournalFileBackend(location))
    try:
        url = sa.make_url(location)
    except sa_exc.ArgumentError as e:
        raise ValueError(f"{location!r} is not a database URL: {e}") from e
    database = url.database
    if (
        url.get_backend_name() == "sqlite"
        and database
        and database != ":memory:"
        and not os.path.exists(database)
    ):
        if not create:
            raise ValueError(f"there is no SQLite database at {database!r}")
        directory = os.path.dirname(os.path.abspath(database))
        if not os.path.isdir(directory):
            raise ValueError(
                f"cannot create the SQLite database {database!r}: there is no directory "
                f"{directory!r}; create it first"
            )
    return optuna.storages.get_storage(location)


@dataclass(frozen=True)
class _Opened:
    study_name: str
    study_id: int
    trials: list[FrozenTrial]
    uid: str | None  # None: the study has no trial, so no stream either
    store: CheckpointStore | None

    def streams(self) -> list[Stream]:
        if self.uid is None or self.store is None:
            return []
        return self.store.list_streams(self.uid)


def _open_study(storage: BaseStorage, study_name: str) -> _Opened:
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        names = sorted(s.study_name for s in storage.get_all_studies())
        shown = ", ".join(repr(n) for n in names[:10]) + (", ..." if len(names) > 10 else "")
        raise StudyNotFoundError(
            f"the storage has no study named {study_name!r}; its studies are: {shown or 'none'}."
        ) from None
    trials = sorted(storage.get_all_trials(study_id, deepcopy=False), key=lambda t: t.number)
    store = existing_store(storage)
    uid = None
    if trials and trials[0].number == 0:
        uid = study_uid(study_id, study_name, trials[0])
        if store is not None:
            store.open_study(study_id, uid)
    return _Opened(study_name, study_id, trials, uid, store)


def list_studies(storage: BaseStorage) -> list[StudySummary]:
    """Summarise every study of ``storage``: trials, streams, checkpoints and their size."""
    store = existing_store(storage)
    found = []
    for study in storage.get_all_studies():
        study_id = study._study_id
        n_trials = storage.get_n_trials(study_id)
        summaries: list[StreamSummary] = []
        if store is not None and n_trials:
            first = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, 0))
            uid = study_uid(study_id, study.study_name, first)
            store.open_study(study_id, uid)
            summaries = [store.stream_summary(s.stream_id) for s in store.list_streams(uid)]
        found.append(
            StudySummary(
                study_name=study.study_name,
                trials=n_trials,
                streams=len(summaries),
                checkpoints=sum(s.checkpoints for s in summaries),
                payload_bytes=sum(s.payload_bytes for s in summaries),
            )
        )
    return found


def study_status(storage: BaseStorage, study_name: str) -> StudyStatus:
    """Describe a study's checkpoint streams and interrupted trials, and judge its resume.

    Reads only. The interrupted trials are those the resumes recorded, and those the next run
    will find and retry (:func:`~optuna_checkpoint.tools._retries.retries_due`), each with the
    logical trial its retry takes.

    ``resume_exact`` is ``False`` when one of these holds, each given in ``reasons``:

    * the study has trials but no checkpoint stream (it was not run with
      ``CheckpointingSampler``, or its checkpoints were deleted);
    * it has several streams: each worker resumes its own exactly, but which worker ran which
      trial depended on timing, so the study as a whole has no single trajectory;
    * a stream has no checkpoint at all;
    * a trial a stream claimed finished COMPLETE or PRUNED after the stream's newest checkpoint
      and has none of its own (its result was told by another process, or the checkpoint was
      deleted): a resume would restore a state from before it;
    * trials of one stream ran at the same time (``n_jobs > 1``, or several asks before a
      tell), whose interleaving differs from run to run;
    * a finished trial, numbered after checkpointing began, was claimed by no stream: a
      process without ``CheckpointingSampler`` ran it, and a resumed run will not;
    * a stream's newest checkpoint names a trial the study does not have (the row was altered,
      or copied from another study), which a resume refuses.

    Not checked here: the checkpoints' payloads and checksums and the seals of the records of
    interrupted and claimed trials, that the sampler is configured as before (the resume itself
    checks all of these), and that the objective is deterministic
    (:func:`~optuna_checkpoint.audit_determinism`).

    Raises:
        StudyNotFoundError: The storage has no study of that name.
    """
    opened = _open_study(storage, study_name)
    streams = opened.streams()
    store = opened.store
    interruptions: list[Interruption] = []
    summaries: list[StreamSummary] = []
    if store is not None and opened.uid is not None:
        interruptions = store.where_interrupted(opened.uid)
        summaries = [store.stream_summary(s.stream_id) for s in streams]
    by_id = {t._trial_id: t for t in opened.trials}
    names = {s.stream_id: s.name for s in streams}

    now = time.time()
    me = current_owner()
    grace_period, _ = lease_timing(storage, None, None)
    described = []
    idle: dict[int, str] = {}  # stream id -> why no live process holds it
    for stream, summary in zip(streams, summaries, strict=True):
        verdict = judge_lease(stream.owner, stream.heartbeat_at, now, me, grace_period)
        if verdict.may_take_over:
            idle[stream.stream_id] = verdict.reason
        newest_id = summary.newest_trial_id
        newest = None if newest_id is None else by_id.get(newest_id)
        described.append(
            StreamStatus(
                name=stream.name,
                owner_host=None if stream.owner is None else stream.owner.host,
                owner_pid=None if stream.owner is None else stream.owner.pid,
                lease_alive=stream.owner is not None and not verdict.may_take_over,
                lease=verdict.reason,
                heartbeat_age=max(0.0, now - stream.heartbeat_at),
                first_trial_number=stream.first_trial_number,
                checkpoints=summary.checkpoints,
                payload_bytes=summary.payload_bytes,
                newest_trial_number=None if newest is None else newest.number,
                newest_logical_number=summary.newest_logical_number,
            )
        )
    reasons = _obstacles(opened, streams, described, interruptions)
    reasons.extend(
        f"the newest checkpoint of stream {stream.name!r} names trial id "
        f"{summary.newest_trial_id}, which is not a trial of this study: the row was altered, "
        "or copied from another study, and a resume will refuse it"
        for stream, summary in zip(streams, summaries, strict=True)
        if summary.newest_trial_id is not None and summary.newest_trial_id not in by_id
    )
    due: list[Interruption] = []
    if store is not None and opened.uid is not None:
        moment = datetime.datetime.fromtimestamp(now)  # Optuna's datetimes are naive local
        due = retries_due(store, opened.uid, opened.trials, streams, idle, interruptions, moment)

    def listed(i: Interruption) -> InterruptedTrial:
        stream = None if i.stream_id is None else names.get(i.stream_id)
        return InterruptedTrial(i.trial_number, i.logical_number, i.reason, stream)

    return StudyStatus(
        study_name=study_name,
        trials=len(opened.trials),
        streams=described,
        interrupted=[listed(i) for i in interruptions],
        to_retry=[listed(i) for i in due],
        resume_exact=not reasons,
        checkpointed_from=min((s.first_trial_number for s in streams), default=None),
        reasons=reasons,
        trial_states=_saved_trial_states(opened, by_id, {i.trial_id for i in due}),
    )


def _saved_trial_states(
    opened: _Opened, by_id: dict[int, FrozenTrial], due: set[int]
) -> list[SavedTrialState]:
    if opened.store is None or opened.uid is None:
        return []
    listed = []
    for saved in opened.store.list_trial_states(opened.uid):
        trial = by_id.get(saved.trial_id)
        if trial is None:
            continue  # left by a trial that is no longer in the study
        if trial.state == TrialState.RUNNING and trial._trial_id not in due:
            kept_for = "running"
        elif trial.state in (TrialState.RUNNING, TrialState.FAIL):
            kept_for = "retry"
        else:
            kept_for = "kept"
        listed.append(
            SavedTrialState(saved.logical_trial, trial.number, saved.payload_bytes, kept_for)
        )
    return listed


def _obstacles(
    opened: _Opened,
    streams: Sequence[Stream],
    described: Sequence[StreamStatus],
    interruptions: Sequence[Interruption],
) -> list[str]:
    """Why a resume of the study would not be bit-identical (the list in :func:`study_status`)."""
    if not opened.trials:
        return []  # nothing ran yet: a run from here is a first run
    if not streams:
        return [
            "the study has trials but no checkpoint stream: it was not run with "
            "CheckpointingSampler, or its checkpoints were deleted"
        ]
    store, uid = opened.store, opened.uid
    assert store is not None and uid is not None
    reasons = []
    if len(streams) > 1:
        reasons.append(
            f"{len(streams)} checkpoint streams ({', '.join(s.name for s in streams)}): each "
            "worker resumes its own exactly, but which worker ran which trial depended on "
            "timing, so the study as a whole has no single trajectory to reproduce"
        )
    hidden = {i.trial_id for i in interruptions}
    start = min(s.first_trial_number for s in streams)
    finished = [
        t
        for t in opened.trials
        if t.state in _FINISHED and t.number >= start and t._trial_id not in hidden
    ]
    claims = claiming_streams(store, uid, finished)
    for stream, status in zip(streams, described, strict=True):
        if status.checkpoints == 0:
            reasons.append(
                f"stream {stream.name!r} has no checkpoint, not even its initial one: a resume "
                "of it cannot start"
            )
            continue
        own = [t for t in finished if claims.get(t._trial_id) == stream.stream_id]
        reasons.extend(_missing_checkpoints(store, stream, status, own, hidden))
        if _overlapping(own):
            reasons.append(
                f"trials of stream {stream.name!r} ran at the same time (n_jobs > 1, or "
                "several asks before a tell): their interleaving differs from run to run"
            )
    unclaimed = [t.number for t in finished if t._trial_id not in claims]
    if unclaimed:
        reasons.append(
            f"{_numbers(unclaimed)} finished without being claimed by any checkpoint stream: "
            "a process without CheckpointingSampler ran them, and a resumed run will not"
        )
    return reasons


def _missing_checkpoints(
    store: CheckpointStore,
    stream: Stream,
    status: StreamStatus,
    trials: Sequence[FrozenTrial],
    hidden: set[int],
) -> list[str]:
    """A trial of the stream finished after its newest checkpoint, without one of its own."""
    newest = -1 if status.newest_trial_number is None else status.newest_trial_number
    missing = finished_without_checkpoint(store, stream, trials, newest, hidden)
    if not missing:
        return []
    return [
        f"{describe_missing(stream.name, missing, newest)}; the next run refuses to resume "
        "the stream"
    ]


def _overlapping(trials: Sequence[FrozenTrial]) -> bool:
    spans = sorted(
        (t.datetime_start, t.datetime_complete)
        for t in trials
        if t.datetime_start is not None and t.datetime_complete is not None
    )
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))


def _numbers(numbers: Sequence[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:8])
    if len(numbers) > 8:
        shown += f", ... ({len(numbers)} in all)"
    return f"trial{'s' if len(numbers) > 1 else ''} {shown}"


def prune_study(
    storage: BaseStorage,
    study_name: str,
    retention: Retention,
    *,
    dry_run: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    signing_key: str | bytes | None = None,
) -> PruneReport:
    """Delete the checkpoints ``retention`` does not keep, from every stream of the study.

    Safe while workers run (see :func:`~optuna_checkpoint.record._retention.prune_stream`).

    Args:
        storage: The study's storage.
        study_name: The study.
        retention: What to keep.
        dry_run: Count what would be deleted, and delete nothing.
        on_progress: Called with how many streams are done and how many there are: once
            before the first, then after each one.
        signing_key: The key the study's rows are signed with, as for
            :class:`~optuna_checkpoint.CheckpointingSampler`; defaults to the environment
            variable ``OPTUNA_CHECKPOINT_SIGNING_KEY``.

    Raises:
        StudyNotFoundError: The storage has no study of that name.
        CheckpointError: The storage cannot delete checkpoints (a journal file).
        CorruptCheckpointError: A record of an interrupted trial fails its seal.
    """
    opened = _open_study(storage, study_name)
    store = opened.store
    streams = opened.streams()
    if store is not None and streams and store.deletion_unsupported is not None:
        raise CheckpointError(store.deletion_unsupported)
    done: list[StreamPruning] = []
    if on_progress is not None:
        on_progress(0, len(streams))
    for stream in streams:
        assert store is not None and opened.uid is not None
        rows = SealedRows(store, opened.uid, Sealer.from_option(signing_key))
        before = store.stream_summary(stream.stream_id).checkpoints
        deleted = prune_stream(rows, stream, retention, dry_run=dry_run)
        done.append(StreamPruning(stream.name, before, deleted))
        if on_progress is not None:
            on_progress(len(done), len(streams))
    return PruneReport(study_name, dry_run, done)
