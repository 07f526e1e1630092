"""CheckpointingSampler: a drop-in sampler wrapper whose studies resume bit for bit.

Save path: ``after_trial`` -> adapter ``state_dict()`` -> encode -> store (inside the transaction
that stores the trial's final state). Resume path, on the first hook of a process: take the
stream's lease -> hide interrupted trials -> store's latest valid checkpoint -> verify ->
decode -> adapter ``load_state_dict()``.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import replace
import hashlib
import inspect
import logging
import threading
import time
from typing import TYPE_CHECKING
from typing import Any
import weakref

from optuna.exceptions import UpdateFinishedTrialError
from optuna.samplers import BaseSampler
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState

from optuna_checkpoint._faults import crash_point
from optuna_checkpoint._pruner import CheckpointingPruner
from optuna_checkpoint._pruner import attach_pruner
from optuna_checkpoint._pruner import restore_pruner
from optuna_checkpoint._pruner import with_pruner_state
from optuna_checkpoint.attach._lease import DEFAULT_GRACE_PERIOD
from optuna_checkpoint.attach._lease import DEFAULT_HEARTBEAT_INTERVAL
from optuna_checkpoint.attach._lease import Heartbeat
from optuna_checkpoint.attach._lease import LeaseVerdict
from optuna_checkpoint.attach._lease import current_owner
from optuna_checkpoint.attach._lease import judge_lease
from optuna_checkpoint.attach._worker import MAIN_WORKER
from optuna_checkpoint.attach._worker import check_worker_id
from optuna_checkpoint.attach._worker import slot_names
from optuna_checkpoint.attach._worker import spawn_worker_state
from optuna_checkpoint.attach._worker import worker_id_from_environment
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import ConfigMismatchError
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.exceptions import StreamOwnedError
from optuna_checkpoint.record._retention import RESUME_LOOKBACK
from optuna_checkpoint.record._retention import AmortizedPruning
from optuna_checkpoint.record._retention import Retention
from optuna_checkpoint.resume._interruptions import INTERRUPTED_ATTR
from optuna_checkpoint.resume._interruptions import RETRIES_EXHAUSTED
from optuna_checkpoint.resume._interruptions import adoptable_trials
from optuna_checkpoint.resume._interruptions import find_interrupted
from optuna_checkpoint.resume._interruptions import first_trial_of_new_stream
from optuna_checkpoint.resume._interruptions import hidden_from
from optuna_checkpoint.resume._interruptions import mark_retry
from optuna_checkpoint.resume._interruptions import roll_forward
from optuna_checkpoint.state import _codec
from optuna_checkpoint.state._fingerprint import differences
from optuna_checkpoint.state._fingerprint import sampler_fingerprint
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.state._seal import describe
from optuna_checkpoint.state._seal import place
from optuna_checkpoint.state._versions import check_versions
from optuna_checkpoint.state._versions import library_versions
from optuna_checkpoint.state.adapters import adapter_for
from optuna_checkpoint.stores._attrs import AttributeCheckpointStore
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import CheckpointStore
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._base import Owner
from optuna_checkpoint.stores._base import Stream
from optuna_checkpoint.stores._journal import JournalCheckpointStore
from optuna_checkpoint.stores._journal import resolve_journal_storage
from optuna_checkpoint.stores._sql import SQLCheckpointStore
from optuna_checkpoint.stores._sql import resolve_rdb_storage
from optuna_checkpoint.study._logical import HiddenTrials


if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.storages import BaseStorage
    from optuna.study import Study
    from optuna.trial import FrozenTrial


_logger = logging.getLogger(__name__)

CLAIM_WINDOW = 5.0
"""Seconds after its creation within which a live process claims its trial for its stream.

A worker claims its first trial a few queries after Optuna created it, and every later one in
the very transaction that creates it; an unclaimed trial older than this was left by a process
that died before its first sampler hook. The age is read from Optuna's ``datetime_start``, so
the hosts' clocks must agree to within a few seconds (as for Optuna's own heartbeat).
"""

_THIS_PROCESS = -1  # stands for a claim by another thread of this process in the resume


def _optuna_has_trial_cache() -> bool:
    # Optuna's per-thread, per-trial cache of the study's trials (private). Without it, the
    # resume reads the trials itself; ``test_optuna_internals`` fails when it goes away.
    from optuna.study import study as study_module

    thread_local = getattr(study_module, "_ThreadLocalStudyAttribute", None)
    get_trials = getattr(study_module.Study, "_get_trials", None)
    return (
        thread_local is not None
        and hasattr(thread_local, "cached_all_trials")
        and get_trials is not None
        and "use_cache" in inspect.signature(get_trials).parameters
    )


_TRIAL_CACHE_OF_OPTUNA = _optuna_has_trial_cache()

_live_samplers: weakref.WeakSet[CheckpointingSampler] = weakref.WeakSet()


def study_uid(study_id: int, study_name: str, first_trial: FrozenTrial) -> str:
    """Identify a study across processes without writing anything to it.

    Derived from the study's id and name and its first trial's id and start time, so a study
    deleted and recreated under the same id and name (SQLite reuses ids) gets another uid.
    """
    start = first_trial.datetime_start.isoformat() if first_trial.datetime_start else ""
    text = f"{study_id}\0{study_name}\0{first_trial._trial_id}\0{start}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class _Attachment:
    """What a sampler knows about the study it checkpoints, from its first hook on."""

    storage: BaseStorage
    study_id: int
    study_uid: str
    store: CheckpointStore
    stream: Stream
    owner: Owner
    hidden: HiddenTrials
    heartbeat: Heartbeat | None
    atomic: bool
    trials_in_progress: set[int]
    release: weakref.finalize[Any, Any] | None = None


class CheckpointingSampler(BaseSampler):
    """Wrap a sampler so that a killed study resumes along the exact trajectory it was on.

    After every trial the wrapped sampler's complete state is written to a side table in the
    study's own database, in the same transaction as the trial's final state. When the script is
    run again after a crash, ``kill -9``, SIGTERM, Ctrl-C or power loss, the first hook restores
    the latest checkpoint, closes the interrupted trial as FAIL (tagged ``interrupted``) and lets
    the next trial propose the same parameters again. The wrapped sampler is shown the study as
    an uninterrupted run would have it: interrupted trials hidden, trial numbers closed up. Its
    proposals are therefore the same, bit for bit, as those of a run that never stopped.

    Without interruptions the wrapper is transparent: it proposes exactly what the wrapped
    sampler alone proposes.

    Example:

        .. code-block:: python

            import optuna
            from optuna_checkpoint import CheckpointingSampler

            sampler = CheckpointingSampler(optuna.samplers.TPESampler(seed=42))
            study = optuna.create_study(
                study_name="demo", storage="sqlite:///demo.db", load_if_exists=True,
                sampler=sampler,
            )
            study.optimize(objective, callbacks=[optuna.study.MaxTrialsCallback(100)])

    Args:
        sampler: The sampler to wrap, freshly constructed with the same arguments on every run.
        allow_pickle: Allow cloudpickle for samplers without a state adapter. Loading a pickle
            executes code from the database, so only allow it if you trust every writer of the
            database. Plain-data checkpoints are used for the samplers this package knows.
        start_new_stream: Discard the study's checkpoints and start the stream again from
            ``sampler`` as given, e.g. after deliberately changing its configuration. The
            trajectory from then on is that of the new sampler, not of the old run.
        worker_id: The name of this worker's checkpoint stream, for studies run by several
            processes at once. Without it, the environment's ``OPTUNA_CHECKPOINT_WORKER_ID`` or
            launcher rank is used, else the first free slot (``main``, ``worker-1``, ...); see
            :mod:`optuna_checkpoint.attach._worker` for the rule. A second live process with the
            same explicit id is refused with :class:`StreamOwnedError`. Every worker but ``main``
            derives its random streams from the sampler's seed and its id, so seeded workers
            do not propose the same points.
        max_retries: How often a trial interrupted at the same logical position is retried
            before its failure is treated as genuine; ``None`` (the default, as for Optuna's
            ``RetryFailedTrialCallback``) retries every time, which the exact-resume guarantee
            needs. Set it when a trial may kill its own process (e.g. out of memory) and the
            script is restarted automatically, so that such a trial cannot loop forever.
        grace_period: Seconds without a heartbeat after which a lease held from another host is
            considered abandoned. Defaults to the storage's own grace period when Optuna's
            heartbeat is enabled on it, else to 120.
        heartbeat_interval: Seconds between lease refreshes while a trial runs. Defaults to the
            storage's heartbeat interval when Optuna's heartbeat is enabled on it, else to 30.
        signing_key: A secret key (at least 16 bytes) to sign every checkpoint with HMAC-SHA256,
            so that no one who can write the database but lacks the key can forge one. Without
            it, the environment variable ``OPTUNA_CHECKPOINT_SIGNING_KEY`` is used if set. With
            a key, unsigned and wrongly signed checkpoints are refused; without one, signed
            checkpoints are refused, since they cannot be checked. Keep the key out of the
            database and out of the code: see the security page of the user guide.
        retention: Delete the stream's older checkpoints as the study runs, keeping those
            :class:`~optuna_checkpoint.Retention` says (always the newest two, which a resume
            needs, and the initial one). Pruned every few trials, not after each one. Without
            it every checkpoint is kept. Not supported on ``JournalStorage`` (a warning says so).
    """

    def __init__(
        self,
        sampler: BaseSampler,
        *,
        allow_pickle: bool = False,
        start_new_stream: bool = False,
        worker_id: str | None = None,
        max_retries: int | None = None,
        grace_period: float | None = None,
        heartbeat_interval: float | None = None,
        signing_key: str | bytes | None = None,
        retention: Retention | None = None,
    ) -> None:
        if isinstance(sampler, CheckpointingSampler):
            raise ValueError("the sampler is already a CheckpointingSampler; wrap it only once")
        if max_retries is not None and max_retries < 0:
            raise ValueError(f"max_retries must be non-negative, got {max_retries}")
        self._sampler = sampler
        # None: take the first free slot of the study when attaching.
        self._worker_id = (
            check_worker_id(worker_id) if worker_id is not None else worker_id_from_environment()
        )
        self._allow_pickle = allow_pickle
        self._sealer = Sealer.from_option(signing_key)
        self._start_new_stream = start_new_stream
        self._max_retries = max_retries
        # As given; each is resolved against the storage's own heartbeat settings on attaching.
        self._grace_period = grace_period
        self._heartbeat_interval = heartbeat_interval
        self._adapter = adapter_for(sampler, allow_pickle=allow_pickle)
        # Described now, while the sampler is fresh: seeded RNGs still show their seed.
        self._fingerprint = sampler_fingerprint(sampler, self._adapter)
        self._attachment: _Attachment | None = None
        self._superseded = False
        self._warned_concurrency = False
        # The trial each thread started last, settled when that thread starts its next one.
        self._thread_last_trial = threading.local()
        self._lock = threading.RLock()
        self._sampling_lock = threading.RLock()
        self._arrivals: set[int] = set()  # trials whose before_trial has begun, not yet claimed
        self._reseeds = 0
        # The study's CheckpointingPruner, whose state goes into this sampler's checkpoints.
        self._pruner: CheckpointingPruner | None = None
        self._pruning = None if retention is None else AmortizedPruning(retention)
        _live_samplers.add(self)

    @property
    def sampler(self) -> BaseSampler:
        """The wrapped sampler."""
        return self._sampler

    def __repr__(self) -> str:
        return f"CheckpointingSampler({self._sampler!r})"

    # -- BaseSampler hooks -------------------------------------------------------------------

    def reseed_rng(self) -> None:
        """Reseed the wrapped sampler reproducibly (Optuna does so per trial when ``n_jobs > 1``).

        Instead of fresh OS entropy, each generator is derived with ``SeedSequence`` from its
        own current state and the count of reseeds, so a seeded study stays a function of its
        seed. A sampler whose generators cannot be found is reseeded its own way.
        """
        with self._sampling_lock:
            self._reseeds += 1
            spawned, generators = spawn_worker_state(
                self._adapter.state_dict(), f"reseed/{self._reseeds}"
            )
            if generators:
                self._adapter.load_state_dict(spawned)
            else:
                self._sampler.reseed_rng()

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """Resume on the first trial of a process, then delegate with the logical view."""
        crash_point("before_trial")
        # Announced before waiting for the lock: while one thread attaches, the trials other
        # threads of this process just created are live, not left by a dead process.
        self._arrivals.add(trial._trial_id)
        with self._lock:
            attachment, attached_now = self._attach(study, trial)
            if not attached_now:  # the first trial was claimed while attaching
                self._claim(attachment.store, attachment.stream, attachment.study_id, trial)
            self._arrivals.discard(trial._trial_id)
            self._settle_previous_trial(attachment)
            if self._pruning is not None:
                self._pruning.checkpoint_committed(
                    attachment.store, attachment.stream, attachment.hidden.trial_ids
                )
            self._refresh_hidden_trials(attachment)
            if attachment.trials_in_progress and not self._warned_concurrency:
                self._warned_concurrency = True
                _logger.warning(
                    "Trials of this study are running concurrently in this process (n_jobs > 1 "
                    "or several asks before a tell): they are checkpointed, but a resume is not "
                    "guaranteed to be bit-identical, since Optuna reseeds samplers per thread "
                    "and the trials interleave differently on every run."
                )
            attachment.trials_in_progress.add(trial._trial_id)
            self._thread_last_trial.trial_id = trial._trial_id
            if attachment.atomic:
                # From here until after_trial has captured the state, a commit of this trial's
                # end is refused: a Ctrl-C landing anywhere in between must leave it RUNNING.
                attachment.store.defer_save_to_trial_commit(
                    attachment.stream, trial._trial_id, None, attachment.owner.token
                )
        with self._sampling_lock:
            self._sampler.before_trial(*self._logical(attachment, study, trial))

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """Delegate with the logical view."""
        with self._sampling_lock:
            return self._sampler.infer_relative_search_space(*self._logical_or_real(study, trial))

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """Delegate with the logical view."""
        crash_point("sample_relative")
        view, logical = self._logical_or_real(study, trial)
        with self._sampling_lock:
            return self._sampler.sample_relative(view, logical, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        """Delegate with the logical view."""
        crash_point("sample_independent")
        view, logical = self._logical_or_real(study, trial)
        with self._sampling_lock:
            return self._sampler.sample_independent(view, logical, param_name, param_distribution)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """Delegate, then checkpoint the wrapped sampler's state.

        Runs after the objective returns and before Optuna stores the trial's final state. The
        checkpoint is handed to the store to be written in that same transaction. Since
        ``before_trial`` the store has been told that this trial's checkpoint is coming, so if
        this method does not finish (an exception, or Ctrl-C anywhere before the capture), the
        store refuses the trial's final commit: the trial stays RUNNING and is retried on resume
        rather than stored as finished with the state of an earlier trial.
        """
        crash_point("after_trial_start")
        attachment = self._attachment
        if attachment is None or self._superseded:
            with self._sampling_lock:
                self._sampler.after_trial(study, trial, state, values)
            return
        trial_id = trial._trial_id
        view, logical = self._logical(attachment, study, trial)
        # One lock around the wrapped sampler's calls and the capture: with n_jobs > 1, no
        # thread samples while another snapshots, so a checkpoint is a state that existed.
        with self._sampling_lock:
            self._sampler.after_trial(view, logical, state, values)
            checkpoint = self._capture(
                attachment.study_uid,
                attachment.stream.name,
                trial_id,
                logical.number,
                state,
                None if values is None else list(values),
            )
        crash_point("after_capture")
        attachment.trials_in_progress.discard(trial_id)
        if attachment.atomic:
            attachment.store.defer_save_to_trial_commit(
                attachment.stream, trial_id, checkpoint, attachment.owner.token
            )
        else:
            attachment.store.save(
                attachment.stream, checkpoint, attachment.owner.token, time.time()
            )
            crash_point("after_save")

    # -- views -------------------------------------------------------------------------------

    def _logical(
        self, attachment: _Attachment, study: Study, trial: FrozenTrial
    ) -> tuple[Study, FrozenTrial]:
        view, logical = attachment.hidden.apply(study, trial)
        if self._pruner is not None:
            # Optuna shows samplers a per-bracket study under a bare Hyperband only.
            view = self._pruner._sampler_view(view, logical)
        return view, logical

    def _logical_or_real(self, study: Study, trial: FrozenTrial) -> tuple[Study, FrozenTrial]:
        attachment = self._attachment
        if attachment is None:
            return study, trial
        return self._logical(attachment, study, trial)

    def _prune_logically(
        self, prune: Callable[[Study, FrozenTrial], bool], study: Study, trial: FrozenTrial
    ) -> bool:
        """Run a :class:`CheckpointingPruner`'s decision on the logical study.

        Under the sampling lock: the pruner's state is captured with the sampler's.
        """
        with self._sampling_lock:
            attachment = self._attachment
            if attachment is not None:
                study, trial = attachment.hidden.apply(study, trial)
            return prune(study, trial)

    # -- capture -----------------------------------------------------------------------------

    def _capture(
        self,
        uid: str,
        stream_name: str,
        trial_id: int | None,
        logical_number: int,
        state: TrialState | None = None,
        values: list[float] | None = None,
    ) -> Checkpoint:
        """Encode the wrapped sampler's current state as the checkpoint of ``trial_id``."""
        captured = with_pruner_state(self._adapter.state_dict(), self._pruner)
        payload = _codec.encode(captured, allow_pickle=self._allow_pickle)
        unsealed = Checkpoint(
            trial_id=trial_id,
            logical_number=logical_number,
            trial_state=None if state is None else state.name,
            trial_values=values,
            adapter=self._adapter.name,
            payload=payload,
            checksum="",
            versions=library_versions(),
        )
        where = place(uid, stream_name, trial_id, logical_number)
        return replace(unsealed, checksum=self._sealer.seal(unsealed, where))

    def _check_seal(self, attachment: _Attachment, checkpoint: Checkpoint) -> None:
        """Refuse a checkpoint whose seal does not hold, before anything of it is used."""
        self._sealer.check_stored(
            checkpoint, attachment.study_uid, attachment.stream.name, remedy=_RESTORE_REMEDY
        )

    def _restore(self, attachment: _Attachment, checkpoint: Checkpoint) -> None:
        self._check_seal(attachment, checkpoint)
        where = f"{describe(checkpoint)} in stream {attachment.stream.name!r}"
        if checkpoint.adapter != self._adapter.name:
            raise CorruptCheckpointError(
                f"{where} was written by the {checkpoint.adapter} adapter, but this sampler uses "
                f"{self._adapter.name}." + _RESTORE_REMEDY
            )
        try:
            info = _codec.inspect_payload(checkpoint.payload)
            check_versions(checkpoint.versions or {}, where=where, pickled=info.pickled)
            state = _codec.decode(checkpoint.payload, allow_pickle=self._allow_pickle)
            self._adapter.load_state_dict(restore_pruner(state, self._pruner))
        except CorruptCheckpointError as e:
            message = f"{where} cannot be loaded: {e}."
            raise CorruptCheckpointError(message + _RESTORE_REMEDY) from e

    # -- attach and resume -------------------------------------------------------------------

    def _attach(self, study: Study, trial: FrozenTrial) -> tuple[_Attachment, bool]:
        """Return the attachment to ``study``, opening its stream on the first hook."""
        if self._superseded:
            raise StreamOwnedError(
                f"another CheckpointingSampler in this process took over this sampler's "
                f"checkpoint stream of study {study.study_name!r}; use that one."
            )
        attachment = self._attachment
        if (
            attachment is not None
            and attachment.study_id == study._study_id
            and (attachment.storage is study._storage)
        ):
            return attachment, False
        if attachment is not None:
            self._release()
        self._attachment = attachment = self._open_stream(study, trial)
        # Released when the sampler is collected or the interpreter exits, so the next process
        # resumes at once instead of first proving this one gone.
        attachment.release = weakref.finalize(self, _release_lease, attachment)
        return attachment, True

    def _open_stream(self, study: Study, trial: FrozenTrial) -> _Attachment:
        storage = study._storage
        store = _store_for(storage)
        self._pruner = attach_pruner(study, self)
        grace_period, heartbeat_interval = _lease_timing(
            storage, self._grace_period, self._heartbeat_interval
        )
        # Not the sole stream yet (it is not chosen): study-held state is captured, not restored.
        self._adapter.bind_study(storage, study._study_id, sole_stream=False)
        # Captured before anything runs: worker streams are derived from the state as given.
        pristine = self._adapter.state_dict()
        uid = study_uid(study._study_id, study.study_name, _first_trial(storage, study._study_id))
        store.open_study(study._study_id, uid)
        me = current_owner()
        stream, created, sole_stream = self._choose_stream(
            store, study, trial, uid, me, pristine, grace_period
        )
        attachment = None
        try:
            # Claimed first, so a worker resuming meanwhile never takes it for a dead one's.
            self._claim(store, stream, study._study_id, trial)
            if self._start_new_stream and not created:
                stream = self._restart_stream(store, stream, me, study, trial, uid, pristine)
            else:
                self._check_fingerprint(stream, study)
            attachment = self._new_attachment(
                storage, study, uid, store, stream, me, heartbeat_interval
            )
            self._adapter.bind_study(storage, study._study_id, sole_stream=sole_stream)
            if self._resume(attachment, _trials_of_this_trial(study), trial):
                _forget_trials_of_this_trial(study)
            store.claim_trials_at_creation(stream, study._study_id)
        except BaseException:
            # Whatever stopped the resume (a mismatch, a corrupt checkpoint, Ctrl-C), the lease
            # must not stay with a token no sampler holds: a retry in this process would be
            # refused as if another process owned the stream.
            if attachment is not None and attachment.heartbeat is not None:
                attachment.heartbeat.stop()
            store.release(stream.stream_id, me.token)
            raise
        return attachment

    def _choose_stream(
        self,
        store: CheckpointStore,
        study: Study,
        trial: FrozenTrial,
        uid: str,
        me: Owner,
        pristine: dict[str, Any],
        grace_period: float,
    ) -> tuple[Stream, bool, bool]:
        """Take the lease of this worker's stream, creating it if new.

        Returns:
            The stream, whether it was created now, and whether it is the study's only stream.
        """
        explicit = self._worker_id is not None
        existing = {s.name: s for s in store.list_streams(uid)}
        names = iter([self._worker_id]) if self._worker_id is not None else slot_names()
        for name in names:
            assert name is not None
            stream = existing.get(name)
            if stream is None:
                initial = self._initial_checkpoint(uid, name, pristine)
                stream = store.create_stream(
                    study._study_id,
                    uid,
                    name,
                    self._fingerprint,
                    me,
                    initial,
                    first_trial_number=first_trial_of_new_stream(
                        study._storage, study._study_id, trial
                    ),
                )
                if stream is not None:
                    return stream, True, not existing
                # Another process created it first: it is an existing stream like any other.
                stream = store.find_stream(uid, name)
                assert stream is not None
            verdict = self._judge(stream, me, grace_period)
            if verdict.may_take_over and store.take_over(stream, me, time.time()):
                _logger.info("Took over checkpoint stream %r: %s.", name, verdict.reason)
                return stream, False, existing.keys() <= {name}
            if not explicit:
                continue  # a busy slot: try the next one
            if verdict.may_take_over:
                raise StreamOwnedError(
                    f"another process took over checkpoint stream {name!r} of study "
                    f"{study.study_name!r} at the same moment; run one process per worker id."
                )
            self._close_refused_trial(store, stream, study, trial)
            raise StreamOwnedError(
                f"worker id {name!r} of study {study.study_name!r} is in use: "
                f"{verdict.reason}. Two live processes must not share a worker id. Stop the "
                "other process first, or give this one another worker_id (or none, to take a "
                f"free slot). Trial {trial.number}, which this process had just created, was "
                "closed as FAIL and is hidden from the other workers' samplers."
            )
        raise AssertionError("unreachable: slot names never run out")

    def _judge(self, stream: Stream, me: Owner, grace_period: float) -> LeaseVerdict:
        verdict = judge_lease(stream.owner, stream.heartbeat_at, time.time(), me, grace_period)
        if not verdict.may_take_over and stream.owner is not None:
            other = _local_sampler_holding(stream.owner.token)
            if other is not None and other is not self and other._idle():
                # The same study opened again in this process (e.g. a notebook cell run twice).
                other._superseded = True
                other._stop_heartbeat()
                verdict = LeaseVerdict(True, "an idle sampler in this process held it")
        return verdict

    def _initial_checkpoint(
        self, uid: str, stream_name: str, pristine: dict[str, Any]
    ) -> Checkpoint:
        """Set the sampler to its state for a new stream of that name, and capture it.

        ``main`` keeps the sampler as constructed (it is still untouched: this runs before its
        first hook); every other stream derives its generators from ``pristine`` and its name.
        """
        if stream_name != MAIN_WORKER:
            spawned, generators = spawn_worker_state(pristine, stream_name)
            if generators:
                self._adapter.load_state_dict(spawned)
            else:
                _logger.warning(
                    "%s has no random generator optuna-checkpoint can derive per worker: seed "
                    "it differently in each worker, or workers may propose the same points.",
                    type(self._sampler).__name__,
                )
        return self._capture(uid, stream_name, None, -1)

    @staticmethod
    def _claim(store: CheckpointStore, stream: Stream, study_id: int, trial: FrozenTrial) -> None:
        """Claim a trial this process created for its stream (done at its creation, if it can)."""
        if not store.claim_trial(stream, study_id, trial._trial_id):
            raise StreamOwnedError(
                f"trial {trial.number}, which this process had just created, was taken for an "
                "abandoned one by another worker's resume before this process could claim it "
                f"(the claim window is {CLAIM_WINDOW:.0f} s; is the database overloaded, or "
                "are the hosts' clocks apart?). Run this worker again."
            )

    def _restart_stream(
        self,
        store: CheckpointStore,
        stream: Stream,
        me: Owner,
        study: Study,
        trial: FrozenTrial,
        uid: str,
        pristine: dict[str, Any],
    ) -> Stream:
        initial = self._initial_checkpoint(uid, stream.name, pristine)
        reset = store.reset_stream(
            replace(stream, owner=me),
            self._fingerprint,
            me,
            initial,
            first_trial_number=trial.number,
        )
        if reset is None:
            raise StreamOwnedError("another process took the stream over while it was reset")
        _logger.warning(
            "Started a new checkpoint stream %r for study %r: the sampler continues from its "
            "configuration as given, not from the previous run's state.",
            stream.name,
            study.study_name,
        )
        return reset

    def _new_attachment(
        self,
        storage: BaseStorage,
        study: Study,
        uid: str,
        store: CheckpointStore,
        stream: Stream,
        me: Owner,
        heartbeat_interval: float,
    ) -> _Attachment:
        heartbeat = None
        if not isinstance(storage, InMemoryStorage):  # no other process to keep out
            heartbeat = Heartbeat(store, stream.stream_id, me.token, heartbeat_interval)
        return _Attachment(
            storage=storage,
            study_id=study._study_id,
            study_uid=uid,
            store=store,
            stream=stream,
            owner=me,
            hidden=HiddenTrials(),
            heartbeat=heartbeat,
            atomic=store.supports_commit_hook,
            trials_in_progress=set(),
        )

    @staticmethod
    def _close_refused_trial(
        store: CheckpointStore, stream: Stream, study: Study, trial: FrozenTrial
    ) -> None:
        # Left RUNNING, it would be a pending trial to the owner's constant-liar TPE; recorded as
        # interrupted, the owner hides it on its next trial, like any interrupted attempt.
        logical = hidden_from(store.where_interrupted(stream.study_uid)).logical_number(
            trial.number
        )
        reason = "refused: another live process holds its worker id"
        store.add_interruptions(
            study._study_id,
            stream.study_uid,
            [Interruption(trial._trial_id, trial.number, logical, reason)],
        )
        study._storage.set_trial_system_attr(trial._trial_id, INTERRUPTED_ATTR, reason)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)

    def _check_fingerprint(self, stream: Stream, study: Study) -> None:
        if stream.fingerprint == self._fingerprint:
            return
        lines = differences(stream.fingerprint, self._fingerprint)
        shown = "\n  ".join(lines[:20]) + ("\n  ..." if len(lines) > 20 else "")
        raise ConfigMismatchError(
            f"study {study.study_name!r} was checkpointed by a sampler configured differently "
            f"from this one:\n  {shown}\nResume with the sampler constructed exactly as before "
            "(same class, arguments and seed) to continue the same trajectory, or pass "
            "start_new_stream=True to CheckpointingSampler to discard the checkpoints and "
            "continue with this configuration."
        )

    def _resume(
        self, attachment: _Attachment, all_trials: list[FrozenTrial], current: FrozenTrial
    ) -> bool:
        """Close interrupted trials and restore the state from before the next logical trial.

        Returns:
            Whether a trial was changed, so that ``all_trials`` is no longer what is stored.
        """
        store, storage = attachment.store, attachment.storage
        # Only the newest two checkpoints are needed: the FAIL-marker rule below may hide the
        # newest, and no rule hides a trial before it that has a checkpoint.
        known, latest = store.resume_point(
            attachment.study_uid, attachment.stream.stream_id, limit=RESUME_LOOKBACK
        )
        trials = {t._trial_id: t for t in all_trials}
        newest = latest[0] if latest else None
        if newest is not None and newest.trial_state is not None:
            self._check_seal(attachment, newest)  # before its recorded end is trusted
        changed = False
        if (
            newest is not None
            and newest.trial_id in trials
            and roll_forward(storage, trials[newest.trial_id], newest)
        ):
            trials[newest.trial_id] = storage.get_trial(newest.trial_id)
            changed = True

        fresh, exhausted = find_interrupted(
            trials,
            current,
            known,
            newest,
            mine=self._unfinished_trials_of_stream(
                attachment, all_trials, trials, current, known, newest
            ),
            stream_id=attachment.stream.stream_id,
            max_retries=self._max_retries,
        )
        # Recorded first: if this process dies before closing them, the next one still hides
        # them and closes them (closing is idempotent).
        store.add_interruptions(attachment.study_id, attachment.study_uid, fresh)
        interrupted = sorted([*known, *fresh], key=lambda i: i.trial_number)
        # This stream's own: another worker's recorded ones are closed by that worker's resume,
        # which may be doing so right now.
        stream_id = attachment.stream.stream_id
        reasons = {i.trial_id: i.reason for i in interrupted if i.stream_id == stream_id}
        reasons.update((t._trial_id, RETRIES_EXHAUSTED) for t in exhausted)
        for trial_id, reason in reasons.items():
            if trials[trial_id].state == TrialState.RUNNING:
                _close_as_failed(storage, trial_id, reason)
                changed = True
        attachment.hidden = hidden_from(interrupted)
        # The logical view hides the interrupted trials, not what they wrote to the study.
        self._adapter.forget_interrupted(
            storage, attachment.study_id, trials.values(), attachment.hidden.trial_ids
        )

        restorable = [
            c
            for c in latest
            if c.trial_id is None or c.trial_id not in attachment.hidden.trial_ids
        ]
        if not restorable:
            raise CorruptCheckpointError(
                f"stream {attachment.stream.name!r} has no checkpoint to resume from; pass "
                "start_new_stream=True to CheckpointingSampler to start it again."
            )
        checkpoint = restorable[0]
        self._restore(attachment, checkpoint)
        restored_after = -1 if checkpoint.trial_id is None else trials[checkpoint.trial_id].number
        mark_retry(storage, current, interrupted, attachment.stream.stream_id, restored_after)
        crash_point("after_resume")
        return changed

    def _unfinished_trials_of_stream(
        self,
        attachment: _Attachment,
        all_trials: list[FrozenTrial],
        trials: dict[int, FrozenTrial],
        current: FrozenTrial,
        known: list[Interruption],
        newest: Checkpoint | None,
    ) -> set[int]:
        """The unfinished trials this stream's previous owner ran: claimed by it, or adopted.

        A trial no stream claimed after the claim window was created by a process that died
        before its first sampler hook; the first worker to resume adopts it, atomically, so it
        is hidden and retried exactly once. Other workers' trials are never touched.
        """
        store, stream = attachment.store, attachment.stream
        hidden = {i.trial_id for i in known}
        newest_trial = trials.get(newest.trial_id) if newest and newest.trial_id else None
        after = newest_trial.number if newest_trial is not None else -1
        candidates = [
            t
            for t in all_trials
            if (t.state == TrialState.RUNNING or (t.state == TrialState.FAIL and t.number > after))
            and t._trial_id != current._trial_id
            and t._trial_id not in hidden
        ]

        def claims_of(trial_ids: list[int]) -> dict[int, int]:
            claims = store.claims(attachment.study_uid, trial_ids)
            # Trials other threads of this process are starting count as claimed, not by us.
            claims.update((t, _THIS_PROCESS) for t in trial_ids if t in self._arrivals)
            return claims

        claims = claims_of([t._trial_id for t in candidates])
        mine = {trial_id for trial_id, owner in claims.items() if owner == stream.stream_id}
        unclaimed = [
            t
            for t in candidates
            if t._trial_id not in claims
            and t.state == TrialState.RUNNING
            and t.number >= stream.first_trial_number
        ]
        for trial in adoptable_trials(unclaimed, claims_of, CLAIM_WINDOW):
            if store.claim_trial(stream, attachment.study_id, trial._trial_id):
                mine.add(trial._trial_id)
        return mine

    @staticmethod
    def _refresh_hidden_trials(attachment: _Attachment) -> None:
        # Another process may have closed a trial it created here while this one owned the
        # stream (it was refused); hide that trial too, as an uninterrupted run never had it.
        hint = attachment.store.interruption_count_hint(attachment.study_uid)
        if hint is not None and hint != len(attachment.hidden.trial_ids):
            attachment.hidden = hidden_from(
                attachment.store.where_interrupted(attachment.study_uid)
            )

    def _settle_previous_trial(self, attachment: _Attachment) -> None:
        """Check the trial this thread started last, now that it starts another.

        Its deferred checkpoint should have gone out with the commit of its end. Still pending
        on a finished trial means Optuna stopped finishing trials the way the commit hook
        expects: continuing would resume inexactly after the next kill, so the study stops.
        Still pending on a RUNNING trial means that commit was refused; the marker goes.
        Only this thread's own trial is looked at: the store's pending set is shared with
        other threads (``n_jobs > 1``) and other samplers on the same storage, whose trials may
        be between their capture and their commit right now.
        """
        trial_id = getattr(self._thread_last_trial, "trial_id", None)
        self._thread_last_trial.trial_id = None
        if not attachment.atomic or trial_id not in attachment.store.pending_trial_ids():
            return
        attachment.store.discard_pending(trial_id)
        if attachment.storage.get_trial(trial_id).state.is_finished():
            attachment.atomic = False
            raise CheckpointError(
                f"trial id {trial_id} was stored as finished without its checkpoint: this "
                "Optuna version stores trial results in a way optuna-checkpoint does not "
                "recognise. Please report it with your Optuna version."
            )

    # -- lifetime ----------------------------------------------------------------------------

    def _idle(self) -> bool:
        attachment = self._attachment
        return attachment is None or not attachment.trials_in_progress

    def _stop_heartbeat(self) -> None:
        attachment = self._attachment
        if attachment is not None and attachment.heartbeat is not None:
            attachment.heartbeat.stop()

    def _release(self) -> None:
        attachment, self._attachment = self._attachment, None
        if attachment is not None and attachment.release is not None:
            attachment.release()


_RESTORE_REMEDY = (
    " Restore the database from a backup to resume exactly, or pass start_new_stream=True to "
    "CheckpointingSampler to continue from the sampler as constructed (the trajectory will then "
    "differ from the uninterrupted run)."
)


def _release_lease(attachment: _Attachment) -> None:
    # Runs when the sampler is collected or the interpreter exits, including after Ctrl-C.
    if attachment.heartbeat is not None:
        attachment.heartbeat.stop()
    try:
        # A no-op if another sampler took the stream over.
        attachment.store.release(attachment.stream.stream_id, attachment.owner.token)
    except Exception:
        _logger.debug("Could not release the checkpoint lease.", exc_info=True)


def _local_sampler_holding(token: str) -> CheckpointingSampler | None:
    for sampler in list(_live_samplers):
        attachment = sampler._attachment
        if attachment is not None and attachment.owner.token == token:
            return sampler
    return None


def _store_for(storage: BaseStorage) -> CheckpointStore:
    rdb = resolve_rdb_storage(storage)
    if rdb is not None:
        return SQLCheckpointStore.for_storage(rdb)
    journal = resolve_journal_storage(storage)
    if journal is not None:
        return JournalCheckpointStore.for_storage(journal)
    if isinstance(storage, InMemoryStorage):
        _logger.warning(
            "The study is in memory: its checkpoints are kept in memory too, so it cannot be "
            "resumed by another process. Use a database URL such as sqlite:///study.db."
        )
    # GrpcStorageProxy, and any other storage: through Optuna's public storage API.
    return AttributeCheckpointStore.for_storage(storage)


def _close_as_failed(storage: BaseStorage, trial_id: int, reason: str) -> None:
    """Close an interrupted trial as FAIL, unless something closed it since it was read."""
    try:
        storage.set_trial_system_attr(trial_id, INTERRUPTED_ATTR, reason)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        # Closing is idempotent: e.g. a resume of this stream that was cut short, and Optuna's
        # heartbeat failing the same stale trial meanwhile.
        _logger.debug("Trial id %d was already closed.", trial_id)


def _trials_of_this_trial(study: Study) -> list[FrozenTrial]:
    """Every trial, read through the study's per-trial cache, sorted by number.

    ``Study.ask`` empties that cache right before it creates the trial whose first hook this
    is, and Optuna's samplers fill it on their first read of the trial. Read through it, the
    resume's read of the study is the one the wrapped sampler then uses, not an extra one.
    """
    if _TRIAL_CACHE_OF_OPTUNA:
        return study._get_trials(deepcopy=False, use_cache=True)
    return study._storage.get_all_trials(study._study_id, deepcopy=False)


def _forget_trials_of_this_trial(study: Study) -> None:
    """Empty the per-trial cache after the resume changed a trial in storage."""
    thread_local = getattr(study, "_thread_local", None)
    if thread_local is not None:
        thread_local.cached_all_trials = None


def _first_trial(storage: BaseStorage, study_id: int) -> FrozenTrial:
    return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, 0))


def _lease_timing(
    storage: BaseStorage, grace_period: float | None, heartbeat_interval: float | None
) -> tuple[float, float]:
    """The lease's grace period and heartbeat interval: as given, else the storage's own."""
    # RDBStorage's public heartbeat settings (BaseHeartbeat), when Optuna's heartbeat is on.
    get_interval = getattr(storage, "get_heartbeat_interval", None)
    storage_interval = get_interval() if callable(get_interval) else None
    if storage_interval:
        rdb = resolve_rdb_storage(storage)
        storage_grace = getattr(rdb, "grace_period", None) or 2 * storage_interval
        if heartbeat_interval is None:
            heartbeat_interval = float(storage_interval)
        if grace_period is None:
            grace_period = float(storage_grace)
    return (
        DEFAULT_GRACE_PERIOD if grace_period is None else grace_period,
        DEFAULT_HEARTBEAT_INTERVAL if heartbeat_interval is None else heartbeat_interval,
    )
