"""State adapter for :class:`optuna.samplers.TPESampler`.

TPE draws from two generators: its own, for the Parzen-estimator candidates, and that of the
``RandomSampler`` it uses for start-up trials and dynamic spaces. Both are seeded with the same
seed and both advance, so both are stored.
"""

from __future__ import annotations

from optuna.samplers import TPESampler

from optuna_checkpoint.state.adapters._random import GeneratorAndRandomSamplerAdapter
from optuna_checkpoint.state.adapters._registry import register


@register(TPESampler)
class TPESamplerAdapter(GeneratorAndRandomSamplerAdapter):
    """Captures ``TPESampler._rng`` and ``TPESampler._random_sampler``."""

    name = "TPESampler"
    # Search-space intersections: pure functions of the study's trials, rebuilt on demand.
    CACHE_ATTRS = ("_search_space", "_search_space_group", "_group_decomposed_search_space")
    sampler: TPESampler
