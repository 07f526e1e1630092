"""State adapter for :class:`optuna.samplers.CmaEsSampler` (all variants).

The CMA optimizer itself is not held in memory: the sampler pickles it into the system attributes
of the trial that closes a generation and reloads it from the last finished trial, so the study
already stores it. What lives only in memory is ``_cma_rng`` (it reseeds the optimizer every trial,
together with ``trial.number``), the independent sampler used outside the relative search space,
and a warn-once flag.

Optuna imports cmaes at the sampler's first proposal; the adapter imports it when the sampler is
wrapped instead, before the study runs. A Ctrl-C that lands in that import while SciPy's C
extensions initialize does not stop the process: cmaes receives it as an ImportError and falls
back on its own statistics, which changes the last bits of every proposal of CMA-ES with margin
(:func:`~optuna_checkpoint.state._versions.cmaes_statistics`). Importing up front keeps that
window out of the study, and says so if it happened anyway.
"""

from __future__ import annotations

from typing import Any

from optuna.samplers import CmaEsSampler

from optuna_checkpoint.state._versions import warn_if_cmaes_fell_back
from optuna_checkpoint.state.adapters._protocol import StateAdapter
from optuna_checkpoint.state.adapters._registry import adapter_of_held
from optuna_checkpoint.state.adapters._registry import register
from optuna_checkpoint.state.adapters._rng import load_rng_state_dict
from optuna_checkpoint.state.adapters._rng import rng_state_dict


CMA_RNG = "cma_rng"  # CmaEsSampler._cma_rng
INDEPENDENT_SAMPLER = "independent_sampler"  # CmaEsSampler._independent_sampler
WARN_INDEPENDENT_SAMPLING = "warn_independent_sampling"  # only changes what is logged


@register(CmaEsSampler)
class CmaEsSamplerAdapter(StateAdapter):
    """Captures ``_cma_rng``, the independent sampler and the warn-once flag."""

    name = "CmaEsSampler"
    # Search-space intersection: a pure function of the study's trials.
    CACHE_ATTRS = ("_search_space",)
    sampler: CmaEsSampler

    def __init__(self, sampler: CmaEsSampler) -> None:
        super().__init__(sampler)
        import cmaes  # noqa: F401 - up front, see the module's docstring

        warn_if_cmaes_fell_back()
        self._independent = adapter_of_held(
            sampler._independent_sampler, holder="CmaEsSampler", role="independent_sampler"
        )
        self.held = (self._independent,)

    def state_dict(self) -> dict[str, Any]:
        """Capture the CMA reseeding RNG and the independent sampler."""
        return {
            CMA_RNG: rng_state_dict(self.sampler._cma_rng),
            INDEPENDENT_SAMPLER: self._independent.state_dict(),
            WARN_INDEPENDENT_SAMPLING: bool(self.sampler._warn_independent_sampling),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the CMA reseeding RNG and the independent sampler."""
        load_rng_state_dict(self.sampler._cma_rng, self.require(state_dict, CMA_RNG))
        self._independent.load_state_dict(self.require(state_dict, INDEPENDENT_SAMPLER))
        self.sampler._warn_independent_sampling = bool(
            self.require(state_dict, WARN_INDEPENDENT_SAMPLING)
        )
