"""State adapter for :class:`optuna.samplers.TPESampler`.

TPE draws from two generators: its own, for the Parzen-estimator candidates, and that of the
``RandomSampler`` it uses for start-up trials and dynamic spaces. Both are seeded with the same
seed and both advance, so both are stored.
"""

from __future__ import annotations

from typing import Any

from optuna.samplers import TPESampler

from optuna_checkpoint._adapters._protocol import StateAdapter
from optuna_checkpoint._adapters._protocol import register
from optuna_checkpoint._adapters._random import RandomSamplerAdapter
from optuna_checkpoint._adapters._rng import load_rng_state_dict
from optuna_checkpoint._adapters._rng import rng_state_dict


RNG = "rng"  # TPESampler._rng
RANDOM_SAMPLER = "random_sampler"  # TPESampler._random_sampler


@register(TPESampler)
class TPESamplerAdapter(StateAdapter):
    """Captures ``TPESampler._rng`` and ``TPESampler._random_sampler``."""

    name = "TPESampler"
    # Search-space intersections: pure functions of the study's trials, rebuilt on demand.
    CACHE_ATTRS = ("_search_space", "_search_space_group", "_group_decomposed_search_space")
    sampler: TPESampler

    def state_dict(self) -> dict[str, Any]:
        """Capture both generators."""
        return {
            RNG: rng_state_dict(self.sampler._rng),
            RANDOM_SAMPLER: RandomSamplerAdapter(self.sampler._random_sampler).state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore both generators."""
        load_rng_state_dict(self.sampler._rng, self.require(state_dict, RNG))
        RandomSamplerAdapter(self.sampler._random_sampler).load_state_dict(
            self.require(state_dict, RANDOM_SAMPLER)
        )
