"""Attaching a process to its checkpoint stream: choose it, take its lease, claim the trial.

On a sampler's first hook in a study, the attacher picks the stream this worker writes (its id,
or the first free slot), takes the stream's lease (creating the stream with an initial
checkpoint if it is new, or taking it over from a process that is gone), claims the trial Optuna
just created, and checks that the sampler is configured as the one that wrote the stream. What
it returns is an :class:`Attachment` holding the lease; resuming from the stream's checkpoints
is the next stage's job.
"""

from __future__ import annotations

from dataclasses import replace
import time
from typing import TYPE_CHECKING
from typing import Any

from optuna.storages import InMemoryStorage
from optuna.trial import TrialState

from optuna_checkpoint._logging import get_logger
from optuna_checkpoint.attach._attachment import Attachment
from optuna_checkpoint.attach._attachment import live_attachment
from optuna_checkpoint.attach._lease import Heartbeat
from optuna_checkpoint.attach._lease import LeaseVerdict
from optuna_checkpoint.attach._lease import current_owner
from optuna_checkpoint.attach._lease import judge_lease
from optuna_checkpoint.attach._lease import lease_timing
from optuna_checkpoint.attach._worker import MAIN_WORKER
from optuna_checkpoint.attach._worker import slot_names
from optuna_checkpoint.exceptions import ConfigMismatchError
from optuna_checkpoint.exceptions import StreamOwnedError
from optuna_checkpoint.state._fingerprint import differences
from optuna_checkpoint.state._fingerprint import same_configuration
from optuna_checkpoint.state._rows import SealedRows
from optuna_checkpoint.state._spawn import spawn_rng_states
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._open import store_for
from optuna_checkpoint.study._identity import first_trial
from optuna_checkpoint.study._identity import study_uid
from optuna_checkpoint.study._logical import HiddenTrials
from optuna_checkpoint.study._trials import INTERRUPTED_ATTR


if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from optuna_checkpoint.state._packing import CheckpointPacker
    from optuna_checkpoint.state._seal import Sealer
    from optuna_checkpoint.stores._base import Checkpoint
    from optuna_checkpoint.stores._base import CheckpointStore
    from optuna_checkpoint.stores._base import Owner
    from optuna_checkpoint.stores._base import Stream


_logger = get_logger(__name__)

CLAIM_WINDOW = 5.0
"""Seconds after its creation within which a live process claims its trial for its stream.

A worker claims its first trial a few queries after Optuna created it, and every later one in
the very transaction that creates it; an unclaimed trial older than this was left by a process
that died before its first sampler hook. The age is read from Optuna's ``datetime_start``, so
the hosts' clocks must agree to within a few seconds (as for Optuna's own heartbeat).
"""


class StreamAttacher:
    """Attaches one sampler to the checkpoint stream of each study it samples for.

    Args:
        packer: Captures the sampler's state as checkpoints (a new stream's initial one).
        fingerprint: The sampler's configuration, as described when it was constructed.
        worker_id: This worker's explicit id, or ``None`` to take the first free slot.
        start_new_stream: Discard the stream's checkpoints and start it again.
        grace_period: As given to the sampler (``None``: the storage's own, else the default).
        heartbeat_interval: Likewise.
        lineage: Shared by a sampler and its copies: an idle sampler of this process is taken
            over by a sampler of another lineage (the same study opened again), never by its
            own copy, which takes a stream of its own as a new process would.
    """

    def __init__(
        self,
        packer: CheckpointPacker,
        fingerprint: dict[str, Any],
        *,
        worker_id: str | None,
        start_new_stream: bool,
        grace_period: float | None,
        heartbeat_interval: float | None,
        lineage: str,
    ) -> None:
        self._packer = packer
        self._adapter = packer.state.adapter
        self._fingerprint = fingerprint
        self._worker_id = worker_id
        self._start_new_stream = start_new_stream
        self._grace_period = grace_period
        self._heartbeat_interval = heartbeat_interval
        self._lineage = lineage
        self.attachment: Attachment | None = None
        # Trials whose first hook has begun in this process but which are not claimed yet:
        # while one thread attaches, the trials other threads just created are live, not left
        # by a dead process.
        self.arrivals: set[int] = set()

    def current(self, study: Study) -> Attachment | None:
        """The attachment to ``study``, or ``None`` if this sampler must attach to it first.

        Raises:
            StreamOwnedError: Another sampler of this process took this one's stream over.
        """
        attachment = self.attachment
        if attachment is None:
            return None
        if attachment.superseded:
            raise StreamOwnedError(
                f"another CheckpointingSampler in this process took over this sampler's "
                f"checkpoint stream of study {study.study_name!r}; use that one."
            )
        if attachment.of(study._storage, study._study_id):
            return attachment
        self.attachment = None
        attachment.release()
        return None

    def open(self, study: Study, trial: FrozenTrial) -> Attachment:
        """Take this worker's stream of ``study`` for the trial Optuna just created.

        The attachment returned holds the lease but has not resumed yet; hand it to the resume,
        then :meth:`install` it.

        Raises:
            StreamOwnedError: The worker id is held by another live process.
            ConfigMismatchError: The stream was written by a sampler configured differently.
        """
        storage = study._storage
        store = store_for(storage)
        grace_period, heartbeat_interval = lease_timing(
            storage, self._grace_period, self._heartbeat_interval
        )
        # Not the sole stream yet (it is not chosen): study-held state is captured, not restored.
        self._adapter.bind_study(storage, study._study_id, sole_stream=False)
        # Captured before anything runs: worker streams are derived from the state as given.
        pristine = self._adapter.state_dict()
        uid = study_uid(study._study_id, study.study_name, first_trial(storage, study._study_id))
        store.open_study(study._study_id, uid)
        rows = SealedRows(store, uid, self._packer.sealer)
        me = current_owner()
        stream, created, sole_stream = self._choose_stream(
            rows, study, trial, me, pristine, grace_period
        )
        try:
            if not created:  # nothing written under a key that does not fit the study
                rows.check_key_fits(stream, checkpoints=not self._start_new_stream)
            # Claimed first, so a worker resuming meanwhile never takes it for a dead one's.
            claim_trial(rows, stream, study._study_id, trial)
            if self._start_new_stream and not created:
                stream = self._restart_stream(store, stream, me, study, trial, uid, pristine)
            else:
                self._check_fingerprint(rows, stream, study, trial)
            self._adapter.bind_study(storage, study._study_id, sole_stream=sole_stream)
        except BaseException:
            store.release(stream.stream_id, me.token)
            raise
        heartbeat = None
        if not isinstance(storage, InMemoryStorage):  # no other process to keep out
            heartbeat = Heartbeat(store, stream.stream_id, me.token, heartbeat_interval)
        return Attachment(
            storage=storage,
            study_id=study._study_id,
            study_uid=uid,
            store=store,
            rows=rows,
            stream=stream,
            owner=me,
            heartbeat=heartbeat,
            atomic=store.supports_commit_hook,
            lineage=self._lineage,
        )

    def install(self, attachment: Attachment, *, holder: object) -> None:
        """Make a resumed attachment current, released when ``holder`` goes.

        From now on the stream claims each trial in the transaction that creates it.
        """
        attachment.rows.claim_at_creation(attachment.stream, attachment.study_id)
        attachment.release_with(holder)
        self.attachment = attachment

    def claim(self, attachment: Attachment, trial: FrozenTrial) -> None:
        """Claim a trial this process created, if its creation did not already."""
        claim_trial(attachment.rows, attachment.stream, attachment.study_id, trial)

    def _choose_stream(
        self,
        rows: SealedRows,
        study: Study,
        trial: FrozenTrial,
        me: Owner,
        pristine: dict[str, Any],
        grace_period: float,
    ) -> tuple[Stream, bool, bool]:
        """Take the lease of this worker's stream, creating it if new.

        Returns:
            The stream, whether it was created now, and whether it is the study's only stream.
        """
        store, uid = rows.store, rows.study_uid
        explicit = self._worker_id is not None
        existing = {s.name: s for s in store.list_streams(uid)}
        names = iter([self._worker_id]) if self._worker_id is not None else slot_names()
        main_held: Stream | None = None  # "main", if a live process holds it
        for name in names:
            assert name is not None
            stream = existing.get(name)
            if stream is None:
                if main_held is not None and existing.keys() == {MAIN_WORKER}:
                    _warn_main_held(main_held, study, name)
                stream = store.create_stream(
                    study._study_id,
                    uid,
                    name,
                    self._fingerprint,
                    me,
                    self._initial_checkpoint(uid, name, pristine),
                    first_trial_number=first_trial_of_new_stream(
                        study._storage, study._study_id, trial
                    ),
                )
                if stream is not None:
                    if not existing and stream.first_trial_number > 0:
                        _announce_late_start(study, stream)
                    return stream, True, not existing
                # Another process created it first: it is an existing stream like any other.
                stream = store.find_stream(uid, name)
                assert stream is not None
            verdict = self._judge(stream, me, grace_period)
            if verdict.may_take_over and store.take_over(stream, me, time.time()):
                _logger.debug("Took over checkpoint stream %r: %s.", name, verdict.reason)
                return stream, False, existing.keys() <= {name}
            if not explicit:
                if name == MAIN_WORKER and not verdict.may_take_over:
                    main_held = stream
                continue  # a busy slot: try the next one
            if verdict.may_take_over:
                raise StreamOwnedError(
                    f"another process took over checkpoint stream {name!r} of study "
                    f"{study.study_name!r} at the same moment; run one process per worker id."
                )
            _close_refused_trial(
                rows, study, trial, "refused: another live process holds its worker id", stream
            )
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
            other = live_attachment(stream.owner.token)
            if other is not None and other.idle() and other.lineage != self._lineage:
                # The same study opened again in this process (e.g. a notebook cell run twice).
                other.supersede()
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
            spawned, generators = spawn_rng_states(pristine, stream_name)
            if generators:
                self._adapter.load_state_dict(spawned)
            else:
                _logger.warning(
                    "%s has no random generator optuna-checkpoint can derive per worker: seed "
                    "it differently in each worker, or workers may propose the same points.",
                    type(self._adapter.sampler).__name__,
                )
        return self._packer.pack(uid, stream_name, None, -1)

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

    def _check_fingerprint(
        self, rows: SealedRows, stream: Stream, study: Study, trial: FrozenTrial
    ) -> None:
        if same_configuration(stream.fingerprint, self._fingerprint):
            return
        lines = differences(stream.fingerprint, self._fingerprint)
        shown = "\n  ".join(lines[:20]) + ("\n  ..." if len(lines) > 20 else "")
        reason = "refused: the sampler is configured differently from the stream's"
        _close_refused_trial(rows, study, trial, reason, stream)
        raise ConfigMismatchError(
            f"study {study.study_name!r} was checkpointed by a sampler configured differently "
            f"from this one:\n  {shown}\nResume with the sampler constructed exactly as before "
            "(same class, arguments and seed) to continue the same trajectory, or pass "
            "start_new_stream=True to CheckpointingSampler to discard the checkpoints and "
            "continue with this configuration."
        )


def _warn_main_held(main: Stream, study: Study, name: str) -> None:
    """Warn that this run becomes a second worker because a live process holds ``main``.

    Only when the study had ``main`` alone: that is a re-run meeting a leftover process (an idle
    notebook kernel, a hung job, a double launch) as often as a first parallel launch, and only
    the user knows which. The single reproducible run is ``main``'s, so say so once.
    """
    holder = "a live process"
    if main.owner is not None:
        age = max(0.0, time.time() - main.heartbeat_at)
        holder = f"pid {main.owner.pid} on {main.owner.host} (heartbeat {age:.0f} s ago)"
    _logger.warning(
        "Checkpoint stream %r of study %r is held by %s, so this process joins the study as "
        "worker %r, with random streams of its own: it is not an exact resume of %r. If that "
        "process is a leftover, stop it and run again; to fail instead of joining, pass "
        "worker_id=%r to CheckpointingSampler. (Starting several workers on purpose? Then this "
        "is expected.)",
        MAIN_WORKER,
        study.study_name,
        holder,
        name,
        MAIN_WORKER,
        MAIN_WORKER,
    )


def _announce_late_start(study: Study, stream: Stream) -> None:
    """Say from which trial on a study that ran without checkpoints is resumed exactly."""
    first = stream.first_trial_number
    _logger.info(
        "Study %r has %d trial%s from runs without optuna-checkpoint: checkpointing starts "
        "with trial %d, and a resume reproduces the run from there on (the earlier trials are "
        "history the sampler reads, as they are).",
        study.study_name,
        first,
        "" if first == 1 else "s",
        first,
    )


def claim_trial(rows: SealedRows, stream: Stream, study_id: int, trial: FrozenTrial) -> None:
    """Claim a trial this process created for its stream (done at its creation, if it can).

    Raises:
        StreamOwnedError: Another worker's resume took the trial for an abandoned one first.
        CorruptCheckpointError: The claim that holds the trial instead fails its seal.
    """
    if not rows.claim(stream, study_id, trial._trial_id):
        raise StreamOwnedError(
            f"trial {trial.number}, which this process had just created, was taken for an "
            "abandoned one by another worker's resume before this process could claim it "
            f"(the claim window is {CLAIM_WINDOW:.0f} s; is the database overloaded, or "
            "are the hosts' clocks apart?). Run this worker again."
        )


def first_trial_of_new_stream(storage: BaseStorage, study_id: int, current: FrozenTrial) -> int:
    """Return the number of the first trial a new stream counts as its own.

    Optuna creates a trial before any sampler hook runs, so a process killed in that gap leaves
    a RUNNING trial that no sampler ever saw: nothing suggested, nothing reported, no attribute.
    Trials like that right before the current one are the new stream's stillborn attempts; the
    resume then hides and closes them like any interrupted trial.
    """
    number = current.number
    while number > 0:
        previous = storage.get_trial(
            storage.get_trial_id_from_study_id_trial_number(study_id, number - 1)
        )
        touched = (
            previous.params
            or previous.intermediate_values
            or previous.system_attrs
            or previous.user_attrs
        )
        if previous.state != TrialState.RUNNING or touched:
            break
        number -= 1
    return number


def refuse_trial(study: Study, trial: FrozenTrial, reason: str, sealer: Sealer) -> None:
    """Close ``trial``, which this process had just created, because it refuses to run it.

    Left RUNNING, it would be a pending trial to other workers' constant-liar TPE, and the next
    run of this worker would take it for its own interrupted trial and retry it, saying its
    process died. Recorded as an interruption that no stream ran (sealed by ``sealer``), it is
    hidden from every sampler, retried by no one, and shows ``reason``.
    """
    storage, study_id = study._storage, study._study_id
    store = store_for(storage)
    uid = study_uid(study_id, study.study_name, first_trial(storage, study_id))
    store.open_study(study_id, uid)
    streams = store.list_streams(uid)
    _close_refused_trial(
        SealedRows(store, uid, sealer), study, trial, reason, streams[0] if streams else None
    )


def _close_refused_trial(
    rows: SealedRows, study: Study, trial: FrozenTrial, reason: str, stream: Stream | None
) -> None:
    """:func:`refuse_trial` with the study's rows at hand, and a stream of the study if any.

    The key is tried on the study first (:meth:`SealedRows.check_key_fits`): a process with the
    wrong key leaves its trial RUNNING and unclaimed, for the next resume to adopt, rather than
    a row the study's workers could not check.
    """
    if stream is not None:
        rows.check_key_fits(stream)
    hidden = HiddenTrials.of(rows.interruptions())
    logical = hidden.logical_number(trial.number)
    rows.add_interruptions(
        study._study_id, [Interruption(trial._trial_id, trial.number, logical, reason)]
    )
    study._storage.set_trial_system_attr(trial._trial_id, INTERRUPTED_ATTR, reason)
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
