"""A seeded local-search sampler that optuna-checkpoint resumes exactly, without pickling."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState


class LocalSearchSampler(optuna.samplers.BaseSampler):
    """Samples float parameters around the best trial so far; uniformly until there is one.

    Args:
        seed: Seed of the sampler's random generator.
        step: Standard deviation of a step, as a fraction of each parameter's range.
    """

    def __init__(self, seed: int | None = None, step: float = 0.1) -> None:
        # Configuration: set here, never changed. Keeping the seed as an attribute puts it in
        # the configuration fingerprint, so resuming with another seed is refused.
        self._seed = seed
        self._step = step
        # State: changes from trial to trial and decides the next proposals.
        self._rng = np.random.RandomState(seed)
        self._best_params: dict[str, float] | None = None
        self._best_value: float | None = None

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """Sample nothing jointly: every parameter goes to :meth:`sample_independent`."""
        return {}

    def sample_relative(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, BaseDistribution],
    ) -> dict[str, Any]:
        """Sample nothing jointly (the relative search space is empty)."""
        return {}

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        """Step from the best trial's value, or draw uniformly while there is none."""
        if not isinstance(param_distribution, FloatDistribution) or param_distribution.log:
            raise ValueError("LocalSearchSampler samples linear float parameters only")
        low, high = param_distribution.low, param_distribution.high
        if self._best_params is None or param_name not in self._best_params:
            return float(self._rng.uniform(low, high))
        center = self._best_params[param_name]
        return float(np.clip(center + self._rng.normal(0.0, self._step * (high - low)), low, high))

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: list[float] | None,
    ) -> None:
        """Keep the best COMPLETE trial's parameters in memory."""
        if state != TrialState.COMPLETE or values is None:
            return
        value = values[0] if study.direction == StudyDirection.MINIMIZE else -values[0]
        if self._best_value is None or value < self._best_value:
            self._best_params = dict(trial.params)
            self._best_value = value

    # -- optuna_checkpoint.Stateful ------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Return everything that changes between trials, as plain values and numpy arrays."""
        _, key, pos, has_gauss, cached_gaussian = self._rng.get_state()
        return {
            # The form optuna-checkpoint recognises as a generator (see "Random generators").
            "rng": {
                "key": key,
                "pos": pos,
                "has_gauss": has_gauss,
                "cached_gaussian": cached_gaussian,
            },
            "best_params": self._best_params,
            "best_value": self._best_value,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, into a freshly constructed sampler."""
        rng = state_dict["rng"]
        self._rng.set_state(
            ("MT19937", rng["key"], rng["pos"], rng["has_gauss"], rng["cached_gaussian"])
        )
        self._best_params = state_dict["best_params"]
        self._best_value = state_dict["best_value"]
