"""Kill-fuzz scenarios for pruners: Hyperband and successive halving, wrapped and bare.

Every scenario runs a seeded TPE sampler (three start-up trials, so most trials are sampled from
a model of the earlier trials' states and values) and an objective that reports a noisy
learning curve and asks ``should_prune`` after every step. The number of steps depends on the
parameters, so the resources "auto" takes from the first COMPLETE trial differ from those a
fresh pruner would take from all of them after a restart. Successive halving's "auto" is the
longest trial's last step // 100, so its scenario reports at steps 1, 3, 9, ... Each step
passes the ``objective`` crash point: a crash plan can stop a trial after it has reported (and
written successive halving's ``completed_rung_*`` attributes) but before it finishes.

``pruners-<name>`` pass the pruner as users do, bare (the sampler wraps it in place);
``pruners-<name>-wrapped`` pass it in ``CheckpointingPruner``; ``pruners-<name>-opaque`` pass a
subclass with an attribute of its own, which no adapter knows, so it stays bare: the controls,
which must diverge. ``pruners-median`` runs Optuna's default pruner, which keeps no state and is
left bare.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import math
import time
from typing import Any

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


class OpaqueHyperband(HyperbandPruner):
    """Hyperband with an attribute of its own: no adapter knows it, so it stays bare."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label = "mine"


class OpaqueSuccessiveHalving(SuccessiveHalvingPruner):
    """Successive halving with an attribute of its own: it stays bare too."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label = "mine"


def _hyperband_auto(kind: type[HyperbandPruner] = HyperbandPruner) -> BasePruner:
    return kind()


def _hyperband_explicit(kind: type[HyperbandPruner] = HyperbandPruner) -> BasePruner:
    return kind(min_resource=1, max_resource=9, reduction_factor=3)


def _successive_halving_auto(
    kind: type[SuccessiveHalvingPruner] = SuccessiveHalvingPruner,
) -> BasePruner:
    return kind(min_resource="auto", reduction_factor=2)


def _successive_halving_explicit(
    kind: type[SuccessiveHalvingPruner] = SuccessiveHalvingPruner,
) -> BasePruner:
    return kind(min_resource=1, reduction_factor=2)


_HYPERBAND_OPAQUE = functools.partial(_hyperband_auto, OpaqueHyperband)
_SH_OPAQUE = functools.partial(_successive_halving_auto, OpaqueSuccessiveHalving)

SCENARIOS: dict[str, Scenario] = {
    "pruners-hyperband-auto": _scenario(_hyperband_auto),
    "pruners-hyperband-auto-wrapped": _scenario(_wrapped(_hyperband_auto)),
    "pruners-hyperband-auto-opaque": _scenario(_HYPERBAND_OPAQUE),
    "pruners-hyperband-explicit": _scenario(_hyperband_explicit),
    "pruners-hyperband-explicit-wrapped": _scenario(_wrapped(_hyperband_explicit)),
    "pruners-hyperband-explicit-opaque": _scenario(
        functools.partial(_hyperband_explicit, OpaqueHyperband)
    ),
    "pruners-sh-auto": _scenario(_successive_halving_auto, geometric=True),
    "pruners-sh-auto-wrapped": _scenario(_wrapped(_successive_halving_auto), geometric=True),
    "pruners-sh-auto-opaque": _scenario(_SH_OPAQUE, geometric=True),
    "pruners-sh-explicit": _scenario(_successive_halving_explicit, noise=0.5),
    "pruners-sh-explicit-wrapped": _scenario(_wrapped(_successive_halving_explicit), noise=0.5),
    "pruners-sh-explicit-opaque": _scenario(
        functools.partial(_successive_halving_explicit, OpaqueSuccessiveHalving), noise=0.5
    ),
    "pruners-median": _scenario(lambda: MedianPruner(n_startup_trials=2), noise=0.5),
}
