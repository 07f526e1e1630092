"""State adapter for :class:`optuna.samplers.BruteForceSampler`.

The sampler rebuilds its tree of visited points from the study's trials on every call, so its
only state is the generator that picks among the unvisited branches.
"""

from __future__ import annotations

from optuna.samplers import BruteForceSampler

from optuna_checkpoint.state.adapters._random import GeneratorAdapter
from optuna_checkpoint.state.adapters._registry import register


@register(BruteForceSampler)
class BruteForceSamplerAdapter(GeneratorAdapter):
    """Captures ``BruteForceSampler._rng``."""

    name = "BruteForceSampler"
    sampler: BruteForceSampler
