"""Evidence of lost checkpoints: finished trials of a stream newer than its newest checkpoint.

A trial's end is never stored without its checkpoint: on SQL stores both commit together, and
elsewhere the checkpoint is saved first, or the trial is tagged and failed
(:func:`optuna_checkpoint.record._recorder.TrialRecorder.fail_unsaved`). So a COMPLETE or
PRUNED trial that a stream ran, newer than the stream's newest checkpoint and without one of
its own, means checkpoints were lost or deleted (a restored backup of one table, a hand-edited
database). Resuming from the older state would silently leave the trajectory, so the resume
refuses, and ``status`` and ``verify`` report the trials.

One exception is not evidence: a trial told by a process that did not run it (a copy of the
study in another process, ``study.tell`` there), which saves no checkpoint of the stream and
tags the trial with :data:`~optuna_checkpoint.study._trials.TOLD_ELSEWHERE_ATTR`.
"""

from __future__ import annotations

from collections.abc import Collection
from collections.abc import Sequence
from typing import TYPE_CHECKING

from optuna.trial import TrialState

from optuna_checkpoint.study._trials import TOLD_ELSEWHERE_ATTR


if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from optuna_checkpoint.stores._base import CheckpointStore
    from optuna_checkpoint.stores._base import Stream


_CLAIMS_CHUNK = 5000  # trial ids per claims lookup: an IN list stays well within SQL limits

# With trials of one stream running at once (n_jobs > 1), a later-numbered trial may commit its
# checkpoint a few commits before the newest one: look that far back among the newest.
_CONCURRENT_COMMITS = 32


def finished_without_checkpoint(
    store: CheckpointStore,
    study_uid: str,
    stream: Stream,
    trials: Sequence[FrozenTrial],
    *,
    newest_number: int,
    hidden: Collection[int],
) -> list[FrozenTrial]:
    """The stream's finished trials after its newest checkpoint that have none of their own.

    Args:
        store: The study's checkpoint store.
        study_uid: The study's uid in the store.
        stream: The stream to check.
        trials: The study's trials (any order, any states).
        newest_number: The trial number of the stream's newest checkpoint that counts (``-1``
            for the initial one).
        hidden: Ids of the interrupted trials, which are not the stream's results.

    Returns:
        Those trials, by number; empty when nothing is missing.
    """
    after = [
        t
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        and t.number > newest_number
        and t.number >= stream.first_trial_number
        and t._trial_id not in hidden
        and TOLD_ELSEWHERE_ATTR not in t.system_attrs
    ]
    if not after:
        return []
    claims: dict[int, int] = {}
    for i in range(0, len(after), _CLAIMS_CHUNK):
        claims.update(store.claims(study_uid, [t._trial_id for t in after[i : i + _CLAIMS_CHUNK]]))
    own = [t for t in after if claims.get(t._trial_id) == stream.stream_id]
    if not own:
        return []
    listed = store.latest_checkpoints(
        stream.stream_id, excluding=hidden, limit=len(own) + _CONCURRENT_COMMITS
    )
    have = {c.trial_id for c in listed}
    return sorted((t for t in own if t._trial_id not in have), key=lambda t: t.number)


def describe_missing(stream_name: str, missing: Sequence[FrozenTrial], newest_number: int) -> str:
    """One sentence naming the trials, for the error, ``status`` and ``verify``."""
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
