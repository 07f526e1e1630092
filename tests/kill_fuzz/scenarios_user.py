"""Kill-fuzz scenarios for GPSampler and for user-defined samplers.

``gp-*``: GPSampler with a few start-up trials, so that most trials fit the Gaussian process and
start the kernel fit from the previous trial's hyperparameters (the cache a resume must restore).

``user-*``: samplers written by a user rather than shipped with Optuna: the local-search sampler
of ``docs/adapters.md`` (imported from ``docs/examples``, so the documented code is what is
killed), and a sampler that wraps a ``TPESampler``, once captured through ``Stateful`` with
:func:`optuna_checkpoint.sampler_state_dict` and once, without any such method, with
``allow_pickle=True`` (the test passes that option in the child's config); and ``class
MyTPE(TPESampler): pass``, captured by TPESampler's adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
import importlib.util
import math
from pathlib import Path
import time
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.samplers import GPSampler
from optuna.samplers import RandomSampler
from optuna.samplers import TPESampler
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
from scenarios import Scenario

from optuna_checkpoint import load_sampler_state_dict
from optuna_checkpoint import sampler_state_dict


GP_STARTUP_TRIALS = 3
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


class UserScenarioFailure(Exception):
    """Raised by these objectives for some parameters; caught, so the trial FAILs genuinely."""


# -- GPSampler -------------------------------------------------------------------------------


def gp_one_objective(trial: optuna.Trial, delay: float) -> float:
    """Two floats (one log) and a categorical.

    Never fails or prunes: GPSampler learns only from COMPLETE trials, so it would propose a
    failing point again and again, and the study would never reach its COMPLETE trials.
    """
    x = trial.suggest_float("x", -3.0, 3.0)
    y = trial.suggest_float("y", 1e-2, 10.0, log=True)
    kind = trial.suggest_categorical("kind", ["a", "b"])
    if delay:
        time.sleep(delay)
    return (x - 1.0) ** 2 + math.log10(y) ** 2 + (0.0 if kind == "a" else 0.3)


def gp_two_objectives(trial: optuna.Trial, delay: float) -> tuple[float, float]:
    """Two floats and two conflicting values (never failing, as for ``gp_one_objective``)."""
    x = trial.suggest_float("x", -3.0, 3.0)
    y = trial.suggest_float("y", 0.0, 2.0)
    if delay:
        time.sleep(delay)
    return x**2 + y, (x - 2.0) ** 2 + (y - 2.0) ** 2


def gp_constraints(trial: FrozenTrial) -> Sequence[float]:
    """Feasible where x + y <= 1.5 (a module-level function, as a script would define it)."""
    return [trial.params["x"] + trial.params["y"] - 1.5]


def _gp(seed: int | None) -> BaseSampler:
    return GPSampler(seed=seed, n_startup_trials=GP_STARTUP_TRIALS)


def _gp_constrained(seed: int | None) -> BaseSampler:
    return GPSampler(
        seed=seed, n_startup_trials=GP_STARTUP_TRIALS, constraints_func=gp_constraints
    )


# -- user-defined samplers -------------------------------------------------------------------


def _load_local_search_sampler() -> type[BaseSampler]:
    spec = importlib.util.spec_from_file_location(
        "local_search_sampler", EXAMPLES / "local_search_sampler.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sampler_type: type[BaseSampler] = module.LocalSearchSampler
    return sampler_type


LocalSearchSampler = _load_local_search_sampler()


class TPEWithRandomTrials(BaseSampler):
    """A user's sampler wrapping TPE: every ``period``-th trial is sampled at random instead.

    Its state is the two samplers it holds and a trial counter it advances in ``before_trial``;
    it has no ``state_dict()``, so only ``allow_pickle=True`` can checkpoint it.
    """

    def __init__(self, seed: int | None, period: int = 3) -> None:
        self._tpe = TPESampler(seed=seed, n_startup_trials=3)
        self._random = RandomSampler(seed=None if seed is None else seed + 1)
        self._period = period
        self._started = 0

    def _at_random(self) -> bool:
        return self._started % self._period == 0

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._started += 1
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {} if self._at_random() else self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {} if self._at_random() else self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        inner = self._random if self._at_random() else self._tpe
        return inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._tpe.after_trial(study, trial, state, values)


class StatefulTPEWithRandomTrials(TPEWithRandomTrials):
    """The same sampler made ``Stateful``, reusing optuna-checkpoint's adapters for its parts."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "tpe": sampler_state_dict(self._tpe),
            "random": sampler_state_dict(self._random),
            "started": self._started,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        load_sampler_state_dict(self._tpe, state_dict["tpe"])
        load_sampler_state_dict(self._random, state_dict["random"])
        self._started = state_dict["started"]


class MyTPE(TPESampler):
    """A subclass that adds no attribute: TPESampler's adapter captures its whole state."""


def floats_objective(trial: optuna.Trial, delay: float) -> float:
    """Two linear floats (all the local-search sampler handles); fails for some parameters."""
    x = trial.suggest_float("x", -3.0, 3.0)
    y = trial.suggest_float("y", -3.0, 3.0)
    if delay:
        time.sleep(delay)
    if x + y > 5.0:
        raise UserScenarioFailure(f"deterministic failure at x + y = {x + y}")
    return (x - 1.0) ** 2 + (y + 0.5) ** 2


# What GPSampler imports at its first fit: seconds of CPU that every run would spend again.
GP_PRELOAD = (
    "torch",
    "scipy.optimize",
    "optuna._gp.acqf",
    "optuna._gp.gp",
    "optuna._gp.optim_mixed",
)

SCENARIOS: dict[str, Scenario] = {
    "gp-single": Scenario(sampler=_gp, objective=gp_one_objective, preload=GP_PRELOAD),
    "gp-multi-constrained": Scenario(
        sampler=_gp_constrained,
        objective=gp_two_objectives,
        directions=("minimize", "minimize"),
        preload=GP_PRELOAD,
    ),
    "user-local-search": Scenario(
        sampler=lambda seed: LocalSearchSampler(seed=seed),
        objective=floats_objective,
        catch=(UserScenarioFailure,),
    ),
    "user-tpe-wrapper-stateful": Scenario(
        sampler=lambda seed: StatefulTPEWithRandomTrials(seed),
        objective=floats_objective,
        catch=(UserScenarioFailure,),
    ),
    "user-tpe-subclass": Scenario(
        # Independent: the crash plan kills inside sample_independent, after the start-up trials.
        sampler=lambda seed: MyTPE(seed=seed, n_startup_trials=3, multivariate=False),
        objective=floats_objective,
        catch=(UserScenarioFailure,),
    ),
    # Run with {"allow_pickle": true} in the child's config.
    "user-tpe-wrapper-pickled": Scenario(
        sampler=lambda seed: TPEWithRandomTrials(seed),
        objective=floats_objective,
        catch=(UserScenarioFailure,),
    ),
}
