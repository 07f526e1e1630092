"""The user's script that the demo runs in its child processes, and kills.

It is an ordinary Optuna script: it opens its study with ``load_if_exists=True`` and optimizes
until the study has N finished trials (COMPLETE or PRUNED), so running it again after a kill
continues the study. Its objective trains a small numpy model in :data:`STEPS` steps, reports
each step to a ``MedianPruner`` and, when the sampler is a :class:`CheckpointingSampler`, saves
its state with :func:`trial_checkpoint` after each step, so that the retry of a trial that a
kill cut off resumes at its last saved step.

Besides its work, the script says two things for the demo: each attempt prints
``starts <trial number> <first step>`` when its training starts, and each step it begins is
appended to a step log, so that the demo counts the steps a kill made it run again.
"""

from __future__ import annotations

from collections.abc import Callable
import math
from pathlib import Path
import signal
import time

import numpy as np
import optuna
from optuna.samplers import BaseSampler
from optuna.trial import TrialState

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import trial_checkpoint


STUDY_NAME = "demo"

READY = "optimizing"
"""What a worker prints once its study is open, so that the kills land while it optimizes."""

STARTS = "starts"
"""What an attempt prints when its training starts: ``starts <trial number> <first step>``."""

STEPS = 10
"""Training steps per trial, numbered from 1 as they are reported."""

STEP_SECONDS = 0.005
"""How long each step pretends to train, so that most kills land inside a trial's training."""

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
"""The states a run counts towards its number of trials."""

SAMPLER_CLASSES = {"tpe": "TPESampler", "cmaes": "CmaEsSampler", "random": "RandomSampler"}
"""The samplers the demo can run, by their name on the command line."""

_TARGET = np.array([0.5, -1.0, 1.5, 0.0, -0.5, 1.0])
"""The weights the training looks for."""

_DATA_SEED = 0
"""Seed of the noise of the "minibatches": the same data for every trial, drawn in order."""

_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
    "gelu": lambda z: z / (1.0 + np.exp(-1.702 * z)),
}


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


def train_one_step(
    weights: np.ndarray, lr: float, layers: int, activation: str, rng: np.random.Generator
) -> np.ndarray:
    """One step of noisy gradient descent towards the target weights.

    Args:
        weights: The model's weights before the step.
        lr: The learning rate.
        layers: Deeper models take larger, less stable steps.
        activation: Shapes the gradient: ``relu`` corrects only overshoots, ``tanh`` saturates.
        rng: The data's random generator, which the step advances.

    Returns:
        The weights after the step.
    """
    gradient = _ACTIVATIONS[activation](weights - _TARGET) * (1.0 + 0.1 * layers)
    return weights - lr * (gradient + rng.normal(0.0, 0.1, size=weights.shape))


def loss_of(weights: np.ndarray, layers: int) -> float:
    """The validation loss: squared distance to the target, plus a cost per layer."""
    # math.fsum rounds once, whatever the order of the terms: the same bits on every run.
    return math.fsum(((weights - _TARGET) ** 2).tolist()) + 0.02 * layers


def log_step(step_log: Path, number: int, step: int) -> None:
    """Append ``number step`` to the step log before the step runs, so a kill cannot lose it."""
    with step_log.open("a") as log:
        log.write(f"{number} {step}\n")


def objective(trial: optuna.Trial, step_log: Path, resumable: bool) -> float:
    """Train for :data:`STEPS` steps, from the last saved step of an earlier attempt if any.

    Args:
        trial: The trial to take the parameters from.
        step_log: Where each step is logged as it begins.
        resumable: Whether to save the state after each step with :func:`trial_checkpoint`
            (which needs a :class:`CheckpointingSampler`), and load it on a retry.

    Returns:
        The validation loss after the last step, to minimize.
    """
    lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
    layers = trial.suggest_int("layers", 1, 8)
    activation = trial.suggest_categorical("activation", list(_ACTIVATIONS))
    ckpt = trial_checkpoint(trial) if resumable else None
    state = None if ckpt is None else ckpt.load()  # None on a trial's first attempt
    rng = np.random.default_rng(_DATA_SEED)
    done, weights = 0, np.zeros(len(_TARGET))
    if state is not None:
        done, weights = state["steps"], state["weights"]
        rng.bit_generator.state = state["rng"]  # the noise goes on where it stopped
    print(f"{STARTS} {trial.number} {done + 1}", flush=True)
    loss = loss_of(weights, layers)
    for step in range(done + 1, STEPS + 1):
        log_step(step_log, trial.number, step)
        weights = train_one_step(weights, lr, layers, activation, rng)
        loss = loss_of(weights, layers)
        time.sleep(STEP_SECONDS)
        trial.report(loss, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
        if ckpt is not None:
            ckpt.save({"steps": step, "weights": weights, "rng": rng.bit_generator.state})
    return loss


def run_worker(
    storage: str, sampler_name: str, seed: int, n_trials: int, wrap: bool, step_log: Path
) -> int:
    """Optimize the demo study until it has ``n_trials`` finished trials, continuing it if any.

    Args:
        storage: The study's database URL.
        sampler_name: The sampler to use, see :func:`make_sampler`.
        seed: The sampler's seed.
        n_trials: How many COMPLETE or PRUNED trials the study should have in the end.
        wrap: Whether to wrap the sampler in :class:`CheckpointingSampler` and save each
            trial's state with :func:`trial_checkpoint`.
        step_log: Where the objective logs each step as it begins.

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
        study_name=STUDY_NAME,
        storage=storage,
        load_if_exists=True,
        sampler=sampler,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
    )
    if len(study.get_trials(deepcopy=False, states=FINISHED)) >= n_trials:
        return 0  # done already: optimize() would still run one more trial
    print(READY, flush=True)
    study.optimize(
        lambda trial: objective(trial, step_log, resumable=wrap),
        callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=FINISHED)],
    )
    return 0
