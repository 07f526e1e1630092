"""The user's script that the demo runs in its child processes, and kills.

It is an ordinary Optuna script: it opens its study with ``load_if_exists=True`` and optimizes
until the study has N COMPLETE trials, so running it again after a kill continues the study.
"""

from __future__ import annotations

import math
import signal
import time

import optuna
from optuna.samplers import BaseSampler
from optuna.trial import TrialState

from optuna_checkpoint import CheckpointingSampler


STUDY_NAME = "demo"

READY = "optimizing"
"""What a worker prints once its study is open, so that the kills land while it optimizes."""

OBJECTIVE_SECONDS = 0.005
"""How long the objective pretends to train a model, so that some kills land inside it."""

SAMPLER_CLASSES = {"tpe": "TPESampler", "cmaes": "CmaEsSampler", "random": "RandomSampler"}
"""The samplers the demo can run, by their name on the command line."""


def make_sampler(name: str, seed: int) -> BaseSampler:
    """Build a freshly seeded sampler, as a user's script does on every run.

    Args:
        name: ``tpe``, ``cmaes`` or ``random``.
        seed: The sampler's seed.

    Returns:
        The sampler.
    """
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "cmaes":
        # CMA-ES leaves the categorical parameter to its independent sampler, as intended here.
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.RandomSampler(seed=seed)


def objective(trial: optuna.Trial) -> float:
    """A deterministic function of a float, an integer and a categorical parameter.

    Args:
        trial: The trial to take the parameters from.

    Returns:
        The value to minimize.
    """
    x = trial.suggest_float("x", -5.0, 5.0)
    layers = trial.suggest_int("layers", 1, 8)
    activation = trial.suggest_categorical("activation", ["relu", "tanh", "gelu"])
    time.sleep(OBJECTIVE_SECONDS)
    penalty = {"relu": 0.0, "tanh": 0.5, "gelu": 0.25}[activation]
    return (x - 1.0) ** 2 + math.sin(3.0 * x) + 0.3 * (layers - 3) ** 2 + penalty


def run_worker(storage: str, sampler_name: str, seed: int, n_trials: int, wrap: bool) -> int:
    """Optimize the demo study until it has ``n_trials`` COMPLETE trials, continuing it if any.

    Args:
        storage: The study's database URL.
        sampler_name: The sampler to use, see :func:`make_sampler`.
        seed: The sampler's seed.
        n_trials: How many COMPLETE trials the study should have in the end.
        wrap: Whether to wrap the sampler in :class:`CheckpointingSampler`.

    Returns:
        The exit code, 0.
    """
    # Ctrl-C raises KeyboardInterrupt in a terminal, but a child of a non-interactive shell may
    # inherit SIGINT ignored: ask for the terminal's behaviour.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    sampler = make_sampler(sampler_name, seed)
    if wrap:
        sampler = CheckpointingSampler(sampler)
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=storage, load_if_exists=True, sampler=sampler
    )
    complete = (TrialState.COMPLETE,)
    if len(study.get_trials(deepcopy=False, states=complete)) >= n_trials:
        return 0  # done already: optimize() would still run one more trial
    print(READY, flush=True)
    study.optimize(
        objective, callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=complete)]
    )
    return 0
