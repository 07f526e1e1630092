"""CheckpointingSampler: a drop-in sampler wrapper whose studies resume bit for bit.

The class is a facade over Optuna's ``BaseSampler`` contract. It delegates every hook to the
wrapped sampler, shown the logical study, and hands a trial through the stages:

* ``before_trial``: attach (:mod:`optuna_checkpoint.attach`: choose the stream, take its lease,
  claim the trial) -> on the first trial of a process, resume (:mod:`optuna_checkpoint.resume`:
  roll forward, close interrupted trials, check seal, versions and configuration, restore) ->
  record's start (:mod:`optuna_checkpoint.record`: hold the trial's end until its checkpoint);
* ``after_trial``: the wrapped sampler's ``after_trial`` -> record (capture -> encode -> seal ->
  save inside the transaction that stores the trial's end).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import contextlib
from dataclasses import dataclass
import threading
from typing import TYPE_CHECKING
from typing import Any
from typing import NamedTuple
import uuid

from optuna.samplers import BaseSampler

from optuna_checkpoint._faults import crash_point
from optuna_checkpoint._pruner import CheckpointingPruner
from optuna_checkpoint._pruner import adopt_study_pruner
from optuna_checkpoint._pruner import study_for_hooks
from optuna_checkpoint._pruner import unfiltered_study
from optuna_checkpoint.attach._attacher import StreamAttacher
from optuna_checkpoint.attach._attachment import released_on_failure
from optuna_checkpoint.attach._worker import check_worker_id
from optuna_checkpoint.attach._worker import worker_id_from_environment
from optuna_checkpoint.parallel._mode import check_study_mode
from optuna_checkpoint.parallel._trials import DeterministicTrials
from optuna_checkpoint.record._recorder import TrialRecorder
from optuna_checkpoint.record._retention import AmortizedPruning
from optuna_checkpoint.record._trial_states import TrialStates
from optuna_checkpoint.resume._resumer import Resumer
from optuna_checkpoint.resume._resumer import refresh_hidden_trials
from optuna_checkpoint.state._composite import CheckpointState
from optuna_checkpoint.state._fingerprint import sampler_fingerprint
from optuna_checkpoint.state._packing import CheckpointPacker
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.state._spawn import spawn_rng_states
from optuna_checkpoint.state.adapters import adapter_for
from optuna_checkpoint.study._trials import mark_told_elsewhere


if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial
    from optuna.trial import TrialState

    from optuna_checkpoint.attach._attachment import Attachment
    from optuna_checkpoint.record._retention import Retention
    from optuna_checkpoint.state.adapters import StateAdapter


# Keys of what a copy carries (``__getstate__``).
_SAMPLER = "sampler"
_ADAPTER = "adapter_type"
_OPTIONS = "options"
_FINGERPRINT = "fingerprint"
_RESEEDS = "reseeds"
_LINEAGE = "lineage"


@dataclass(frozen=True)
class _Options:
    """The constructor's options, as checked; a copy of the sampler carries them."""

    allow_pickle: bool
    start_new_stream: bool
    worker_id: str | None  # as given: None is resolved in the process that attaches
    max_retries: int | None
    grace_period: float | None
    heartbeat_interval: float | None
    sealer: Sealer
    retention: Retention | None
    deterministic_workers: int | None
    keep_trial_checkpoints: bool


class _Stages(NamedTuple):
    """The stages a trial passes through, built for one sampler from its options."""

    state: CheckpointState
    parallel: DeterministicTrials | None
    attacher: StreamAttacher
    resumer: Resumer
    recorder: TrialRecorder
    trial_states: TrialStates  # what objectives save through trial_checkpoint

    @classmethod
    def build(
        cls, adapter: StateAdapter, options: _Options, fingerprint: dict[str, Any], lineage: str
    ) -> _Stages:
        state = CheckpointState(adapter)
        packer = CheckpointPacker(state, options.sealer, allow_pickle=options.allow_pickle)
        workers = options.deterministic_workers
        parallel = (
            None
            if workers is None
            else DeterministicTrials(adapter, fingerprint, workers, options.grace_period)
        )
        attacher = StreamAttacher(
            packer,
            fingerprint,
            # None: take the first free slot of the study when attaching.
            worker_id=(
                options.worker_id
                if options.worker_id is not None
                else worker_id_from_environment()
            ),
            start_new_stream=options.start_new_stream,
            grace_period=options.grace_period,
            heartbeat_interval=options.heartbeat_interval,
            lineage=lineage,
        )
        resumer = Resumer(packer, max_retries=options.max_retries, arrivals=attacher.arrivals)
        recorder = TrialRecorder(
            packer,
            None if options.retention is None else AmortizedPruning(options.retention),
            deterministic=parallel is not None,
        )
        trial_states = TrialStates(
            options.sealer, deterministic=workers is not None, keep=options.keep_trial_checkpoints
        )
        return cls(state, parallel, attacher, resumer, recorder, trial_states)


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

    Like a plain sampler it pickles and deep-copies with its study. A copy carries the wrapped
    sampler's state and the configuration (the signing key too), and attaches afresh on its
    first trial, never to a stream that a live sampler holds (docs/guarantee.md, "Copies").

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
        deterministic_workers: Make a study run by several workers reproducible: with K, any
            number of workers up to K (threads, processes, machines) give the same logical
            trajectory on every run, also after kills and restarts. Every worker must use the
            same K and the same seeded sampler; the study's pruner is wrapped in a
            :class:`CheckpointingPruner` in place. See "Deterministic parallel optimization" in
            the user guide for how it works, what it costs and what it does not cover.
        keep_trial_checkpoints: Keep what trials saved with
            :func:`~optuna_checkpoint.trial_checkpoint` after they finish (else deleted then).
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
        deterministic_workers: int | None = None,
        keep_trial_checkpoints: bool = False,
    ) -> None:
        if isinstance(sampler, CheckpointingSampler):
            raise ValueError("the sampler is already a CheckpointingSampler; wrap it only once")
        if max_retries is not None and max_retries < 0:
            raise ValueError(f"max_retries must be non-negative, got {max_retries}")
        if deterministic_workers is not None and deterministic_workers < 1:
            raise ValueError(
                f"deterministic_workers must be at least 1, got {deterministic_workers}"
            )
        options = _Options(
            allow_pickle=allow_pickle,
            start_new_stream=start_new_stream,
            worker_id=None if worker_id is None else check_worker_id(worker_id),
            max_retries=max_retries,
            grace_period=grace_period,
            heartbeat_interval=heartbeat_interval,
            sealer=Sealer.from_option(signing_key),
            retention=retention,
            deterministic_workers=deterministic_workers,
            keep_trial_checkpoints=keep_trial_checkpoints,
        )
        adapter = adapter_for(sampler, allow_pickle=allow_pickle)
        # Shared by this sampler and its copies, which never take each other's streams.
        self._lineage = uuid.uuid4().hex
        # Described now, while the sampler is fresh: seeded RNGs still show their seed.
        self._assemble(adapter, options, sampler_fingerprint(sampler, adapter), reseeds=0)

    def _assemble(
        self, adapter: StateAdapter, options: _Options, fingerprint: dict[str, Any], reseeds: int
    ) -> None:
        """Build the stages around the adapter's sampler: on construction, and in a copy."""
        self._sampler = adapter.sampler
        self._options, self._fingerprint, self._reseeds = options, fingerprint, reseeds
        stages = _Stages.build(adapter, options, fingerprint, self._lineage)
        self._state, self._parallel, self._attacher, self._resumer = stages[:4]
        self._recorder, self._trial_states = stages[4:]
        # One lock for attaching and settling trials; another around every call into the
        # wrapped sampler and every capture, so that with n_jobs > 1 a checkpoint is a state
        # that existed.
        self._lock = threading.RLock()
        self._sampling_lock = threading.RLock()
        # The study's CheckpointingPruner, whose state goes into this sampler's checkpoints.
        self._pruner: CheckpointingPruner | None = None

    def __getstate__(self) -> dict[str, Any]:
        """What a copy carries: the wrapped sampler as it is now, and the configuration."""
        return {
            _SAMPLER: self._sampler,
            # The type, not the object: an adapter may hold what the study bound it to.
            _ADAPTER: type(self._state.adapter),
            _OPTIONS: self._options,
            _FINGERPRINT: self._fingerprint,
            _RESEEDS: self._reseeds,
            _LINEAGE: self._lineage,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Rebuild the stages around the copied sampler, unattached (see the class docstring)."""
        self._lineage = state[_LINEAGE]
        adapter = state[_ADAPTER](state[_SAMPLER])
        self._assemble(adapter, state[_OPTIONS], state[_FINGERPRINT], state[_RESEEDS])

    @property
    def sampler(self) -> BaseSampler:
        """The wrapped sampler."""
        return self._sampler

    @property
    def _attachment(self) -> Attachment | None:
        """The attachment to the study this sampler last sampled for, if any."""
        return self._attacher.attachment

    def __repr__(self) -> str:
        return f"CheckpointingSampler({self._sampler!r})"

    # -- BaseSampler hooks -------------------------------------------------------------------

    def reseed_rng(self) -> None:
        """Reseed the wrapped sampler reproducibly (Optuna does so per trial when ``n_jobs > 1``).

        Instead of fresh OS entropy, each generator is derived with ``SeedSequence`` from its
        own current state and the count of reseeds, so a seeded study stays a function of its
        seed. A sampler whose generators cannot be found is reseeded its own way.
        """
        if self._parallel is not None:
            return  # every trial gets its own streams anyway
        with self._sampling_lock:
            self._reseeds += 1
            adapter = self._state.adapter
            spawned, generators = spawn_rng_states(adapter.state_dict(), f"reseed/{self._reseeds}")
            if generators:
                adapter.load_state_dict(spawned)
            else:
                self._sampler.reseed_rng()

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """Attach (and on a process's first trial, resume), then delegate with the logical view."""
        crash_point("before_trial")
        # Announced before waiting for the lock: while one thread attaches, the trials other
        # threads of this process just created are live, not left by a dead process.
        self._attacher.arrivals.add(trial._trial_id)
        with self._lock:
            attachment = self._attach(unfiltered_study(study), trial)
            study = study_for_hooks(study)  # the study itself, once its pruner is wrapped
            self._attacher.arrivals.discard(trial._trial_id)
            self._recorder.settle_previous(attachment)
            refresh_hidden_trials(attachment)
            self._recorder.begin(attachment, trial)
        if self._parallel is not None:
            # Outside the lock: other threads' trials go on while this one waits.
            self._parallel.start(attachment, study, trial)
        with self._sampling_lock, self._own_state(trial):
            self._sampler.before_trial(*self._logical(attachment, study, trial))

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """Delegate with the logical view."""
        with self._sampling_lock, self._own_state(trial):
            return self._sampler.infer_relative_search_space(*self._logical_or_real(study, trial))

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """Delegate with the logical view."""
        crash_point("sample_relative")
        view, logical = self._logical_or_real(study, trial)
        with self._sampling_lock, self._own_state(trial):
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
        with self._sampling_lock, self._own_state(trial):
            return self._sampler.sample_independent(view, logical, param_name, param_distribution)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """Delegate, then checkpoint the wrapped sampler's state in the trial's final commit.

        Runs after the objective and before Optuna stores the trial's end, in the transaction
        that also carries the checkpoint and the deletion of what the trial saved with
        ``trial_checkpoint`` (kept if Ctrl-C cut the trial off). If this method does not finish,
        the store, told in ``before_trial`` that a checkpoint is coming, refuses that commit:
        the trial stays RUNNING and is retried, never stored with an earlier trial's state.
        """
        crash_point("after_trial_start")
        attachment = self._attacher.attachment
        if attachment is None or attachment.superseded:
            if attachment is None:  # a trial asked elsewhere: no stream of ours ran it
                mark_told_elsewhere(study._storage, trial._trial_id)
            with self._sampling_lock:
                self._sampler.after_trial(study, trial, state, values)
            return
        try:
            view, logical = self._logical(attachment, study, trial)
            hide = self._parallel is not None
            cut_off = self._recorder.mark_if_cut_off(
                attachment, trial, logical.number, state, hide=hide
            )
            with self._sampling_lock, self._own_state(trial):
                self._sampler.after_trial(view, logical, state, values)
                values_list = None if values is None else list(values)
                checkpoint = self._recorder.capture(
                    attachment, trial, logical.number, state, values_list
                )
            crash_point("after_capture")
            self._recorder.record(attachment, trial, checkpoint)
        except BaseException as error:
            if not attachment.atomic:
                # Optuna stores the trial's end even so; no commit here to refuse.
                self._recorder.fail_unsaved(attachment, trial, error)
            raise
        self._trial_states.trial_finished(attachment, trial._trial_id, cut_off=cut_off)
        if self._parallel is not None:
            self._parallel.end(trial)

    # -- stages ------------------------------------------------------------------------------

    def _attach(self, study: Study, trial: FrozenTrial) -> Attachment:
        """The attachment to ``study``; on the first hook there, attach and resume."""
        attachment = self._attacher.current(study)
        if attachment is not None:
            self._attacher.claim(attachment, trial)
            return attachment
        workers = None if self._parallel is None else self._parallel.workers
        check_study_mode(study, trial, workers, self._fingerprint, self._options.sealer)
        # Wrapped in place where it keeps state or reads trial numbers; in deterministic mode
        # every pruner, so that its decisions see the trial's fixed history.
        pruner = adopt_study_pruner(study, required=workers is not None)
        if pruner is not None:
            pruner._attach(self, self._prune_logically)
        self._state.pruner = self._pruner = pruner
        self._state.bare_pruner_name = type(study.pruner).__name__
        attachment = self._attacher.open(study, trial)
        with released_on_failure(attachment):
            self._resumer.resume(attachment, study, trial)
            # Released when this sampler is collected or the interpreter exits, so the next
            # process resumes at once instead of first proving this one gone.
            self._attacher.install(attachment, holder=self)
        return attachment

    def _logical(
        self, attachment: Attachment, study: Study, trial: FrozenTrial
    ) -> tuple[Study, FrozenTrial]:
        view, logical = self._apply_view(attachment, study, trial)
        if self._pruner is not None:
            # Optuna shows samplers a per-bracket study under a bare Hyperband only.
            view = self._pruner.sampler_view(view, logical)
        return view, logical

    def _logical_or_real(self, study: Study, trial: FrozenTrial) -> tuple[Study, FrozenTrial]:
        attachment = self._attacher.attachment
        if attachment is None:
            return study, trial
        return self._logical(attachment, study, trial)

    def _prune_logically(
        self, prune: Callable[[Study, FrozenTrial], bool], study: Study, trial: FrozenTrial
    ) -> bool:
        """Run a ``CheckpointingPruner``'s decision on the logical study.

        Under the sampling lock: the pruner's state is captured with the sampler's.
        """
        with self._sampling_lock:
            study, trial = self._apply_view(self._attacher.attachment, study, trial)
            with self._own_state(trial):
                return prune(study, trial)

    def _apply_view(
        self, attachment: Attachment | None, study: Study, trial: FrozenTrial
    ) -> tuple[Study, FrozenTrial]:
        """Return the study and trial as the logical run has them.

        That is the trial's fixed history in deterministic mode, else the study with its
        interrupted trials hidden.
        """
        fixed = None if self._parallel is None else self._parallel.view(trial)
        if fixed is not None:
            return fixed.apply(study, trial)
        if attachment is not None:
            return attachment.hidden.apply(study, trial)
        return study, trial

    def _own_state(self, trial: FrozenTrial) -> contextlib.AbstractContextManager[None]:
        """In deterministic mode, hold the trial's own random streams in the wrapped sampler."""
        return contextlib.nullcontext() if self._parallel is None else self._parallel.active(trial)
