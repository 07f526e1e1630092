"""A study that gets a real Ctrl-C amid a query: run as ``python ctrl_c_child.py CONFIG``.

It runs a seeded, wrapped study on ``storage`` as a user's script would. In trial ``trial``, the
objective arms a listener on Optuna's engine (SQLAlchemy's documented execution events) and reads
the study's trials; right after that read's ``SELECT`` has run, at ``instant``, the listener
sends this process SIGINT, which Python turns into a ``KeyboardInterrupt`` at once:

* ``inside-execution``: in ``after_cursor_execute``, while SQLAlchemy's error handling is still
  around the statement (it then takes the interrupt for an exit and invalidates the connection);
* ``after-execution``: in ``after_execute``, once the result is out and before a row is read
  (nothing in SQLAlchemy sees the interrupt).

It prints ``ready`` once the study is open and ``signalled`` just before the signal.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import optuna
from optuna.storages import RDBStorage
from sqlalchemy import event

from optuna_checkpoint import CheckpointingSampler


EVENTS = {"inside-execution": "after_cursor_execute", "after-execution": "after_execute"}


def main() -> int:
    config = json.loads(sys.argv[1])
    # A process started from a non-interactive shell may inherit SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    instant = config["instant"]
    storage = RDBStorage(config["storage"])
    armed = False

    def ctrl_c_after_a_select(*args: Any) -> None:
        nonlocal armed
        statement = args[2] if instant == "inside-execution" else args[1]
        if armed and str(statement).lstrip().upper().startswith("SELECT"):
            armed = False
            print("signalled", flush=True)
            os.kill(os.getpid(), signal.SIGINT)

    event.listen(storage.engine, EVENTS[instant], ctrl_c_after_a_select)

    def objective(trial: optuna.Trial) -> float:
        nonlocal armed
        x = trial.suggest_float("x", -5.0, 5.0)
        if trial.number == config["trial"]:
            armed = True
            trial.study.get_trials(deepcopy=False)
        return x * x

    study = optuna.create_study(
        study_name="ctrl-c",
        storage=storage,
        sampler=CheckpointingSampler(optuna.samplers.RandomSampler(seed=3)),
        load_if_exists=True,
    )
    print("ready", flush=True)
    study.optimize(objective, n_trials=config["trial"] + 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
