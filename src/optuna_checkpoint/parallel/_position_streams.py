"""Random streams per logical position: trial n draws from generators derived from (seed, n).

In a deterministic parallel run no trial may draw from a generator another trial advanced, since
which trial came first depends on timing. Each trial therefore gets the wrapped sampler's state
as it was constructed, with every generator replaced by one spawned for the trial's position
(``numpy.random.SeedSequence``, see :mod:`optuna_checkpoint.state._spawn`). Threads of one
process share the sampler object, so the state of the trial whose hook runs is swapped in first
(under the caller's sampling lock), and kept while the same trial calls again. The sampler's
caches (an adapter's ``CACHE_ATTRS``, such as the incremental search space of CMA-ES) are emptied
at each swap too: they assume a study that only grows, and each trial sees its own history.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
import copy
from typing import Any

from optuna_checkpoint.state._spawn import spawn_rng_states
from optuna_checkpoint.state.adapters import StateAdapter


def position_key(position: int) -> str:
    """The spawn key of the generators of the trial at ``position``."""
    return f"position/{position}"


class PositionStreams:
    """The wrapped sampler's state of each trial in progress in this process."""

    def __init__(self, adapter: StateAdapter) -> None:
        """Remember the sampler's state as constructed; raise if it has no generator to spawn.

        Raises:
            ValueError: The adapter shows no random generator, so trials could not have their
                own streams.
        """
        self._adapter = adapter
        self._initial = adapter.state_dict()
        if spawn_rng_states(self._initial, position_key(0))[1] == 0:
            raise ValueError(
                "deterministic_workers needs a sampler whose random generators optuna-checkpoint "
                f"can derive per trial; the state of {adapter.name} shows none"
            )
        # Every cache of the sampler and of those it holds, as it was constructed: empty.
        self._caches = [
            (held.sampler, name, copy.deepcopy(getattr(held.sampler, name)))
            for held in _with_held(adapter)
            for name in held.CACHE_ATTRS
            if hasattr(held.sampler, name)
        ]
        self._states: dict[int, Any] = {}
        self._loaded: int | None = None  # the trial whose state the sampler holds now

    def begin(self, trial_id: int, position: int) -> None:
        """Give trial ``trial_id`` the state of a fresh sampler for ``position``."""
        self._states[trial_id] = spawn_rng_states(self._initial, position_key(position))[0]
        if self._loaded == trial_id:
            self._loaded = None

    @contextmanager
    def active(self, trial_id: int) -> Iterator[None]:
        """Hold the state of ``trial_id`` in the sampler while the block runs.

        Callers hold the sampling lock. A trial this process did not begin (not one of this
        wrapper's) leaves the sampler as it is.
        """
        if trial_id in self._states and self._loaded != trial_id:
            if self._loaded is not None and self._loaded in self._states:
                self._states[self._loaded] = self._adapter.state_dict()
            self._adapter.load_state_dict(self._states[trial_id])
            for sampler, name, empty in self._caches:
                setattr(sampler, name, copy.deepcopy(empty))
            self._loaded = trial_id
        yield

    def end(self, trial_id: int) -> None:
        """Forget the state of a finished trial."""
        self._states.pop(trial_id, None)
        if self._loaded == trial_id:
            self._loaded = None


def _with_held(adapter: StateAdapter) -> Iterator[StateAdapter]:
    yield adapter
    for held in adapter.held:
        yield from _with_held(held)
