"""The study that the kill-fuzz tests kill and resume: run as ``python child.py CONFIG_JSON``.

It does what a user's script does: build a freshly seeded sampler, wrap it (unless the config
says ``"wrap": false``, for the control), open the study with ``load_if_exists=True`` and optimize
until N trials are COMPLETE. The objective is a deterministic function of its parameters, uses
every kind of distribution and a conditional branch, sometimes fails (caught) and sometimes
prunes, so all three end states take part in the comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import math
import os
import signal
import sys
import time
import warnings

import optuna
from optuna.trial import TrialState
from scenarios import Scenario  # this folder, which is on the path of a script run from it
from scenarios import scenario
from storages import open_storage

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint._faults import crash_point


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    samplers = optuna.samplers
    factories = {
        "random": lambda: samplers.RandomSampler(seed=seed),
        "tpe": lambda: samplers.TPESampler(seed=seed),
        "tpe-independent": lambda: samplers.TPESampler(seed=seed, multivariate=False),
        "tpe-group": lambda: samplers.TPESampler(seed=seed, multivariate=True, group=True),
        "cmaes": lambda: samplers.CmaEsSampler(seed=seed),
        "cmaes-sep": lambda: samplers.CmaEsSampler(seed=seed, use_separable_cma=True),
        "cmaes-margin": lambda: samplers.CmaEsSampler(seed=seed, with_margin=True),
        "cmaes-lr-adapt": lambda: samplers.CmaEsSampler(seed=seed, lr_adapt=True),
    }
    return factories[name]()


class GenuineFailure(Exception):
    """Raised by the objective for some parameters; caught by ``study.optimize(catch=...)``."""


# ``(file, trial number)``: that trial waits inside the objective while the file exists, so a
# test can act while this process is in the middle of a trial (it prints ``paused`` first).
_pause: tuple[str, int] | None = None


def objective(trial: optuna.Trial, delay: float, conditional: bool = True) -> float:
    crash_point("objective")
    if _pause is not None and trial.number == _pause[1] and os.path.exists(_pause[0]):
        print("paused", flush=True)
        while os.path.exists(_pause[0]):
            time.sleep(0.01)
    x = trial.suggest_float("x", -5.0, 5.0)
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    s = trial.suggest_float("s", 0.0, 1.0, step=0.1)
    n = trial.suggest_int("n", 1, 8)
    kind = trial.suggest_categorical("kind", ["a", "b"])
    if not conditional:
        extra = 0.0
    elif kind == "a":
        extra = trial.suggest_float("a_extra", 0.0, 1.0)
    else:
        extra = float(trial.suggest_int("b_extra", 0, 3))
    if delay:
        time.sleep(delay)
    value = (x - 1.0) ** 2 + (math.log10(lr) + 2.0) ** 2 + (s - 0.3) ** 2 + 0.1 * n + extra
    if n == 8 and kind == "b":
        raise GenuineFailure(f"deterministic failure at n={n}")
    if x > 4.0:
        trial.report(value, step=0)
        raise optuna.TrialPruned()
    return value


def main() -> int:
    config = json.loads(sys.argv[1])
    global _pause
    _pause = (config["pause_file"], config["pause_at_trial"]) if config.get("pause_file") else None
    # A script started from a non-interactive shell may inherit SIGINT ignored; a user's
    # terminal delivers it as KeyboardInterrupt, which is what the tests mean to exercise.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    chosen: Scenario | None = scenario(config["scenario"]) if config.get("scenario") else None
    if chosen is not None:
        sampler = chosen.sampler(config.get("seed"))
    else:
        sampler = make_sampler(config["sampler"], config.get("seed"))
    if config.get("initial_state_from"):
        _load_initial_state(sampler, config["initial_state_from"])
    if config.get("wrap", True):
        sampler = CheckpointingSampler(
            sampler,
            allow_pickle=config.get("allow_pickle", False),
            max_retries=config.get("max_retries"),
            worker_id=config.get("worker_id"),
        )
    study = optuna.create_study(
        study_name="fuzz",
        storage=open_storage(config["storage"]),
        load_if_exists=True,
        sampler=sampler,
        directions=list(chosen.directions) if chosen is not None else None,
        pruner=chosen.pruner() if chosen is not None and chosen.pruner is not None else None,
    )
    n_complete = config["n_complete"]
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= n_complete:
        return 0
    print("ready", flush=True)
    delay, conditional = config.get("delay", 0.0), config.get("conditional", True)
    if config.get("loop") == "ask_tell":
        _ask_tell_loop(study, n_complete, delay, conditional)
        return 0
    if chosen is not None and chosen.objective is not None:
        custom = chosen.objective

        def run(trial: optuna.Trial) -> float | Sequence[float]:
            crash_point("objective")
            return custom(trial, delay)

        catch: tuple[type[Exception], ...] = (GenuineFailure, *chosen.catch)
    else:

        def run(trial: optuna.Trial) -> float | Sequence[float]:
            return objective(trial, delay, conditional)

        catch = (GenuineFailure,)
    study.optimize(
        run,
        catch=catch,
        callbacks=[
            optuna.study.MaxTrialsCallback(n_complete, states=(TrialState.COMPLETE,)),
            lambda study, trial: crash_point("between_trials"),
        ],
    )
    return 0


def _ask_tell_loop(study: optuna.Study, n_complete: int, delay: float, conditional: bool) -> None:
    """The same study driven by ask and tell in one process, as users of that API write it."""
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    while complete < n_complete:
        trial = study.ask()
        try:
            value = objective(trial, delay, conditional)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        except GenuineFailure:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)
            complete += 1
        crash_point("between_trials")


def _load_initial_state(sampler: optuna.samplers.BaseSampler, storage_url: str) -> None:
    """Give an unseeded sampler the initial state another run recorded (its reference run)."""
    import sqlalchemy as sa

    from optuna_checkpoint.state import _codec
    from optuna_checkpoint.state.adapters import adapter_for
    from optuna_checkpoint.stores._sql import checkpoints

    engine = sa.create_engine(storage_url)
    with engine.connect() as connection:
        payload = connection.execute(
            sa.select(checkpoints.c.payload).where(checkpoints.c.logical_number == -1)
        ).scalar_one()
    engine.dispose()
    adapter_for(sampler).load_state_dict(_codec.decode(payload))


if __name__ == "__main__":
    sys.exit(main())
