"""Retention: which of a stream's older checkpoints to delete, so the side tables stay bounded.

A resume reads only a stream's newest checkpoints, so older ones are kept only for inspection:
a long study writes one per trial (about 5 KB each) and never reads them again. A
:class:`Retention` keeps the newest few, and optionally every ``keep_every``-th as a record, and
:func:`prune_stream` deletes the rest. ``CheckpointingSampler(..., retention=...)`` does so as a
study runs; ``optuna-checkpoint prune`` does it once, from the command line.

Checkpoints of interrupted (hidden) trials are neither counted nor deleted: a resume never
restores them, and they are one per interruption.
"""

from __future__ import annotations

from collections.abc import Collection
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from optuna_checkpoint._logging import get_logger
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.resume._resumer import RESUME_LOOKBACK
from optuna_checkpoint.stores._base import ALL_CHECKPOINTS
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import CheckpointStore
from optuna_checkpoint.stores._base import Stream


if TYPE_CHECKING:
    from optuna_checkpoint.state._rows import SealedRows


_logger = get_logger(__name__)

# The sampler prunes once every this many trials at least. A pruning is a listing plus a write
# transaction of its own: about 1.7 ms on SQLite (measured with RandomSampler), some 10 % of a
# trivial trial, which after every trial would triple the wrapper's overhead; every 8 trials it
# is about 0.2 ms per trial. The few checkpoints kept in between cost only disk space.
_MIN_PRUNE_INTERVAL = 8


@dataclass(frozen=True)
class Retention:
    """Which checkpoints of each stream to keep; the others can be deleted.

    The stream's initial checkpoint is always kept, and so are its newest
    :data:`RESUME_LOOKBACK` (two) trial checkpoints, which a resume may need.

    Attributes:
        keep_last: Keep the newest ``keep_last`` trial checkpoints (at least 2).
        keep_every: Keep every checkpoint whose logical trial number is a multiple of
            ``keep_every``, e.g. as a record of the run.

    Raises:
        ValueError: Neither is set, or one is out of range.
    """

    keep_last: int | None = None
    keep_every: int | None = None

    def __post_init__(self) -> None:
        if self.keep_last is None and self.keep_every is None:
            raise ValueError(
                "Retention needs keep_last, keep_every or both: with neither it would say "
                "nothing about what to keep. Pass e.g. Retention(keep_last=100)."
            )
        for name in ("keep_last", "keep_every"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.keep_every is not None and self.keep_every < 1:
            raise ValueError(f"keep_every must be at least 1, got {self.keep_every}")
        if self.keep_last is not None and self.keep_last < RESUME_LOOKBACK:
            raise ValueError(
                f"keep_last must be at least {RESUME_LOOKBACK}, got {self.keep_last}: when the "
                "newest checkpoint belongs to a trial that failed as its process stopped "
                "(Ctrl-C), a resume hides that trial and restores the checkpoint before it, so "
                f"the newest {RESUME_LOOKBACK} are always needed."
            )

    @property
    def newest_kept(self) -> int:
        """How many of the newest trial checkpoints are kept, whatever ``keep_every`` keeps."""
        return max(self.keep_last or 0, RESUME_LOOKBACK)

    @property
    def prune_interval(self) -> int:
        """Every how many trials ``CheckpointingSampler`` prunes its stream."""
        return max(_MIN_PRUNE_INTERVAL, self.newest_kept // 2)


def checkpoints_to_delete(checkpoints: Sequence[Checkpoint], retention: Retention) -> list[int]:
    """Return the trial ids whose checkpoints ``retention`` does not keep.

    Args:
        checkpoints: A stream's checkpoints newest first, as
            :meth:`CheckpointStore.latest_checkpoints` lists them, without those of hidden
            trials. A prefix of that list (its newest part) is fine too: nothing it holds is
            then deleted that the whole list would keep.
        retention: What to keep.

    Returns:
        Trial ids, newest first; never the initial checkpoint's.
    """
    doomed = []
    trials = [c for c in checkpoints if c.trial_id is not None]
    for index, checkpoint in enumerate(trials):
        assert checkpoint.trial_id is not None
        if index < retention.newest_kept:
            continue
        if (
            retention.keep_every is not None
            and checkpoint.logical_number % retention.keep_every == 0
        ):
            continue
        doomed.append(checkpoint.trial_id)
    return doomed


def prune_stream(
    rows: SealedRows, stream: Stream, retention: Retention, *, dry_run: bool = False
) -> int:
    """Delete the stream's checkpoints that ``retention`` does not keep.

    Safe while the stream's owner runs: only checkpoints older than the newest
    :attr:`Retention.newest_kept` are deleted, and a resume reads only the newest two.

    Args:
        rows: The interruptions of the stream's study, in the stream's store (its study opened
            with :meth:`CheckpointStore.open_study`): their checkpoints are left alone.
        stream: The stream.
        retention: What to keep.
        dry_run: Count what would be deleted, and delete nothing.

    Returns:
        How many checkpoints were deleted (or would be).

    Raises:
        CheckpointError: The store cannot delete checkpoints (a journal's side record).
        CorruptCheckpointError: A record of an interrupted trial fails its seal.
    """
    store = rows.store
    if not dry_run and store.deletion_unsupported is not None:
        raise CheckpointError(store.deletion_unsupported)
    hidden = {i.trial_id for i in rows.interruptions()}
    listed = store.latest_checkpoints(stream.stream_id, excluding=hidden, limit=ALL_CHECKPOINTS)
    doomed = checkpoints_to_delete(listed, retention)
    if dry_run or not doomed:
        return len(doomed)
    return store.delete_checkpoints(stream.stream_id, doomed)


class AmortizedPruning:
    """Prunes a sampler's stream every :attr:`Retention.prune_interval` trials.

    The first pruning of a stream by a process lists every checkpoint (the stream may come from
    a run without retention, or with a larger one); later ones list only the newest
    ``newest_kept + 2 * prune_interval``, which holds every checkpoint that became prunable
    since (unless more than ``prune_interval`` trials run at once; those left over go at the
    next process's first pruning): the cost per trial does not grow with the study.
    """

    def __init__(self, retention: Retention) -> None:
        self.retention = retention
        self._trials = 0
        self._swept: tuple[int, int] | None = None  # (store, stream) listed in full once
        self._disabled = False

    def checkpoint_committed(
        self, store: CheckpointStore, stream: Stream, hidden: Collection[int]
    ) -> None:
        """Called once per trial, after the previous trial's checkpoint went out.

        Pruning is housekeeping: a failure is logged, and tried again next time, rather than
        stopping the study.
        """
        self._trials += 1
        if self._disabled or self._trials % self.retention.prune_interval:
            return
        if store.deletion_unsupported is not None:
            self._disabled = True
            _logger.warning("retention is ignored: %s", store.deletion_unsupported)
            return
        key = (id(store), stream.stream_id)
        limit = ALL_CHECKPOINTS
        if self._swept == key:
            limit = self.retention.newest_kept + 2 * self.retention.prune_interval
        try:
            listed = store.latest_checkpoints(stream.stream_id, excluding=hidden, limit=limit)
            doomed = checkpoints_to_delete(listed, self.retention)
            if doomed:
                store.delete_checkpoints(stream.stream_id, doomed)
        except Exception:
            _logger.warning(
                "Could not prune checkpoint stream %r; trying again in %d trials.",
                stream.name,
                self.retention.prune_interval,
                exc_info=True,
            )
            return
        self._swept = key
