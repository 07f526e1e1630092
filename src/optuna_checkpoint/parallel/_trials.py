"""The deterministic mode's side of a trial's path through the sampler, one object per sampler.

``before_trial``: :meth:`DeterministicTrials.start` places the trial (position, wait, view) and
gives it its own random streams; every hook into the wrapped sampler then runs inside
:meth:`~DeterministicTrials.active` with :meth:`~DeterministicTrials.view`; ``after_trial``:
:meth:`~DeterministicTrials.end` after the record (a trial that Ctrl-C cut off is hidden before
the capture by the recorder, ``TrialRecorder.mark_if_cut_off``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
import json
import threading
from typing import TYPE_CHECKING
from typing import Any

from optuna_checkpoint.parallel._position_streams import PositionStreams
from optuna_checkpoint.parallel._schedule import Scheduler


if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from optuna_checkpoint.attach._attachment import Attachment
    from optuna_checkpoint.state.adapters import StateAdapter
    from optuna_checkpoint.study._logical import FixedHistory


class DeterministicTrials:
    """Positions, views and random streams of the trials a deterministic sampler runs.

    Args:
        adapter: The wrapped sampler's state adapter, while the sampler is fresh.
        fingerprint: The sampler's fingerprint, which tells whether it is seeded.
        workers: ``deterministic_workers``.
        grace_period: As given to the sampler.

    Raises:
        ValueError: The sampler is not seeded, or has no random generator to derive.
    """

    def __init__(
        self, adapter: StateAdapter, fingerprint: Any, workers: int, grace_period: float | None
    ) -> None:
        if "unseeded" in json.dumps(fingerprint, default=str):
            name = type(adapter.sampler).__name__
            raise ValueError(
                f"deterministic_workers needs a seeded sampler (e.g. {name}(seed=42)): every "
                "worker derives each trial's random streams from the seed"
            )
        self.workers = workers
        self._states = PositionStreams(adapter)
        self._scheduler = Scheduler(workers, grace_period)
        self._views: dict[int, FixedHistory] = {}
        self._lock = threading.Lock()

    def start(self, attachment: Attachment, study: Study, trial: FrozenTrial) -> None:
        """Place ``trial``, waiting for its history, and give it its own random streams."""
        view = self._scheduler.place(attachment, study, trial)
        with self._lock:
            self._views[trial._trial_id] = view
            self._states.begin(trial._trial_id, view.position)

    def view(self, trial: FrozenTrial) -> FixedHistory | None:
        """What ``trial`` is shown, if this sampler placed it."""
        return self._views.get(trial._trial_id)

    @contextmanager
    def active(self, trial: FrozenTrial) -> Iterator[None]:
        """Hold ``trial``'s random streams in the wrapped sampler (under the sampling lock)."""
        with self._states.active(trial._trial_id):
            yield

    def end(self, trial: FrozenTrial) -> None:
        """Forget a finished trial."""
        with self._lock:
            self._states.end(trial._trial_id)
            self._views.pop(trial._trial_id, None)
