"""Logical positions of a deterministic parallel study, read from its trials.

With ``deterministic_workers=K`` the trial at logical position n is computed from the sampler's
configuration, n, and the settled trials at positions up to n - L only (the lag L is 2K - 1, see
``parallel._schedule``). Which worker runs it, when,
and how often therefore does not matter: every attempt at position n proposes the same
parameters. A position is a property of the trial, not of the process that runs it:

* a trial takes by default the position equal to its number (Optuna numbers a study's trials
  uniquely, in the order they are created), and records nothing;
* a trial that takes another position instead, one left free by an interrupted attempt, records
  it in :data:`POSITION_ATTR`; the position of its own number is then free for a later trial.

An attempt *settles* its position when it finishes (COMPLETE, PRUNED, or a genuine FAIL) and is
not an interrupted attempt. A position is *free* when it has neither a settled attempt nor one
that a live process runs (or that waits in Optuna's queue).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field

from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_checkpoint.study._logical import renumbered
from optuna_checkpoint.study._trials import INTERRUPTED_ATTR


POSITION_ATTR = "optuna_checkpoint:position"
"""System attribute of a trial whose logical position differs from its number (in every mode:
after an interruption, the trials of a one-worker study record it too)."""

DETERMINISTIC_ATTR = "optuna_checkpoint:deterministic"
"""Study system attribute: the deterministic configuration every worker must share."""


def position_of(trial: FrozenTrial) -> int:
    """The logical position of ``trial``: the one it recorded, else its number."""
    position = trial.system_attrs.get(POSITION_ATTR)
    return trial.number if position is None else int(position)


@dataclass
class PositionBook:
    """Which attempts hold which positions, read from the study's trials at one instant.

    Attributes:
        settled: The settled attempt of each settled position (the lowest-numbered, if a
            position was run twice: both attempts are alike).
        unfinished: The unfinished (RUNNING or WAITING) attempts of each position, hidden
            (interrupted) attempts left out.
        issued: How many positions exist: the number of trials.
    """

    settled: dict[int, FrozenTrial] = field(default_factory=dict)
    unfinished: dict[int, list[FrozenTrial]] = field(default_factory=dict)
    issued: int = 0

    @classmethod
    def read(cls, trials: Iterable[FrozenTrial], hidden: Collection[int]) -> PositionBook:
        """Sort ``trials`` by position.

        Interrupted attempts do not count: those whose ids are in ``hidden`` (the recorded
        interruptions) and those tagged interrupted, which their closer tags before it closes
        them, so that no one sees one finished and untagged.
        """
        book = cls()
        for trial in trials:
            book.issued = max(book.issued, trial.number + 1)
            if trial._trial_id in hidden or INTERRUPTED_ATTR in trial.system_attrs:
                continue
            position = position_of(trial)
            if trial.state.is_finished():
                held = book.settled.get(position)
                if held is None or trial.number < held.number:
                    book.settled[position] = trial
            else:
                book.unfinished.setdefault(position, []).append(trial)
        return book

    def unsettled(self, last: int) -> list[int]:
        """The positions up to ``last`` without a settled attempt, in order."""
        return [p for p in range(min(last + 1, self.issued)) if p not in self.settled]

    def free(self, below: int, alive: Callable[[FrozenTrial], bool]) -> list[int]:
        """The positions under ``below`` that no attempt settled and no live attempt holds."""
        return [
            p
            for p in self.unsettled(below - 1)
            if not any(alive(t) for t in self.unfinished.get(p, ()))
        ]

    def rival(
        self, position: int, trial: FrozenTrial, alive: Callable[[FrozenTrial], bool]
    ) -> bool:
        """Whether an earlier-numbered attempt than ``trial`` settled or runs ``position``."""
        settled = self.settled.get(position)
        if settled is not None and settled._trial_id != trial._trial_id:
            return True
        return any(
            t.number < trial.number and t._trial_id != trial._trial_id and alive(t)
            for t in self.unfinished.get(position, ())
        )

    def orphans(self, position: int, alive: Callable[[FrozenTrial], bool]) -> list[FrozenTrial]:
        """The RUNNING attempts at ``position`` whose process is gone."""
        return [
            t
            for t in self.unfinished.get(position, ())
            if t.state == TrialState.RUNNING and not alive(t)
        ]

    def history(self, last: int) -> list[FrozenTrial]:
        """The settled attempts at positions up to ``last``, renumbered to their positions."""
        return [
            renumbered(self.settled[position], position)
            for position in range(last + 1)
            if position in self.settled
        ]


def logical_trajectory(
    trials: Iterable[FrozenTrial], hidden: Collection[int]
) -> list[FrozenTrial]:
    """The settled attempts of positions 0, 1, ... up to the first unsettled one.

    Entry n is position n. Past an unsettled position only a few positions can be settled (the
    later ones wait for it); they are listed once it is, so that no entry ever moves.
    """
    book = PositionBook.read(trials, hidden)
    result: list[FrozenTrial] = []
    while len(result) in book.settled:
        result.append(book.settled[len(result)])
    return result
