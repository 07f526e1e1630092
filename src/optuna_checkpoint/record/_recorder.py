"""Recording a trial's checkpoint: capture -> encode -> seal -> save inside the trial's commit.

From a trial's first hook until its state is captured, its store refuses to commit the trial's
end without a checkpoint: a kill or Ctrl-C landing anywhere in between leaves the trial RUNNING,
to be retried, instead of finished with the state of an earlier trial. The capture then rides
in the very transaction in which Optuna stores the trial's end (stores with a commit hook), or
is saved just before it (the others, whose resume rolls the trial forward from it).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from optuna.trial import TrialState

from optuna_checkpoint._faults import crash_point
from optuna_checkpoint._logging import get_logger
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.study._positions import POSITION_ATTR
from optuna_checkpoint.study._trials import CHECKPOINT_NOT_SAVED
from optuna_checkpoint.study._trials import CUT_OFF_BY_CTRL_C
from optuna_checkpoint.study._trials import INTERRUPTED_ATTR
from optuna_checkpoint.study._trials import cut_off_by_ctrl_c


if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from optuna_checkpoint.attach._attachment import Attachment
    from optuna_checkpoint.record._retention import AmortizedPruning
    from optuna_checkpoint.state._packing import CheckpointPacker
    from optuna_checkpoint.stores._base import Checkpoint


_logger = get_logger(__name__)


class TrialRecorder:
    """Checkpoints each trial of an attachment, and checks that the checkpoint went out.

    Args:
        packer: Packs the sampler's (and pruner's) state into sealed checkpoints.
        pruning: Deletes old checkpoints as :class:`~optuna_checkpoint.Retention` says, or
            ``None`` to keep them all.
        deterministic: The study runs in deterministic parallel mode, whose scheduler gives
            trials their positions and records them.
    """

    def __init__(
        self,
        packer: CheckpointPacker,
        pruning: AmortizedPruning | None,
        *,
        deterministic: bool = False,
    ) -> None:
        self._packer = packer
        self._pruning = pruning
        self._deterministic = deterministic
        # The trial each thread started last, settled when that thread starts its next one.
        self._thread_last_trial = threading.local()
        # In deterministic parallel mode concurrent trials resume exactly: no warning.
        self._warned_concurrency = deterministic

    def settle_previous(self, attachment: Attachment) -> None:
        """Check the trial this thread started last, now that it starts another; prune.

        Its deferred checkpoint should have gone out with the commit of its end. Still pending
        on a finished trial means Optuna stopped finishing trials the way the commit hook
        expects: continuing would resume inexactly after the next kill, so the study stops.
        Still pending on a RUNNING trial means that commit was refused; the marker goes.
        Finished although its ``after_trial`` never ran here, it was told by another process
        (a copy of the study, say in a ``ProcessPoolExecutor``): this process has no end to
        checkpoint, and its next trial's checkpoint carries the state on.
        Only this thread's own trial is looked at: the store's pending set is shared with
        other threads (``n_jobs > 1``) and other samplers on the same storage, whose trials may
        be between their capture and their commit right now.

        Raises:
            CheckpointError: The previous trial was stored as finished without its checkpoint.
        """
        trial_id: int | None = getattr(self._thread_last_trial, "trial_id", None)
        self._thread_last_trial.trial_id = None
        if trial_id is not None:
            self._settle(attachment, trial_id)
        if self._pruning is not None:
            self._pruning.checkpoint_committed(
                attachment.store, attachment.stream, attachment.hidden.trial_ids
            )

    @staticmethod
    def _settle(attachment: Attachment, trial_id: int) -> None:
        pending = attachment.atomic and trial_id in attachment.store.pending_trial_ids()
        if pending:
            attachment.store.discard_pending(trial_id)
        told_elsewhere = trial_id in attachment.trials_in_progress
        if not (pending or told_elsewhere):
            return
        if not attachment.storage.get_trial(trial_id).state.is_finished():
            return
        if told_elsewhere:
            attachment.trials_in_progress.discard(trial_id)
            return
        attachment.atomic = False
        raise CheckpointError(
            f"trial id {trial_id} was stored as finished without its checkpoint: this Optuna "
            "version stores trial results in a way optuna-checkpoint does not recognise. "
            "Please report it with your Optuna version."
        )

    def begin(self, attachment: Attachment, trial: FrozenTrial) -> None:
        """Note that ``trial`` started, and hold its end's commit until its checkpoint comes."""
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
        position = attachment.hidden.logical_number(trial.number)
        if position != trial.number and not self._deterministic:
            # For filtering in optuna-dashboard; a trial without it holds its own number (no
            # write at all until the first interruption).
            attachment.storage.set_trial_system_attr(trial._trial_id, POSITION_ATTR, position)
        if attachment.atomic:
            # From here until the state is captured, a commit of this trial's end is refused:
            # a Ctrl-C landing anywhere in between must leave it RUNNING.
            attachment.store.defer_save_to_trial_commit(
                attachment.stream, trial._trial_id, None, attachment.owner.token
            )

    @staticmethod
    def mark_if_cut_off(
        attachment: Attachment, trial: FrozenTrial, position: int, state: TrialState, *, hide: bool
    ) -> bool:
        """Tag a trial that Ctrl-C cut off as interrupted, before Optuna stores it as FAIL.

        Returns whether Ctrl-C cut it off (the later stages of ``after_trial`` need to know).

        Optuna tells it as an ordinary FAIL, and a finished trial can no longer be tagged, so
        this is the last moment. With ``hide`` (the deterministic mode) the interruption is also
        recorded at once: other workers would otherwise take the FAIL for the trial's genuine
        result, and its position would never run again. Without, the next resume of the stream
        hides it (its rule for a stream's newest FAIL).
        """
        if state != TrialState.FAIL or not cut_off_by_ctrl_c():
            return False
        reason = CUT_OFF_BY_CTRL_C
        if hide:
            stream_id = attachment.stream.stream_id
            attachment.rows.add_interruptions(
                attachment.study_id,
                [Interruption(trial._trial_id, trial.number, position, reason, stream_id)],
            )
        attachment.storage.set_trial_system_attr(trial._trial_id, INTERRUPTED_ATTR, reason)
        return True

    def fail_unsaved(
        self, attachment: Attachment, trial: FrozenTrial, error: BaseException
    ) -> None:
        """Store as FAIL, tagged, a trial whose ``after_trial`` failed before its checkpoint.

        Only for stores without a commit hook, which cannot refuse the trial's end as SQL
        stores do: Optuna stores it in a ``finally`` after ``after_trial``, and a trial stored
        as finished without its checkpoint would make the next resume restore an older state.
        Stored first as FAIL (Optuna's own write then fails), it is retried like any
        interrupted trial (in the deterministic mode, other workers' schedulers skip a tagged
        trial at once). Best effort, as the process is already failing: a write that fails too
        leaves the original exception to propagate.
        """
        try:
            attachment.storage.set_trial_system_attr(
                trial._trial_id, INTERRUPTED_ATTR, CHECKPOINT_NOT_SAVED
            )
            attachment.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except Exception:
            _logger.debug("Trial %d could not be failed as unsaved.", trial.number, exc_info=True)
            return
        _logger.warning(
            "Trial %d was stopped (%s) before its checkpoint was saved: it is stored as failed, "
            "and the next run retries it. Optuna's UpdateFinishedTrialError below follows from "
            "this.",
            trial.number,
            type(error).__name__,
        )

    def capture(
        self,
        attachment: Attachment,
        trial: FrozenTrial,
        logical_number: int,
        state: TrialState,
        values: list[float] | None,
    ) -> Checkpoint:
        """The trial's checkpoint: the state right after the wrapped sampler's ``after_trial``.

        Call it under the lock that keeps other threads from sampling meanwhile, so that the
        checkpoint is a state that existed.
        """
        return self._packer.pack(
            attachment.study_uid,
            attachment.stream.name,
            trial._trial_id,
            logical_number,
            state,
            values,
        )

    def record(self, attachment: Attachment, trial: FrozenTrial, checkpoint: Checkpoint) -> None:
        """Hand the checkpoint to the store, to be written with the trial's end."""
        attachment.trials_in_progress.discard(trial._trial_id)
        if attachment.atomic:
            attachment.store.defer_save_to_trial_commit(
                attachment.stream, trial._trial_id, checkpoint, attachment.owner.token
            )
        else:
            attachment.store.save(
                attachment.stream, checkpoint, attachment.owner.token, time.time()
            )
            crash_point("after_save")
