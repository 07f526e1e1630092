"""Kill-fuzz scenarios for pruners: Hyperband and successive halving, wrapped and bare.

Every scenario runs a seeded TPE sampler (three start-up trials, so most trials are sampled from
a model of the earlier trials' states and values) and an objective that reports a noisy
learning curve and asks ``should_prune`` after every step. The number of steps depends on the
parameters, so the resources "auto" takes from the first COMPLETE trial differ from those a
fresh pruner would take from all of them after a restart. Successive halving's "auto" is the
longest trial's last step // 100, so its scenario reports at steps 1, 3, 9, ... Each step
passes the ``objective`` crash point: a crash plan can stop a trial after it has reported (and
written successive halving's ``completed_rung_*`` attributes) but before it finishes.

``pruners-*-bare`` run the same pruner without ``CheckpointingPruner`` (the sampler is still
wrapped): the controls, which must diverge. ``pruners-median`` runs Optuna's default pruner,
which resumes exactly without the wrapper.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import math
import time

import optuna
from optuna.pruners import BasePruner
from optuna.pruners import HyperbandPruner
from optuna.pruners import MedianPruner
from optuna.pruners import SuccessiveHalvingPruner
from optuna.samplers import TPESampler
from scenarios import Scenario

from optuna_checkpoint import CheckpointingPruner
from optuna_checkpoint._faults import crash_point


STARTUP_TRIALS = 3


def staged(trial: optuna.Trial, delay: float, geometric: bool, noise: float) -> float:
    """Report a noisy, mostly falling learning curve, step by step; prune when told.

    Linear: steps 1 to 2..5. Geometric: steps 1, 3, 9, ... up to 27..729, whose last step
    makes successive halving's "auto" minimum resource 1, 2 or 7.
    """
    x = trial.suggest_float("x", -5.0, 5.0)
    lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
    width = trial.suggest_int("width", 1, 4)
    value = math.inf
    n_steps = 3 + width if geometric else 1 + width
    for k in range(n_steps):
        value = (x - 1.0) ** 2 + abs(math.log10(lr) + 1.5) + 0.05 * width + 1.0 / (k + 1)
        value += noise * math.sin(3.0 * x + k)  # a noisy curve: more trials cross the median
        trial.report(value, 3**k if geometric else k + 1)
        if trial.should_prune():
            raise optuna.TrialPruned()
        crash_point("objective")
        if delay:
            time.sleep(delay / n_steps)
    return value


def tpe(seed: int | None) -> TPESampler:
    """The sampler of every scenario."""
    return TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS)


def _scenario(
    pruner: Callable[[], BasePruner], *, geometric: bool = False, noise: float = 0.0
) -> Scenario:
    objective = functools.partial(staged, geometric=geometric, noise=noise)
    return Scenario(sampler=tpe, objective=objective, pruner=pruner)


def _wrapped(pruner: Callable[[], BasePruner]) -> Callable[[], BasePruner]:
    return lambda: CheckpointingPruner(pruner())


def _hyperband_explicit() -> BasePruner:
    return HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3)


def _successive_halving_auto() -> BasePruner:
    return SuccessiveHalvingPruner(min_resource="auto", reduction_factor=2)


def _successive_halving_explicit() -> BasePruner:
    return SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)


SCENARIOS: dict[str, Scenario] = {
    "pruners-hyperband-auto": _scenario(_wrapped(HyperbandPruner)),
    "pruners-hyperband-auto-bare": _scenario(HyperbandPruner),
    "pruners-hyperband-explicit": _scenario(_wrapped(_hyperband_explicit)),
    "pruners-hyperband-explicit-bare": _scenario(_hyperband_explicit),
    "pruners-sh-auto": _scenario(_wrapped(_successive_halving_auto), geometric=True),
    "pruners-sh-auto-bare": _scenario(_successive_halving_auto, geometric=True),
    "pruners-sh-explicit": _scenario(_wrapped(_successive_halving_explicit), noise=0.5),
    "pruners-sh-explicit-bare": _scenario(_successive_halving_explicit, noise=0.5),
    "pruners-median": _scenario(lambda: MedianPruner(n_startup_trials=2), noise=0.5),
}
