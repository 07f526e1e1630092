"""Resuming a stream: roll forward, close the interrupted trials, restore the newest state.

Runs once per attachment, right after the attacher took the stream's lease, inside the first
hook of the trial Optuna just created. The rules for which trials count as interrupted are in
:mod:`optuna_checkpoint.resume._interruptions` and docs/design.md, §4.
"""

from __future__ import annotations

from collections.abc import Container
from typing import TYPE_CHECKING

from optuna.trial import TrialState

from optuna_checkpoint._faults import crash_point
from optuna_checkpoint._logging import get_logger
from optuna_checkpoint.attach._attacher import CLAIM_WINDOW
from optuna_checkpoint.attach._attacher import refuse_trial
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.exceptions import MissingCheckpointError
from optuna_checkpoint.resume._evidence import describe_missing
from optuna_checkpoint.resume._evidence import lost_checkpoints_of_stream
from optuna_checkpoint.resume._interruptions import RETRIES_EXHAUSTED
from optuna_checkpoint.resume._interruptions import adoptable_trials
from optuna_checkpoint.resume._interruptions import check_trials_named
from optuna_checkpoint.resume._interruptions import find_interrupted
from optuna_checkpoint.resume._interruptions import mark_retry
from optuna_checkpoint.resume._interruptions import roll_forward
from optuna_checkpoint.study._logical import HiddenTrials
from optuna_checkpoint.study._trials import close_as_interrupted
from optuna_checkpoint.study._trials import ended_unsaved
from optuna_checkpoint.study._trials import forget_trials_of_this_trial
from optuna_checkpoint.study._trials import trials_of_this_trial


if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from optuna_checkpoint.attach._attachment import Attachment
    from optuna_checkpoint.state._packing import CheckpointPacker
    from optuna_checkpoint.stores._base import Checkpoint
    from optuna_checkpoint.stores._base import Interruption


_logger = get_logger(__name__)

RESUME_LOOKBACK = 2
"""How many of a stream's newest checkpoints a resume may need: the ``limit`` it passes to
:meth:`CheckpointStore.resume_point`. The newest checkpoint may belong to a trial that failed as
its process stopped (Ctrl-C); the resume then hides that trial and restores the checkpoint
before it."""

_THIS_PROCESS = -1  # stands for a claim by another thread of this process


class Resumer:
    """Brings a freshly attached stream to where the uninterrupted run would be.

    Args:
        packer: Restores the sampler's (and pruner's) state from a checkpoint.
        max_retries: How often a trial interrupted at the same logical position is retried
            (``None``: always).
        arrivals: Trials whose first hook other threads of this process have begun: live,
            though not claimed yet.
    """

    def __init__(
        self, packer: CheckpointPacker, *, max_retries: int | None, arrivals: Container[int]
    ) -> None:
        self._packer = packer
        self._adapter = packer.state.adapter
        self._max_retries = max_retries
        self._arrivals = arrivals

    def resume(self, attachment: Attachment, study: Study, current: FrozenTrial) -> None:
        """Close interrupted trials and restore the state from before the next logical trial.

        Sets ``attachment.hidden`` to the trials the wrapped sampler must not see.

        A refused resume closes ``current`` at once, with the reason, so that it is neither
        left RUNNING for other workers nor retried by the next run as if its process had died.

        Raises:
            CorruptCheckpointError: No checkpoint to resume from, or one that does not hold.
            MissingCheckpointError: Finished trials of the stream are newer than its newest
                checkpoint.
            SignatureError, VersionMismatchError, ConfigMismatchError: As the restore finds.
        """
        try:
            self._resume(attachment, study, current)
        except CheckpointError as error:
            reason = f"refused: its resume failed ({type(error).__name__})"
            refuse_trial(study, current, reason, self._packer.sealer)
            raise

    def _resume(self, attachment: Attachment, study: Study, current: FrozenTrial) -> None:
        all_trials = trials_of_this_trial(study)
        storage = attachment.storage
        # Only the newest two checkpoints are needed: the FAIL-marker rule below may hide the
        # newest, and no rule hides a trial before it that has a checkpoint.
        known, latest = attachment.rows.resume_point(
            attachment.stream.stream_id, limit=RESUME_LOOKBACK
        )
        trials = {t._trial_id: t for t in all_trials}
        check_trials_named(trials, latest, known, attachment.stream)
        newest = latest[0] if latest else None
        if newest is not None and newest.trial_state is not None:
            # Before its recorded end is trusted.
            self._packer.check_seal(newest, attachment.study_uid, attachment.stream.name)
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
        attachment.rows.add_interruptions(attachment.study_id, fresh)
        interrupted = sorted([*known, *fresh], key=lambda i: i.trial_number)
        # This stream's own: another worker's recorded ones are closed by that worker's resume,
        # which may be doing so right now.
        stream_id = attachment.stream.stream_id
        reasons = {i.trial_id: i.reason for i in interrupted if i.stream_id == stream_id}
        reasons.update((t._trial_id, RETRIES_EXHAUSTED) for t in exhausted)
        for trial_id, reason in reasons.items():
            trial = trials.get(trial_id)  # None: a row naming a trial the study does not have
            if trial is not None and trial.state == TrialState.RUNNING:
                close_as_interrupted(storage, trial_id, reason)
                changed = True
        attachment.hidden = HiddenTrials.of(interrupted)
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
        restored = None if checkpoint.trial_id is None else trials.get(checkpoint.trial_id)
        if restored is None and checkpoint.trial_id is not None:
            raise CorruptCheckpointError(
                f"the newest checkpoint of stream {attachment.stream.name!r} belongs to trial id "
                f"{checkpoint.trial_id}, which the study does not have: the checkpoint was "
                "copied from another study or the trial deleted. Inspect it with "
                "optuna-checkpoint status, or pass start_new_stream=True to "
                "CheckpointingSampler to start the stream again."
            )
        restored_after = -1 if restored is None else restored.number
        _refuse_if_checkpoints_lost(attachment, list(trials.values()), restored_after)
        self._packer.unpack(checkpoint, attachment.study_uid, attachment.stream.name)
        repeated = mark_retry(
            storage, current, interrupted, attachment.stream.stream_id, restored_after
        )
        if restored is not None or repeated:
            _logger.info(resume_line(attachment, study, current, restored, repeated))
        crash_point("after_resume")
        if changed:
            # What the wrapped sampler reads next must be what is stored now.
            forget_trials_of_this_trial(study)

    def _unfinished_trials_of_stream(
        self,
        attachment: Attachment,
        all_trials: list[FrozenTrial],
        trials: dict[int, FrozenTrial],
        current: FrozenTrial,
        known: list[Interruption],
        newest: Checkpoint | None,
    ) -> set[int]:
        """The unfinished trials this stream's previous owner ran: claimed by it, or adopted.

        Also its trials that ended without their checkpoint (tagged so by their process).

        A trial no stream claimed after the claim window was created by a process that died
        before its first sampler hook; the first worker to resume adopts it, atomically, so it
        is hidden and retried exactly once. Other workers' trials are never touched.
        """
        stream = attachment.stream
        hidden = {i.trial_id for i in known}
        newest_trial = trials.get(newest.trial_id) if newest and newest.trial_id else None
        after = newest_trial.number if newest_trial is not None else -1
        candidates = [
            t
            for t in all_trials
            if (
                t.state == TrialState.RUNNING
                or (t.state == TrialState.FAIL and t.number > after)
                or ended_unsaved(t)
            )
            and t._trial_id != current._trial_id
            and t._trial_id not in hidden
        ]

        def claims_of(trial_ids: list[int]) -> dict[int, int]:
            claims = attachment.rows.claims(trial_ids)
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
            if attachment.rows.claim(stream, attachment.study_id, trial._trial_id):
                mine.add(trial._trial_id)
        return mine


def _refuse_if_checkpoints_lost(
    attachment: Attachment, trials: list[FrozenTrial], restored_after: int
) -> None:
    """Refuse to resume from a state older than finished trials of the stream (see _evidence).

    Raises:
        MissingCheckpointError: Such trials exist.
    """
    missing = lost_checkpoints_of_stream(
        attachment.store,
        attachment.rows.claims,
        attachment.stream,
        trials,
        restored_after,
        attachment.hidden.trial_ids,
    )
    if missing:
        raise MissingCheckpointError(
            f"{describe_missing(attachment.stream.name, missing, restored_after)}. Resuming "
            "from the older state would not continue the run. If a backup of the database "
            "holds them, restore it; to continue anyway, not exactly, pass "
            "start_new_stream=True to CheckpointingSampler ('optuna-checkpoint status' shows "
            "the streams)."
        )


def resume_line(
    attachment: Attachment,
    study: Study,
    current: FrozenTrial,
    restored: FrozenTrial | None,
    repeated: list[Interruption],
) -> str:
    """The line that tells the user what a resume did: from where, and what is retried."""
    stream = attachment.stream
    if restored is None:
        source = "from its initial state"
    else:
        source = f"after trial {restored.number}"
        if restored.datetime_complete is not None:
            source += f", finished {restored.datetime_complete:%Y-%m-%d %H:%M:%S}"
        if stream.owner is not None:  # the process that held the stream last, unless it let go
            source += f" by pid {stream.owner.pid} on {stream.owner.host}"
    logical = attachment.hidden.logical_number(current.number)
    if repeated:
        first = repeated[0]
        next_trial = (
            f"trial {current.number} retries trial {first.trial_number}, interrupted: "
            f"{first.reason}"
        )
    elif logical != current.number:
        next_trial = f"trial {current.number} is trial {logical} of the uninterrupted run"
    else:
        next_trial = f"trial {current.number} continues the run"
    return (
        f"Resumed study {study.study_name!r} exactly (checkpoint stream {stream.name!r}, "
        f"{source}): {next_trial}."
    )


def refresh_hidden_trials(attachment: Attachment, *, without_hint: bool = False) -> None:
    """Hide the trials other processes closed as interrupted since this one resumed.

    Another process may have closed a trial it created here while this one owned the stream
    (it was refused); hide that trial too, as an uninterrupted run never had it. The
    interruptions are read again when the store's count of them, read in passing, differs from
    what this process knows; a store that keeps no such count is read again only if
    ``without_hint`` (the deterministic mode needs every process's interruptions at once).
    """
    hint = attachment.store.interruption_count_hint(attachment.study_uid)
    if without_hint if hint is None else hint != len(attachment.hidden.trial_ids):
        attachment.hidden = HiddenTrials.of(attachment.rows.interruptions())
