"""One worker of a deterministic parallel study: run as ``python deterministic_child.py CONFIG``.

It does what a user's worker script does: build the seeded sampler, wrap it with
``deterministic_workers`` (or not, for the control), load the study the test created and optimize
until the study's logical trajectory holds ``positions`` trials. The objective is a function of
its parameters only, but each trial sleeps a random time drawn from the operating system's
entropy, so the order in which trials finish differs on every run. It reports at three steps and
asks the study's pruner, so pruning decisions take part in the comparison.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from storages import open_storage  # this folder, which is on the path of a script run from it

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import trial_checkpoint
from optuna_checkpoint import uninterrupted_trials


def make_sampler(config: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """The worker's sampler: the same seeded one in every worker."""
    seed = config["seed"]
    sampler: optuna.samplers.BaseSampler = {
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
        "tpe-liar": lambda: optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=5, multivariate=True, constant_liar=True
        ),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=3),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed, n_startup_trials=5),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed, population_size=6),
    }[config["sampler"]]()
    if config["deterministic"]:
        return CheckpointingSampler(
            sampler, deterministic_workers=config["workers"], worker_id=config.get("worker_id")
        )
    return sampler


def objective(
    trial: optuna.Trial, delays: random.Random, delay: float, save: bool = False
) -> float:
    """Three reported steps; with ``save``, each saved with trial_checkpoint, and a retry
    continues after the last saved step."""
    x = trial.suggest_float("x", -5.0, 5.0)
    y = trial.suggest_float("y", -5.0, 5.0)
    value = (x - 1.0) ** 2 + (y + 2.0) ** 2
    ckpt = trial_checkpoint(trial) if save else None
    state = None if ckpt is None else ckpt.load()
    for step in range(0 if state is None else state["step"], 3):
        time.sleep(delays.uniform(0.0, delay))
        trial.report(value * (3 - step), step)
        if trial.should_prune():
            raise optuna.TrialPruned()
        if ckpt is not None:
            ckpt.save({"step": step + 1})
    return value


def main() -> int:
    config = json.loads(sys.argv[1])
    # A process started from a non-interactive shell may inherit SIGINT ignored; the test means
    # SIGINT to arrive as the KeyboardInterrupt of a user's Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    delays = random.Random()  # from the OS: another schedule on every run

    def stop_when_complete(study: optuna.Study, trial: FrozenTrial) -> None:
        if config["deterministic"]:
            done = len(uninterrupted_trials(study))
        else:
            done = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        if done >= config["positions"]:
            study.stop()

    study = optuna.load_study(
        study_name="parallel",
        storage=open_storage(config["storage"]),
        sampler=make_sampler(config),
    )
    print("ready", flush=True)
    study.optimize(
        lambda trial: objective(trial, delays, config["delay"], config.get("save", False)),
        n_jobs=config.get("n_jobs", 1),
        callbacks=[stop_when_complete],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
