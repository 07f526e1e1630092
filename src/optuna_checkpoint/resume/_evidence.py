"""Evidence of lost checkpoints: finished trials of a stream newer than its newest checkpoint.

A trial's end is never stored without its checkpoint: on SQL stores both commit together, and
elsewhere the checkpoint is saved first, or the trial is tagged and failed
(``TrialRecorder.fail_unsaved``). So a COMPLETE or PRUNED trial that a stream claimed, newer
than the stream's newest checkpoint and without one of its own, means checkpoints were lost or
deleted (a restored backup of one table, a hand-edited database). Resuming from the older state
would silently leave the trajectory, so the resume refuses (``MissingCheckpointError``), and
``status`` and ``verify`` report the trials.

One exception is not evidence: a trial told by a process not attached to the stream that
claimed it (a copy of the study in another process, ``study.tell`` there). That process has no
checkpoint of the stream to write, and tags the trial :data:`TOLD_ELSEWHERE_ATTR`.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Mapping
from collections.abc import Sequence
from typing import TYPE_CHECKING

from optuna.trial import TrialState

from optuna_checkpoint.study._trials import TOLD_ELSEWHERE_ATTR


if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from optuna_checkpoint.stores._base import CheckpointStore
    from optuna_checkpoint.stores._base import Stream


OUT_OF_ORDER_MARGIN = 34
"""How many more of the stream's newest checkpoints are searched than there are trials in
question. With trials running at once (``n_jobs > 1``), a later-numbered trial may commit its
checkpoint before an earlier one, so the newest checkpoint need not be the highest-numbered
trial's: a checkpoint committed a few places earlier still counts."""


def finished_without_checkpoint(
    store: CheckpointStore,
    stream: Stream,
    trials_of_stream: Sequence[FrozenTrial],
    newest_number: int,
    hidden: Collection[int],
) -> list[FrozenTrial]:
    """The trials of ``stream`` that finished after its newest checkpoint without one of their own.

    Args:
        store: The study's checkpoint store.
        stream: The stream.
        trials_of_stream: The trials the stream claimed (any state; only COMPLETE and PRUNED
            ones count).
        newest_number: The trial number of the stream's newest checkpoint, ``-1`` when that is
            the initial one or the stream has none.
        hidden: The ids of the study's interrupted trials, whose checkpoints do not count.

    Returns:
        Those trials, in the order given; trials tagged :data:`TOLD_ELSEWHERE_ATTR` are left out.
    """
    after = [t for t in trials_of_stream if _may_be_evidence(t, stream, newest_number, hidden)]
    if not after:
        return []
    listed = store.latest_checkpoints(
        stream.stream_id, excluding=hidden, limit=len(after) + OUT_OF_ORDER_MARGIN
    )
    have = {c.trial_id for c in listed}
    return [t for t in after if t._trial_id not in have]


def lost_checkpoints_of_stream(
    store: CheckpointStore,
    claims_of: Callable[[list[int]], Mapping[int, int]],
    stream: Stream,
    trials: Sequence[FrozenTrial],
    newest_number: int,
    hidden: Collection[int],
) -> list[FrozenTrial]:
    """:func:`finished_without_checkpoint` among all of the study's ``trials``, by number.

    Looks up the claims (through ``claims_of``, which gives the claiming stream of each claimed
    trial id, seals checked) of the few trials that could be evidence only, as a resume needs.
    """
    candidates = [t for t in trials if _may_be_evidence(t, stream, newest_number, hidden)]
    if not candidates:
        return []
    claims = claims_of([t._trial_id for t in candidates])
    own = [t for t in candidates if claims.get(t._trial_id) == stream.stream_id]
    lost = finished_without_checkpoint(store, stream, own, newest_number, hidden)
    return sorted(lost, key=lambda t: t.number)


def claiming_streams(
    store: CheckpointStore, study_uid: str, trials: Sequence[FrozenTrial]
) -> dict[int, int]:
    """The id of the stream that claimed each of ``trials``, by trial id (unclaimed: absent).

    Seals are not checked here: ``status`` and ``verify`` read the claims as they are stored.
    """
    found = store.claims(study_uid, [t._trial_id for t in trials])
    return {trial_id: claim.stream_id for trial_id, claim in found.items()}


def describe_missing(stream_name: str, missing: Sequence[FrozenTrial], newest_number: int) -> str:
    """One sentence naming the trials, for the resume's error and ``status``."""
    numbers = [t.number for t in missing]
    shown = ", ".join(str(n) for n in numbers[:8])
    if len(numbers) > 8:
        shown += f", ... ({len(numbers)} in all)"
    plural = len(numbers) > 1
    newest = "its initial one" if newest_number < 0 else f"trial {newest_number}'s"
    return (
        f"trial{'s' * plural} {shown} of stream {stream_name!r} finished after the stream's "
        f"newest checkpoint ({newest}) with no checkpoint of {'their' if plural else 'its'} "
        "own: checkpoints were lost or deleted"
    )


def _may_be_evidence(
    trial: FrozenTrial, stream: Stream, newest_number: int, hidden: Collection[int]
) -> bool:
    return (
        trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        and trial.number > newest_number
        and trial.number >= stream.first_trial_number
        and trial._trial_id not in hidden
        and TOLD_ELSEWHERE_ATTR not in trial.system_attrs
    )
