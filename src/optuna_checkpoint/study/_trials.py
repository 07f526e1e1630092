"""How this package marks and reads trials in Optuna's own storage.

The tags it writes are Optuna system attributes, so users can filter on them (e.g. in
optuna-dashboard); the retry attributes carry the names Optuna's ``RetryFailedTrialCallback``
uses, so Optuna's helpers read our retries as their own.
"""

from __future__ import annotations

import inspect
import sys
from typing import TYPE_CHECKING

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from optuna_checkpoint._logging import get_logger


if TYPE_CHECKING:
    from types import FrameType

    from optuna.storages import BaseStorage
    from optuna.study import Study
    from optuna.trial import FrozenTrial


_logger = get_logger(__name__)

INTERRUPTED_ATTR = "optuna_checkpoint:interrupted"
"""System attribute set on a trial that was interrupted (and retried, unless it says not)."""

TOLD_ELSEWHERE_ATTR = "optuna_checkpoint:told_elsewhere"
"""System attribute set on a trial told by a process not attached to the stream that claimed it.

That process has no checkpoint of the stream to write, so such a trial legitimately finishes
without one; a finished trial without a checkpoint and without this tag is evidence of a lost or
deleted checkpoint."""

# Optuna's own retry bookkeeping, read by RetryHeartbeatStaleTrialCallback.retried_trial_number.
FAILED_TRIAL_ATTR = "failed_trial"
RETRY_HISTORY_ATTR = "retry_history"
"""Optuna's system attributes of a retry (as ``RetryFailedTrialCallback`` sets them): the first
attempt it repeats, and every one, by trial number."""


def close_as_interrupted(storage: BaseStorage, trial_id: int, reason: str) -> None:
    """Close an interrupted trial as FAIL, tagged with why, unless something closed it already."""
    try:
        storage.set_trial_system_attr(trial_id, INTERRUPTED_ATTR, reason)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        # Closing is idempotent: e.g. a resume of this stream that was cut short, and Optuna's
        # heartbeat failing the same stale trial meanwhile.
        _logger.debug("Trial id %d was already closed.", trial_id)


def mark_told_elsewhere(storage: BaseStorage, trial_id: int) -> None:
    """Tag a trial this process tells but did not run, so its missing checkpoint is no alarm."""
    storage.set_trial_system_attr(
        trial_id, TOLD_ELSEWHERE_ATTR, "told by a process that did not run it"
    )


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


OPTUNA_HAS_TRIAL_CACHE = _optuna_has_trial_cache()


def trials_of_this_trial(study: Study) -> list[FrozenTrial]:
    """Every trial, read through the study's per-trial cache, sorted by number.

    ``Study.ask`` empties that cache right before it creates the trial whose first hook this
    is, and Optuna's samplers fill it on their first read of the trial. Read through it, the
    resume's read of the study is the one the wrapped sampler then uses, not an extra one.
    """
    if OPTUNA_HAS_TRIAL_CACHE:
        return study._get_trials(deepcopy=False, use_cache=True)
    return study._storage.get_all_trials(study._study_id, deepcopy=False)


def forget_trials_of_this_trial(study: Study) -> None:
    """Empty the per-trial cache after the resume changed a trial in storage."""
    thread_local = getattr(study, "_thread_local", None)
    if thread_local is not None:
        thread_local.cached_all_trials = None


CUT_OFF_BY_CTRL_C = "Ctrl-C (KeyboardInterrupt) cut it off"
"""The :data:`INTERRUPTED_ATTR` of a trial that Ctrl-C cut off, which its own process tags."""

CHECKPOINT_NOT_SAVED = "its process stopped before saving its checkpoint"
"""The :data:`INTERRUPTED_ATTR` of a trial whose ``after_trial`` failed before its checkpoint.

Optuna stores a trial's end in a ``finally`` after the sampler's ``after_trial``, so an exception
there (Ctrl-C) does not stop it. On SQL storages the store then refuses that commit; on stores
without a commit hook the trial's own process stores it as FAIL first, tagged so.
"""


def ended_unsaved(trial: FrozenTrial) -> bool:
    """Whether ``trial`` is tagged :data:`CHECKPOINT_NOT_SAVED` by its own process."""
    return trial.system_attrs.get(INTERRUPTED_ATTR) == CHECKPOINT_NOT_SAVED


def cut_off_by_ctrl_c() -> bool | None:
    """Whether the trial Optuna is telling now failed by a ``KeyboardInterrupt`` (Ctrl-C).

    Optuna catches it in ``optuna.study._optimize._run_trial``, tells the trial as an ordinary
    FAIL (the sampler's ``after_trial`` runs then) and re-raises it afterwards; until then the
    exception is only that frame's local ``func_err`` (private). Returns ``None`` when no such
    frame is found: ``tell`` called by the user, or Optuna changed, which
    ``test_optuna_internals`` reports.
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if (
            frame.f_code.co_name == "_run_trial"
            and frame.f_globals.get("__name__") == "optuna.study._optimize"
        ):
            return isinstance(frame.f_locals.get("func_err"), KeyboardInterrupt)
        frame = frame.f_back
    return None
