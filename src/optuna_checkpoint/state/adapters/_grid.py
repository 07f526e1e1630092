"""State adapter for :class:`optuna.samplers.GridSampler`.

The grid is shuffled once, at construction, from ``seed or 0``; which point a trial gets is
then a function of the trial's number (the logical number, under the wrapper) and of the grid
ids stored on the study's trials. The generator is drawn from again only once the grid is
exhausted, to pick a point to re-evaluate, and by ``reseed_rng``.
"""

from __future__ import annotations

from optuna.samplers import GridSampler

from optuna_checkpoint.state.adapters._random import GeneratorAdapter
from optuna_checkpoint.state.adapters._registry import register


@register(GridSampler, reference=lambda: GridSampler({}))
class GridSamplerAdapter(GeneratorAdapter):
    """Captures ``GridSampler._rng``."""

    name = "GridSampler"
    # The shuffled grid and what is derived from it: functions of ``_search_space`` and the
    # seed, which the fingerprint covers (the seed through the generator's digest). Left out so
    # that a large grid does not make a large fingerprint.
    CACHE_ATTRS = ("_all_grids", "_param_names", "_n_min_trials")
    sampler: GridSampler
