"""The study as an uninterrupted run would show it: interrupted trials hidden, numbers closed up.

A retried trial is a new trial with a new number, but samplers use trial numbers (CMA-ES reseeds
with ``trial.number``; constant-liar TPE reads RUNNING trials), so the wrapped sampler is shown
this *logical* study instead: every interrupted trial removed and every later trial renumbered to
the number it would have had. With nothing hidden, the real study and trials are passed through.

Some samplers (``GridSampler``, ``BruteForceSampler``) list the trials through
``study._storage`` rather than the study, so the view's storage lists logical trials too.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Container
from collections.abc import Iterable
import copy
from typing import Any
from typing import Protocol
from typing import cast

from optuna.storages import BaseStorage
from optuna.study import Study
from optuna.trial import FrozenTrial
from optuna.trial import TrialState


def renumbered(trial: FrozenTrial, number: int, *, in_place: bool = False) -> FrozenTrial:
    """Return ``trial`` numbered ``number``.

    That is ``trial`` itself if it is numbered so already, else a shallow copy, or ``trial``
    itself renumbered if ``in_place`` (a copy the caller owns).
    """
    if trial.number == number:
        return trial
    if not in_place:
        trial = copy.copy(trial)
    trial.number = number
    return trial


class Interrupted(Protocol):
    """What hiding needs of a recorded interruption (the stores' ``Interruption``)."""

    @property
    def trial_id(self) -> int: ...

    @property
    def trial_number(self) -> int: ...


class HiddenTrials:
    """The set of interrupted trials, and the renumbering that hiding them implies."""

    def __init__(self, trials: Iterable[tuple[int, int]] = ()) -> None:
        """Build from ``(trial_id, trial_number)`` pairs."""
        pairs = list(trials)
        self.trial_ids = frozenset(trial_id for trial_id, _ in pairs)
        self._numbers = sorted(number for _, number in pairs)

    @classmethod
    def of(cls, interruptions: Iterable[Interrupted]) -> HiddenTrials:
        """The trials to hide: the interrupted attempts recorded for the study."""
        return cls((i.trial_id, i.trial_number) for i in interruptions)

    def __bool__(self) -> bool:
        return bool(self._numbers)

    def logical_number(self, number: int) -> int:
        """Return the number that the trial numbered ``number`` has in the uninterrupted run."""
        return number - bisect_left(self._numbers, number)

    def logical_trial(self, trial: FrozenTrial) -> FrozenTrial:
        """Return ``trial`` with its logical number (a shallow copy if the number changes)."""
        return renumbered(trial, self.logical_number(trial.number))

    def logical_trials(
        self,
        trials: list[FrozenTrial],
        *,
        copied: bool,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        """Drop hidden trials and renumber the rest; ``copied`` trials are renumbered in place.

        ``trials`` are already filtered by ``states``.
        """
        result = []
        for trial in trials:
            if trial._trial_id not in self.trial_ids:
                logical = self.logical_number(trial.number)
                result.append(renumbered(trial, logical, in_place=copied))
        return result

    def view(self, study: Study) -> Study:
        """Return ``study`` as the wrapped sampler should see it."""
        return _LogicalStudy(study, self) if self else study

    def apply(self, study: Study, trial: FrozenTrial) -> tuple[Study, FrozenTrial]:
        """Return ``study`` and its ``trial`` as the uninterrupted run has them."""
        return self.view(study), self.logical_trial(trial)


class Listing(Protocol):
    """How a view lists the study's trials (:class:`HiddenTrials`, :class:`FixedHistory`)."""

    def logical_trials(
        self,
        trials: list[FrozenTrial],
        *,
        copied: bool,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        """The view's trials, given the real study's, listed with the filter ``states``."""
        ...


class FixedHistory:
    """The study as the trial at one position of a deterministic parallel run sees it.

    Whatever the other workers have done meanwhile, it lists only the settled trials at positions
    up to ``position - L`` (L is the lag; the list is fixed when the trial starts, numbered by
    position) and the trial itself, numbered ``position``.
    """

    def __init__(self, history: list[FrozenTrial], trial_id: int, position: int) -> None:
        self._history = history
        self._trial_id = trial_id
        self.position = position

    def logical_trial(self, trial: FrozenTrial) -> FrozenTrial:
        """Return the trial with its position as its number (a shallow copy if it changes)."""
        return renumbered(trial, self.position)

    def logical_trials(
        self,
        trials: list[FrozenTrial],
        *,
        copied: bool,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        """The history with the states asked for, then the trial itself if ``trials`` has it.

        The history is filtered here, not taken from ``trials``: Optuna's per-trial cache may
        have read the study before the history settled.
        """
        result = [
            copy.deepcopy(t) if copied else t
            for t in self._history
            if states is None or t.state in states
        ]
        current = next((t for t in trials if t._trial_id == self._trial_id), None)
        if current is not None:
            result.append(renumbered(current, self.position, in_place=copied))
        return result

    def apply(self, study: Study, trial: FrozenTrial) -> tuple[Study, FrozenTrial]:
        """Return the view of ``study`` and ``trial`` at this position."""
        return _LogicalStudy(study, self), self.logical_trial(trial)


class _LogicalStudy(Study):
    """A study that lists only the trials of the uninterrupted run, with their logical numbers.

    It shares the real study's storage, thread-local cache and attributes; only the trial
    listings differ, whether read from the study or from its storage. Trials are still addressed
    by id, so samplers that write system attributes write them to the real trials.
    """

    def __init__(self, study: Study, hidden: Listing) -> None:
        # Not ``Study.__init__``: that would look the study up in storage again.
        self.__dict__.update(object.__getattribute__(study, "__dict__"))
        self._inner = study
        self._hidden = hidden
        self._storage = cast(BaseStorage, _LogicalStorage(study._storage, study._study_id, hidden))

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        trials = self._inner._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return self._hidden.logical_trials(trials, copied=deepcopy, states=states)

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        trials = self._inner.get_trials(deepcopy=deepcopy, states=states)
        return self._hidden.logical_trials(trials, copied=deepcopy, states=states)

    def stop(self) -> None:
        self._inner.stop()

    def __getstate__(self) -> dict[Any, Any]:
        return self._inner.__getstate__()


class _LogicalStorage:
    """The study's storage, listing the study's trials as :class:`_LogicalStudy` does.

    Every other method, reads and writes alike, is the real storage's. Not a ``BaseStorage``
    subclass: delegating by name keeps it complete whatever methods Optuna's storages gain.
    """

    def __init__(self, storage: BaseStorage, study_id: int, hidden: Listing) -> None:
        self._real = storage
        self._study_id = study_id
        self._hidden = hidden

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        trials = self._real.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        if study_id != self._study_id:
            return trials
        return self._hidden.logical_trials(trials, copied=deepcopy, states=states)
