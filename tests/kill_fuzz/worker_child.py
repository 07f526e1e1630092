"""One worker of a study run by several processes: run as ``python worker_child.py CONFIG_JSON``.

It does what a user's worker script does: build the seeded sampler, wrap it with its worker id
(unless the config says ``"wrap": false``, for the control), load the study the test created and
optimize until it is told to stop. It writes an event log of its own, one JSON line per event,
each written with a single ``write`` and fsynced, so the test knows what every process did even
when it was killed:

* ``start``: the process began (its pid and worker id);
* ``started``: a trial's objective began (trial number and id), before any parameter is drawn;
* ``drawn``: its parameters were drawn (as ``float.hex``), just before it sleeps a little;
* ``finished``: a trial's final state is stored (state, value and parameters as ``float.hex``),
  written from a study callback, which Optuna runs only after the trial's end is committed;
* ``exit``: ``study.optimize`` returned normally.

The worker stops after the trial during which the test created the stop file (or after
``max_complete`` COMPLETE trials in the study, a safety cap).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import random
import signal
import sys
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_checkpoint import CheckpointingSampler


PARAMS = ("x", "y")


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The unwrapped sampler of a worker."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")


def worker_sampler(config: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """The sampler a worker runs with: wrapped with its worker id, or plain for the control."""
    sampler = make_sampler(config["sampler"], config["seed"])
    if config.get("wrap", True):
        return CheckpointingSampler(sampler, worker_id=config["worker_id"])
    return sampler


def suggest_point(trial: optuna.Trial) -> tuple[float, float]:
    """Draw the objective's two parameters (the reference runs draw them the same way)."""
    return trial.suggest_float("x", -5.0, 5.0), trial.suggest_float("y", -5.0, 5.0)


def objective_value(x: float, y: float) -> float:
    """The objective's value at a point (the test recomputes it bit for bit)."""
    return x * x + y * y


class EventLog:
    """An append-only JSON-lines file, each line written at once and fsynced."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "pid": os.getpid(), "time": time.time(), **fields})
        os.write(self._fd, (line + "\n").encode())
        os.fsync(self._fd)


def main() -> int:
    config = json.loads(sys.argv[1])
    # A process started from a non-interactive shell may inherit SIGINT ignored; the test means
    # SIGINT to arrive as the KeyboardInterrupt of a user's Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    log = EventLog(config["events"])
    log.write("start", worker=config["worker_id"])
    stop_file = Path(config["stop_file"])
    delay_low, delay_high = config["delay"]
    # Independent of every sampler's generator; seeded by the test (from its --fuzz-seed).
    delays = random.Random(config.get("delay_seed"))

    def objective(trial: optuna.Trial) -> float:
        log.write("started", number=trial.number, trial_id=trial._trial_id)
        x, y = suggest_point(trial)
        log.write(
            "drawn", number=trial.number, trial_id=trial._trial_id, params=[x.hex(), y.hex()]
        )
        time.sleep(delays.uniform(delay_low, delay_high))
        return objective_value(x, y)

    def log_finished(study: optuna.Study, trial: FrozenTrial) -> None:
        log.write(
            "finished",
            number=trial.number,
            trial_id=trial._trial_id,
            state=trial.state.name,
            value=None if trial.value is None else trial.value.hex(),
            params={name: trial.params[name].hex() for name in PARAMS if name in trial.params},
        )

    def stop_when_asked(study: optuna.Study, trial: FrozenTrial) -> None:
        if stop_file.exists():
            study.stop()

    study = optuna.load_study(
        study_name=config["study_name"], storage=config["storage"], sampler=worker_sampler(config)
    )
    study.optimize(
        objective,
        callbacks=[
            log_finished,
            stop_when_asked,
            optuna.study.MaxTrialsCallback(config["max_complete"], states=(TrialState.COMPLETE,)),
        ],
    )
    log.write("exit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
