"""State adapter for :class:`optuna.samplers.RandomSampler`: one Mersenne Twister."""

from __future__ import annotations

from typing import Any

from optuna.samplers import RandomSampler

from optuna_checkpoint._adapters._protocol import StateAdapter
from optuna_checkpoint._adapters._protocol import register
from optuna_checkpoint._adapters._rng import load_rng_state_dict
from optuna_checkpoint._adapters._rng import rng_state_dict


RNG = "rng"  # RandomSampler._rng


@register(RandomSampler)
class RandomSamplerAdapter(StateAdapter):
    """Captures ``RandomSampler._rng``, its only state."""

    name = "RandomSampler"
    sampler: RandomSampler

    def state_dict(self) -> dict[str, Any]:
        """Capture the RNG."""
        return {RNG: rng_state_dict(self.sampler._rng)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the RNG."""
        load_rng_state_dict(self.sampler._rng, self.require(state_dict, RNG))
