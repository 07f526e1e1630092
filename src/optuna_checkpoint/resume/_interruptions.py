"""Which trials a resume treats as interrupted, and how their retries are marked.

A retried trial is a new trial (no sampler hook runs before Optuna creates one), so resuming
means finding the attempts the previous owner left unfinished, hiding them from the wrapped
sampler, and telling the retry which attempts it repeats. The rules are in docs/design.md, §4.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Mapping
from collections.abc import Sequence
import datetime
import time
from typing import TYPE_CHECKING

from optuna.trial import TrialState

from optuna_checkpoint._logging import get_logger
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.state._packing import RESTORE_REMEDY
from optuna_checkpoint.state._packing import no_such_trial
from optuna_checkpoint.state._rows import ROW_REMEDY
from optuna_checkpoint.state._rows import describe_interruption
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.study._logical import HiddenTrials
from optuna_checkpoint.study._trials import FAILED_TRIAL_ATTR
from optuna_checkpoint.study._trials import RETRY_HISTORY_ATTR
from optuna_checkpoint.study._trials import ended_unsaved


if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

    from optuna_checkpoint.stores._base import Stream


_logger = get_logger(__name__)

RETRIES_EXHAUSTED = "retries exhausted; kept as a genuine failure"


def check_trials_named(
    trials: Mapping[int, FrozenTrial],
    checkpoints: Sequence[Checkpoint],
    interruptions: Sequence[Interruption],
    stream: Stream,
) -> None:
    """Refuse a checkpoint, or an interruption of ``stream``, that names a trial not in the study.

    The resume looks up the trials these name. Other streams' interruptions are left alone:
    another worker may record a trial it created after ``trials`` was read.

    Raises:
        CorruptCheckpointError: Naming the stream and the row.
    """
    for checkpoint in checkpoints:
        if checkpoint.trial_id is not None and checkpoint.trial_id not in trials:
            raise no_such_trial(checkpoint, stream.name, RESTORE_REMEDY)
    for i in interruptions:
        if i.stream_id == stream.stream_id and i.trial_id not in trials:
            raise CorruptCheckpointError(
                f"{describe_interruption(i)} in stream {stream.name!r} names a trial the study "
                "does not have: the row was altered, or copied from another study." + ROW_REMEDY
            )


def roll_forward(storage: BaseStorage, trial: FrozenTrial, checkpoint: Checkpoint) -> bool:
    """Store a trial's end that only its checkpoint recorded (stores without a commit hook).

    Returns:
        Whether the trial's end was stored now.
    """
    if trial.state != TrialState.RUNNING or checkpoint.trial_state is None:
        return False
    _logger.info(
        "Trial %d: storing its final state, which was saved only in its checkpoint.", trial.number
    )
    storage.set_trial_state_values(
        trial._trial_id, TrialState[checkpoint.trial_state], checkpoint.trial_values
    )
    return True


def adoptable_trials(
    unclaimed: Sequence[FrozenTrial],
    claims_of: Callable[[list[int]], dict[int, int]],
    claim_window: float,
) -> list[FrozenTrial]:
    """Return the unclaimed RUNNING trials that stay unclaimed for the whole claim window.

    A live process claims its trial within ``claim_window`` seconds of creating it; a trial
    younger than that may be one just being started elsewhere, so this waits (only then) until
    it is either claimed or old enough to have been left by a process that died.
    """
    pending = list(unclaimed)
    window = datetime.timedelta(seconds=claim_window)
    while pending:
        now = datetime.datetime.now()
        ages = [now - t.datetime_start for t in pending if t.datetime_start is not None]
        youngest = min(ages, default=window)
        if youngest >= window:
            break
        time.sleep(min(0.25, (window - youngest).total_seconds()))
        claimed = claims_of([t._trial_id for t in pending])
        pending = [t for t in pending if t._trial_id not in claimed]
    return pending


def find_interrupted(
    trials: dict[int, FrozenTrial],
    current: FrozenTrial,
    known: list[Interruption],
    newest: Checkpoint | None,
    *,
    mine: Collection[int],
    stream_id: int,
    max_retries: int | None,
) -> tuple[list[Interruption], list[FrozenTrial]]:
    """Find the trials the previous owner of the stream left unfinished.

    Args:
        trials: All trials of the study, by id.
        current: The trial this process is starting.
        known: Interruptions recorded before, of every stream.
        newest: The stream's newest checkpoint whose trial is not hidden yet.
        mine: The ids of the unfinished trials the stream ran (claimed by it, or adopted), and
            of its finished ones that their process tagged as ended unsaved.
        stream_id: The stream resuming.
        max_retries: How often one logical position may be retried; ``None``: no limit.

    Returns:
        The new interruptions (to hide and retry), and the RUNNING trials to close as FAIL
        without a retry because their logical position has used up its retries.
    """
    hidden_pairs = [(i.trial_id, i.trial_number) for i in known]
    attempts: dict[int, int] = {}
    for interruption in known:
        if interruption.stream_id == stream_id:
            logical = interruption.logical_number
            attempts[logical] = attempts.get(logical, 0) + 1
    fresh: list[Interruption] = []
    exhausted: list[FrozenTrial] = []

    def interrupt(trial: FrozenTrial, reason: str) -> None:
        if any(i.trial_id == trial._trial_id for i in fresh):
            # Two rules can name one trial: an unsaved one whose checkpoint made it after all is
            # also the stream's newest FAIL. Hidden twice, it would shift every later number.
            return
        logical = HiddenTrials(hidden_pairs).logical_number(trial.number)
        if max_retries is not None and attempts.get(logical, 0) >= max_retries:
            _logger.warning(
                "Trial %d was interrupted %d times at the same point of the trajectory; its "
                "failure is now treated as genuine and it is not retried again.",
                trial.number,
                attempts[logical] + 1,
            )
            if trial.state == TrialState.RUNNING:
                exhausted.append(trial)
            return
        attempts[logical] = attempts.get(logical, 0) + 1
        fresh.append(Interruption(trial._trial_id, trial.number, logical, reason, stream_id))
        hidden_pairs.append((trial._trial_id, trial.number))

    newest_trial = trials.get(newest.trial_id) if newest and newest.trial_id else None
    # Trials after the newest checkpoint never reached after_trial (each one that does gets a
    # checkpoint in the same transaction): the previous owner, now gone, was running them.
    # They are RUNNING, or FAIL if Optuna's heartbeat check failed them as stale meanwhile.
    last_checkpointed = -1 if newest_trial is None else newest_trial.number
    known_ids = {i.trial_id for i in known}
    # Only this stream's own trials: another worker's, or one from before this stream, is
    # left as it is.
    for trial in sorted((trials[i] for i in mine if i in trials), key=lambda t: t.number):
        if trial._trial_id == current._trial_id or trial._trial_id in known_ids:
            continue
        if trial.state == TrialState.RUNNING:
            interrupt(trial, "its process died while the trial ran")
        elif ended_unsaved(trial):
            interrupt(trial, "it ended, but its process stopped before saving its checkpoint")
        elif trial.state == TrialState.FAIL and trial.number > last_checkpointed:
            interrupt(trial, "its process died while the trial ran; failed as stale")

    # A Ctrl-C in the objective reaches after_trial as an ordinary FAIL, and the process then
    # exits; no hook sees the exception. So a FAIL with the newest checkpoint is retried: had
    # the process gone on, the next trial's checkpoint would be newer. A genuine, deterministic
    # failure retried this way just fails again, at the same place of the trajectory.
    if newest_trial is not None and newest_trial.state == TrialState.FAIL:
        interrupt(newest_trial, "the newest checkpoint is of this failed trial (Ctrl-C?)")
    return fresh, exhausted


def mark_retry(
    storage: BaseStorage,
    current: FrozenTrial,
    interrupted: list[Interruption],
    stream_id: int,
    restored_after: int,
) -> list[Interruption]:
    """Tell the current trial which interrupted attempts it repeats, as Optuna's retries do.

    Those are the stream's attempts after ``restored_after``, the number of the trial whose
    checkpoint was restored (``-1`` for the initial one): each started from that same state.

    Returns:
        Those attempts, oldest first.
    """
    repeated = [
        i for i in interrupted if i.stream_id == stream_id and i.trial_number > restored_after
    ]
    if not repeated:
        return repeated
    previous = [i.trial_number for i in repeated]
    for key, value in ((FAILED_TRIAL_ATTR, previous[0]), (RETRY_HISTORY_ATTR, previous)):
        storage.set_trial_system_attr(current._trial_id, key, value)
        # The Trial object Optuna is building holds this very FrozenTrial.
        current.system_attrs[key] = value
    return repeated
