"""Adapters for samplers whose state is their generators: Random, and the bases others share.

Many of Optuna's samplers keep all their in-memory state in ``_rng`` (a ``LazyRandomState``),
some also in the ``RandomSampler`` they fall back on, ``_random_sampler``. The two base classes
here capture exactly that, under the same keys for every sampler, so that a sampler's adapter
says only which sampler it is and what it leaves out of the fingerprint.
"""

from __future__ import annotations

from typing import Any

from optuna.samplers import RandomSampler

from optuna_checkpoint.state.adapters._protocol import StateAdapter
from optuna_checkpoint.state.adapters._registry import register
from optuna_checkpoint.state.adapters._rng import load_rng_state_dict
from optuna_checkpoint.state.adapters._rng import rng_state_dict


RNG = "rng"  # the sampler's _rng
RANDOM_SAMPLER = "random_sampler"  # the sampler's _random_sampler


class GeneratorAdapter(StateAdapter):
    """Captures the sampler's ``_rng``, restored in place (objects sharing it keep sharing it)."""

    sampler: Any  # any sampler with an ``_rng``; subclasses name theirs

    def state_dict(self) -> dict[str, Any]:
        """Capture the generator."""
        return {RNG: rng_state_dict(self.sampler._rng)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the generator."""
        load_rng_state_dict(self.sampler._rng, self.require(state_dict, RNG))


@register(RandomSampler)
class RandomSamplerAdapter(GeneratorAdapter):
    """Captures ``RandomSampler._rng``, its only state."""

    name = "RandomSampler"
    sampler: RandomSampler


class GeneratorAndRandomSamplerAdapter(GeneratorAdapter):
    """Captures the sampler's ``_rng`` and its fallback ``_random_sampler``."""

    def state_dict(self) -> dict[str, Any]:
        """Capture both generators."""
        random_sampler = RandomSamplerAdapter(self.sampler._random_sampler)
        return {**super().state_dict(), RANDOM_SAMPLER: random_sampler.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore both generators."""
        super().load_state_dict(state_dict)
        RandomSamplerAdapter(self.sampler._random_sampler).load_state_dict(
            self.require(state_dict, RANDOM_SAMPLER)
        )
