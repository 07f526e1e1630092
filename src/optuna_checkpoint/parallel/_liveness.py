"""Which unfinished trials a live process still runs, judged from the streams' leases."""

from __future__ import annotations

import datetime
import time
from typing import TYPE_CHECKING

from optuna.trial import TrialState

from optuna_checkpoint.attach._attacher import CLAIM_WINDOW
from optuna_checkpoint.attach._lease import judge_lease


if TYPE_CHECKING:
    from collections.abc import Iterable

    from optuna.trial import FrozenTrial

    from optuna_checkpoint.attach._attachment import Attachment
    from optuna_checkpoint.stores._base import Stream


class Liveness:
    """A snapshot of the study's leases and claims, for the given unfinished trials.

    A RUNNING trial is alive while the process that claimed it holds its stream's lease (the
    lease's own rules: on this host the process must exist, from another host its heartbeat must
    be younger than the grace period). An unclaimed trial is alive while it is younger than the
    claim window, since its process may be about to claim it. WAITING trials are alive: Optuna
    hands them to the next worker that asks.
    """

    def __init__(
        self, attachment: Attachment, trials: Iterable[FrozenTrial], grace_period: float
    ) -> None:
        running = [t._trial_id for t in trials if t.state == TrialState.RUNNING]
        store, uid = attachment.store, attachment.study_uid
        self._claims = attachment.rows.claims(running) if running else {}
        self._streams: dict[int, Stream] = (
            {s.stream_id: s for s in store.list_streams(uid)} if running else {}
        )
        self._me = attachment.owner
        self._grace_period = grace_period
        self._now = time.time()

    def alive(self, trial: FrozenTrial) -> bool:
        """Whether a live process runs ``trial`` (or will: a WAITING one)."""
        if trial.state != TrialState.RUNNING:
            return trial.state == TrialState.WAITING
        stream = self._streams.get(self._claims.get(trial._trial_id, -1))
        if stream is None:
            started = trial.datetime_start or datetime.datetime.now()
            age = (datetime.datetime.now() - started).total_seconds()
            return age < CLAIM_WINDOW
        owner = stream.owner
        if owner is not None and owner.token == self._me.token:
            return True  # this process, from another thread
        verdict = judge_lease(owner, stream.heartbeat_at, self._now, self._me, self._grace_period)
        return not verdict.may_take_over

    def holder(self, trial: FrozenTrial) -> str:
        """Who runs ``trial``, for a log line: the stream's name and its process."""
        stream = self._streams.get(self._claims.get(trial._trial_id, -1))
        if stream is None:
            return "a process that has not claimed it yet"
        owner = stream.owner
        if owner is None:
            return f"worker {stream.name!r} (released)"
        return f"worker {stream.name!r} (pid {owner.pid} on {owner.host})"
