"""Evidence of lost checkpoints: finished trials of a stream that none of its checkpoints covers.

A stream's checkpoint of a trial goes out in the transaction that stores the trial's end (or,
on stores without a commit hook, just before it). So a trial that the stream claimed, that
finished COMPLETE or PRUNED after the stream's newest checkpoint, and that has no checkpoint of
its own, had its checkpoint deleted or lost, or was told by a process not attached to the
stream. A resume of the stream would restore a state from before it; ``status`` and ``verify``
report it. A trial whose teller tagged it :data:`TOLD_ELSEWHERE_ATTR` is no such evidence: its
teller had no checkpoint of the stream to write, and said so.
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


OUT_OF_ORDER_MARGIN = 34
"""How many more of the stream's newest checkpoints are searched than there are trials in
question. With trials running at once (``n_jobs > 1``), a later-numbered trial may commit its
checkpoint before an earlier one, so the newest checkpoint need not be the highest-numbered
trial's: a checkpoint committed a few places earlier still counts."""

_CLAIMS_CHUNK = 5000  # trial ids per claims lookup: an IN list stays well within SQL limits


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
    after = [
        t
        for t in trials_of_stream
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        and t.number > newest_number
        and t.number >= stream.first_trial_number
        and TOLD_ELSEWHERE_ATTR not in t.system_attrs
    ]
    if not after:
        return []
    listed = store.latest_checkpoints(
        stream.stream_id, excluding=hidden, limit=len(after) + OUT_OF_ORDER_MARGIN
    )
    have = {c.trial_id for c in listed}
    return [t for t in after if t._trial_id not in have]


def claiming_streams(
    store: CheckpointStore, study_uid: str, trials: Sequence[FrozenTrial]
) -> dict[int, int]:
    """The id of the stream that claimed each of ``trials``, by trial id (unclaimed: absent)."""
    claims: dict[int, int] = {}
    for i in range(0, len(trials), _CLAIMS_CHUNK):
        chunk = trials[i : i + _CLAIMS_CHUNK]
        claims.update(store.claims(study_uid, [t._trial_id for t in chunk]))
    return claims
