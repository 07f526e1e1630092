"""Kill-fuzz scenarios: NSGA-II/III, multi-objective and constrained TPE, warm-started CMA-ES.

The NSGA scenarios use a population of 4, so that a study of ten COMPLETE trials goes through
three generations, and a kill in the 5th or 9th trial lands in the first trial of a generation:
the one that selects the parents and caches them in a study attribute. Their objective has two
values and fails, deterministically, for some parameters, so genuine failures take part in the
comparison. The other NSGA crossovers are covered in one process by
``tests/test_adapters_evolutionary.py``.
"""

from __future__ import annotations

from collections.abc import Callable
import math
import time
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.samplers import CmaEsSampler
from optuna.samplers import NSGAIIISampler
from optuna.samplers import NSGAIISampler
from optuna.samplers import TPESampler
from optuna.samplers.nsgaii import BaseCrossover
from optuna.samplers.nsgaii import SBXCrossover
from optuna.samplers.nsgaii import UNDXCrossover
from optuna.trial import FrozenTrial
from scenarios import Scenario

from optuna_checkpoint import load_sampler_state_dict
from optuna_checkpoint import sampler_state_dict
from optuna_checkpoint.state.adapters._rng import load_rng_state_dict
from optuna_checkpoint.state.adapters._rng import rng_state_dict


POPULATION = 4
TWO_OBJECTIVES = ("minimize", "minimize")


class EvolutionaryFailure(Exception):
    """Raised by these objectives for some parameters; caught, so the trial FAILs genuinely."""


def two_objectives(trial: optuna.Trial, delay: float) -> tuple[float, float]:
    """A fixed search space (NSGA samples relatively only there) with two conflicting values."""
    x = trial.suggest_float("x", -5.0, 5.0)
    y = trial.suggest_float("y", 0.0, 3.0)
    n = trial.suggest_int("n", 1, 6)
    kind = trial.suggest_categorical("kind", ["a", "b", "c"])
    if delay:
        time.sleep(delay)
    if n == 3 and kind == "c":
        raise EvolutionaryFailure(f"deterministic failure at n={n}, kind={kind}")
    shift = {"a": 0.0, "b": 0.5, "c": 1.0}[kind]
    return x**2 + y + 0.1 * n + shift, (x - 2.0) ** 2 + (y - 3.0) ** 2 - 0.05 * n


def two_objectives_without_failures(trial: optuna.Trial, delay: float) -> tuple[float, float]:
    """:func:`two_objectives` over floats only: multi-objective TPE, which learns nothing from a
    FAIL, would propose the failing corner again and again."""
    x = trial.suggest_float("x", -5.0, 5.0)
    y = trial.suggest_float("y", 0.0, 3.0)
    if delay:
        time.sleep(delay)
    return x**2 + y, (x - 2.0) ** 2 + (y - 3.0) ** 2


def one_objective(trial: optuna.Trial, delay: float) -> float:
    """A single value over two floats and an int, for TPE and CMA-ES."""
    x = trial.suggest_float("x", -5.0, 5.0)
    y = trial.suggest_float("y", 1e-3, 10.0, log=True)
    n = trial.suggest_int("n", 1, 6)
    if delay:
        time.sleep(delay)
    return (x - 1.0) ** 2 + (math.log10(y) - 0.5) ** 2 + 0.1 * n


def constraint_of(trial: FrozenTrial) -> list[float]:
    """A module-level constraints function: feasible when x + y <= 2."""
    return [trial.params["x"] + trial.params["y"] - 2.0]


def source_trials() -> list[FrozenTrial]:
    """Deterministic warm-start trials for CMA-ES, in the search space of :func:`one_objective`."""
    distributions = {
        "x": FloatDistribution(-5.0, 5.0),
        "y": FloatDistribution(1e-3, 10.0, log=True),
        "n": IntDistribution(1, 6),
    }
    trials = []
    for i in range(12):
        params = {"x": -4.0 + 0.7 * i, "y": 0.01 * (i + 1) ** 2, "n": 1 + i % 6}
        value = (params["x"] - 1.0) ** 2 + (math.log10(params["y"]) - 0.5) ** 2
        trials.append(
            optuna.trial.create_trial(params=params, distributions=distributions, value=value)
        )
    return trials


def nsga(
    sampler_type: type[NSGAIISampler] | type[NSGAIIISampler],
    crossover: type[BaseCrossover] | None = None,
    **options: Any,
) -> Callable[[int | None], optuna.samplers.BaseSampler]:
    """A factory of an NSGA sampler of :data:`POPULATION`, each with a crossover of its own."""

    def make(seed: int | None) -> optuna.samplers.BaseSampler:
        chosen = None if crossover is None else crossover()
        return sampler_type(population_size=POPULATION, seed=seed, crossover=chosen, **options)

    return make


def _nsga_scenario(
    sampler_type: type[NSGAIISampler] | type[NSGAIIISampler],
    crossover: type[BaseCrossover] | None = None,
    **options: Any,
) -> Scenario:
    return Scenario(
        sampler=nsga(sampler_type, crossover, **options),
        objective=two_objectives,
        directions=TWO_OBJECTIVES,
        catch=(EvolutionaryFailure,),
    )


class NSGAIIGeneratorsOnly(NSGAIISampler):
    """For the control: NSGA-II as a Stateful sampler that restores its two generators exactly.

    A Stateful sampler gets no withdrawal of the parent population its interrupted trial
    cached, so this shows what the NSGA adapter's withdrawal is for.
    """

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": rng_state_dict(self._rng),
            "random": sampler_state_dict(self._random_sampler),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        load_rng_state_dict(self._rng, state_dict["rng"])
        load_sampler_state_dict(self._random_sampler, state_dict["random"])


SCENARIOS: dict[str, Scenario] = {
    "evo-nsga2": _nsga_scenario(NSGAIISampler),
    "evo-nsga2-sbx-constrained": _nsga_scenario(
        NSGAIISampler, crossover=SBXCrossover, constraints_func=constraint_of
    ),
    "evo-nsga3-undx-constrained": _nsga_scenario(
        NSGAIIISampler, crossover=UNDXCrossover, constraints_func=constraint_of
    ),
    "evo-nsga2-generators-only": _nsga_scenario(NSGAIIGeneratorsOnly),
    "evo-tpe-multiobjective": Scenario(
        sampler=lambda seed: TPESampler(seed=seed, n_startup_trials=4),
        objective=two_objectives_without_failures,
        directions=TWO_OBJECTIVES,
    ),
    "evo-tpe-constraints-lambda": Scenario(
        sampler=lambda seed: TPESampler(
            seed=seed,
            n_startup_trials=4,
            constraints_func=lambda t: [t.params["x"] - 2.0 * t.params["n"] / 6.0],
        ),
        objective=one_objective,
    ),
    "evo-cmaes-source-trials": Scenario(
        sampler=lambda seed: CmaEsSampler(seed=seed, source_trials=source_trials()),
        objective=one_objective,
    ),
    "evo-cmaes-x0-sigma0": Scenario(
        sampler=lambda seed: CmaEsSampler(
            seed=seed, x0={"x": 0.5, "y": 1.0, "n": 3}, sigma0=0.7, n_startup_trials=2
        ),
        objective=one_objective,
    ),
}
