"""Kill-fuzz scenarios for QMC, Grid, BruteForce and PartialFixed: samplers of indexed spaces.

What makes each of them hard to resume lives partly in the study, not in the sampler:

* ``QMCSampler`` keeps its position in the sequence in a study attribute that every
  ``sample_relative`` advances, so a trial killed after sampling has already moved it on.
* ``GridSampler`` takes the grid point of a trial from its number, and counts FAIL trials as
  visited.
* ``BruteForceSampler`` reads every trial (COMPLETE, PRUNED, RUNNING and FAIL) straight from the
  storage to know which points are left.

The objectives fail (caught) and prune deterministically for some points, so those end states
take part in the comparison. Each passes the crash point ``objective`` a second time once the
trial has sampled all its parameters (the child passes it first, before the objective runs), so
``objective:2k`` kills the k-th trial of a run right after sampling, wrapped or not.
"""

from __future__ import annotations

import math
import time

import optuna
from optuna.samplers import BruteForceSampler
from optuna.samplers import GridSampler
from optuna.samplers import PartialFixedSampler
from optuna.samplers import QMCSampler
from optuna.samplers import TPESampler
from scenarios import Scenario

from optuna_checkpoint._faults import crash_point


class IndexedFailure(Exception):
    """Raised by these objectives for some parameters; caught, so the trial FAILs genuinely."""


def _finish(trial: optuna.Trial, value: float, *, fail: bool, prune: bool) -> float:
    crash_point("objective")  # all parameters are sampled and stored by now
    if fail:
        raise IndexedFailure(f"deterministic failure at {trial.params}")
    if prune:
        trial.report(value, step=0)
        raise optuna.TrialPruned()
    return value


def fixed_space(trial: optuna.Trial, delay: float) -> float:
    """A space without conditions (QMC samples it relatively as a whole after the first trial)."""
    x = trial.suggest_float("x", -5.0, 5.0)
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    n = trial.suggest_int("n", 1, 8)
    kind = trial.suggest_categorical("kind", ["a", "b", "c"])
    if delay:
        time.sleep(delay)
    value = (x - 1.0) ** 2 + (math.log10(lr) + 2.0) ** 2 + 0.1 * n + (kind == "c")
    return _finish(trial, value, fail=n == 8 and kind == "b", prune=x > 4.0)


GRID = {"x": [-2.0, -1.0, 0.0, 0.5, 1.0, 2.0], "n": [1, 2, 3, 4], "kind": ["a", "b", None]}


def grid_objective(trial: optuna.Trial, delay: float) -> float:
    """Suggests exactly the grid's parameters; 72 points, so a study of 10 never exhausts it."""
    x = trial.suggest_float("x", -2.0, 2.0)
    n = trial.suggest_int("n", 1, 4)
    kind = trial.suggest_categorical("kind", ["a", "b", None])
    if delay:
        time.sleep(delay)
    value = (x - 0.5) ** 2 + 0.25 * n + (0.5 if kind is None else 0.0)
    return _finish(trial, value, fail=n == 4 and kind == "a", prune=x == -2.0)


def finite_space(trial: optuna.Trial, delay: float) -> float:
    """A finite define-by-run space with a conditional branch: 45 points in all."""
    n = trial.suggest_int("n", 0, 4)
    kind = trial.suggest_categorical("kind", ["a", "b", "c"])
    if kind == "a":
        extra = trial.suggest_float("a_extra", 0.0, 1.0, step=0.25)
    elif kind == "b":
        extra = float(trial.suggest_int("b_extra", 1, 3))
    else:
        extra = 0.0
    if delay:
        time.sleep(delay)
    value = (n - 2) ** 2 + extra
    return _finish(trial, value, fail=n == 4 and kind == "b", prune=n == 0 and kind == "c")


def _qmc(qmc_type: str, scramble: bool) -> Scenario:
    return Scenario(
        sampler=lambda seed: QMCSampler(qmc_type=qmc_type, scramble=scramble, seed=seed),
        objective=fixed_space,
        catch=(IndexedFailure,),
    )


SCENARIOS: dict[str, Scenario] = {
    "indexed-qmc-sobol": _qmc("sobol", scramble=False),
    "indexed-qmc-sobol-scrambled": _qmc("sobol", scramble=True),
    "indexed-qmc-halton-scrambled": _qmc("halton", scramble=True),
    "indexed-grid": Scenario(
        sampler=lambda seed: GridSampler(GRID, seed=seed),
        objective=grid_objective,
        catch=(IndexedFailure,),
    ),
    "indexed-brute-force": Scenario(
        sampler=lambda seed: BruteForceSampler(seed=seed),
        objective=finite_space,
        catch=(IndexedFailure,),
    ),
    "indexed-brute-force-strict": Scenario(
        sampler=lambda seed: BruteForceSampler(seed=seed, avoid_premature_stop=True),
        objective=finite_space,
        catch=(IndexedFailure,),
    ),
    "indexed-partial-fixed-tpe": Scenario(
        sampler=lambda seed: PartialFixedSampler({"kind": "a"}, TPESampler(seed=seed)),
        objective=fixed_space,
        catch=(IndexedFailure,),
    ),
}
