"""State adapter for :class:`optuna.samplers.BruteForceSampler`.

The sampler rebuilds its tree of visited points from the study's trials on every call, so its
only state is the generator that picks among the unvisited branches.
"""

from __future__ import annotations

from typing import Any

from optuna.samplers import BruteForceSampler

from optuna_checkpoint._adapters._protocol import StateAdapter
from optuna_checkpoint._adapters._protocol import register
from optuna_checkpoint._adapters._rng import load_rng_state_dict
from optuna_checkpoint._adapters._rng import rng_state_dict


RNG = "rng"  # BruteForceSampler._rng


@register(BruteForceSampler)
class BruteForceSamplerAdapter(StateAdapter):
    """Captures ``BruteForceSampler._rng``."""

    name = "BruteForceSampler"
    sampler: BruteForceSampler

    def state_dict(self) -> dict[str, Any]:
        """Capture the generator."""
        return {RNG: rng_state_dict(self.sampler._rng)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the generator."""
        load_rng_state_dict(self.sampler._rng, self.require(state_dict, RNG))
