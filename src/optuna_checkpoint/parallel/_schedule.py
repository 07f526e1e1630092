"""Give each trial its logical position, and wait until the history it may see is settled.

The trial at position n sees the settled trials at positions up to n - L, the *lag* L being
2K - 1 for K workers (:func:`history_lag`). L = K would show more, but then a trial would often
wait for the straggler among the K - 1 trials started just before it: with objective durations
log-normal with sigma 0.5, a simulation puts the workers' busy share at 0.76 for K = 4 and 0.65
for K = 8, against 0.95 and 0.92 with L = 2K - 1. K = 1 keeps L = 1: a sequential run.

A trial takes the lowest *free* position below its number if there is one (a position whose
attempt was interrupted), so that the trajectory closes its holes; otherwise the position equal
to its number. It then waits until positions up to n - L are settled. While it waits, a free
position among those is taken over by the waiting trial itself (its own position becomes free
for the next trial): every worker may be waiting, and someone must run it. The lowest
unsettled position is therefore always either run by a live process, whose history is complete,
or taken by the next waiting or starting trial, so the study cannot deadlock while one worker
lives.

Two workers may take the same free position at the same instant. Both attempts then compute the
same thing (that is the point of the design); the logical trajectory uses the first one.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from optuna.trial import TrialState

from optuna_checkpoint._logging import get_logger
from optuna_checkpoint.attach._lease import lease_timing
from optuna_checkpoint.parallel._liveness import Liveness
from optuna_checkpoint.resume._resumer import refresh_hidden_trials
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.study._logical import FixedHistory
from optuna_checkpoint.study._positions import POSITION_ATTR
from optuna_checkpoint.study._positions import PositionBook
from optuna_checkpoint.study._trials import close_as_interrupted


if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from optuna_checkpoint.attach._attachment import Attachment


_logger = get_logger(__name__)

POLL_INTERVAL = 0.01
"""Seconds between reads of the study while a trial waits (doubling up to MAX_POLL_INTERVAL)."""
MAX_POLL_INTERVAL = 0.05
ANNOUNCE_AFTER = 5.0
"""A wait longer than this many seconds is logged (INFO), naming what the trial waits for."""


def history_lag(workers: int) -> int:
    """L: the trial at position n sees positions up to n - L (see the module's docstring)."""
    return 2 * workers - 1


class Scheduler:
    """Places the trials of one process in a deterministic parallel study.

    Args:
        workers: K, the number of trials that may run at once without waiting.
        grace_period: Seconds without a heartbeat after which another host's lease expires
            (``None``: the storage's own, else the default; see ``attach._lease``).
    """

    def __init__(self, workers: int, grace_period: float | None) -> None:
        self.workers = workers
        self.lag = history_lag(workers)
        self._grace_period = grace_period

    def place(self, attachment: Attachment, study: Study, trial: FrozenTrial) -> FixedHistory:
        """Choose ``trial``'s position, wait for its history, and return the view it sees."""
        grace_period = lease_timing(attachment.storage, self._grace_period, None)[0]
        position = trial.number
        waited_since = time.monotonic()
        announced = False
        interval = POLL_INTERVAL
        while True:
            refresh_hidden_trials(attachment, without_hint=True)
            trials = attachment.storage.get_all_trials(attachment.study_id, deepcopy=False)
            book = PositionBook.read(trials, attachment.hidden.trial_ids)
            liveness = Liveness(attachment, trials, grace_period)
            # A free position below the trial's own first: the trajectory has no holes, and the
            # study cannot stall on a position nobody runs. If another trial took the same
            # position at the same instant, the later-numbered one moves on if it can (staying
            # would only repeat the same computation).
            below = position
            if book.rival(position, trial, liveness.alive):
                below = trial.number + 1
            free = [p for p in book.free(below, liveness.alive) if p != position]
            if free:
                position = self._take(attachment, trial, free[0], position, book, liveness)
                continue  # read again: the study changed
            pending = book.unsettled(position - self.lag)
            if not pending:
                return FixedHistory(book.history(position - self.lag), trial._trial_id, position)
            if not announced and time.monotonic() - waited_since > ANNOUNCE_AFTER:
                announced = True
                _logger.info(
                    "Trial %d (position %d) waits for position %d to finish, run by %s.",
                    trial.number,
                    position,
                    pending[0],
                    ", ".join(liveness.holder(t) for t in book.unfinished.get(pending[0], ()))
                    or "no one yet",
                )
            time.sleep(interval)
            interval = min(2 * interval, MAX_POLL_INTERVAL)

    def _take(
        self,
        attachment: Attachment,
        trial: FrozenTrial,
        position: int,
        previous: int,
        book: PositionBook,
        liveness: Liveness,
    ) -> int:
        """Move ``trial`` to a free ``position``; return the trial's position then.

        The attempts that dead processes left there are closed, as interrupted, so that they
        are hidden and never counted as settled. Each is read again first: the trials were read
        before the leases, so one seen RUNNING may have finished before its process let its
        lease go. A dead process finishes nothing more, so one still RUNNING now is abandoned.
        """
        orphans = book.orphans(position, liveness.alive)
        storage = attachment.storage
        if any(storage.get_trial(t._trial_id).state != TrialState.RUNNING for t in orphans):
            return previous  # not free after all; the caller reads the study again
        # The position first, so that no one else finds it free meanwhile.
        if position != trial.number or POSITION_ATTR in trial.system_attrs:
            attachment.storage.set_trial_system_attr(trial._trial_id, POSITION_ATTR, position)
            # The Trial object Optuna is building holds this very FrozenTrial.
            trial.system_attrs[POSITION_ATTR] = position
        if orphans:
            reason = "its process died while the trial ran"
            attachment.rows.add_interruptions(
                attachment.study_id,
                [Interruption(t._trial_id, t.number, position, reason, None) for t in orphans],
            )
            for orphan in orphans:
                close_as_interrupted(attachment.storage, orphan._trial_id, reason)
        _logger.info(
            "Trial %d takes position %d, left by an interrupted attempt%s.",
            trial.number,
            position,
            "" if previous == trial.number else f" (instead of position {previous})",
        )
        return position
