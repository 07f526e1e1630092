"""Kill-fuzz scenarios for trial_checkpoint: a multi-step objective that saves its state per step.

Every trial runs :data:`STEPS` steps of a deterministic "training" (a numpy vector moving towards
a target at the trial's learning rate), reports the loss after each, asks the ``MedianPruner``
and then saves its step count and vector with ``trial_checkpoint``. A retry loads them and goes
on from the next step. ``trial-checkpoint-control`` runs the same objective without saving, so
that a retry starts again at step 0: the same trajectory, more work.
``trial-checkpoint-artifacts`` keeps the vector in a file (``np.save``) saved with the state
through ``path=``, in a ``FileSystemArtifactStore`` at the directory :data:`ARTIFACT_DIR_ENV`
names: each save uploads, then commits the reference (crash point ``after_artifact_upload``
between the two).

Each executed step is appended to the file named by :data:`STEP_LOG_ENV`, if set, so a test can
count the steps a killed study redid. Each step passes the ``objective`` crash point, and each
save the SQL store's ``inside_trial_state_save``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
import tempfile
import time

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.pruners import MedianPruner
from optuna.samplers import TPESampler
from scenarios import Scenario

from optuna_checkpoint import trial_checkpoint
from optuna_checkpoint._faults import crash_point


STEPS = 12
STEP_LOG_ENV = "KILL_FUZZ_STEP_LOG"
ARTIFACT_DIR_ENV = "KILL_FUZZ_ARTIFACT_DIR"
_TARGET = np.array([1.0, -1.0, 0.5, 2.0])


def staged(trial: optuna.Trial, delay: float, *, save: bool, artifacts: bool = False) -> float:
    """Train for :data:`STEPS` steps from the saved state, if any; report and save each."""
    x = trial.suggest_float("x", -3.0, 3.0)
    lr = trial.suggest_float("lr", 0.02, 0.5, log=True)
    store = FileSystemArtifactStore(os.environ[ARTIFACT_DIR_ENV]) if artifacts else None
    ckpt = trial_checkpoint(trial, artifact_store=store) if save else None
    weights = Path(tempfile.mkdtemp()) / "w.npy" if artifacts else None
    state = None if ckpt is None else ckpt.load(path=weights)
    start, w = (0, np.full(4, x)) if state is None else (state["step"], state.get("w"))
    if state is not None and weights is not None:
        w = np.load(weights)
    loss = float(np.sum((w - _TARGET) ** 2))
    log = os.environ.get(STEP_LOG_ENV)
    for step in range(start, STEPS):
        if log:
            with open(log, "a") as out:
                out.write(f"{trial.number} {step}\n")
        w = w - lr * (w - _TARGET) + 0.05 * np.sin(3.0 * w + step)
        loss = float(np.sum((w - _TARGET) ** 2))
        trial.report(loss, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
        crash_point("objective")
        if delay:
            time.sleep(delay / STEPS)
        if ckpt is not None and weights is not None:
            np.save(weights, w)
            ckpt.save({"step": step + 1}, path=weights)
        elif ckpt is not None:
            ckpt.save({"step": step + 1, "w": w})
    return loss


def _scenario(*, save: bool, artifacts: bool = False) -> Scenario:
    return Scenario(
        sampler=lambda seed: TPESampler(seed=seed, n_startup_trials=3),
        objective=functools.partial(staged, save=save, artifacts=artifacts),
        pruner=lambda: MedianPruner(n_startup_trials=2, n_warmup_steps=3),
    )


SCENARIOS: dict[str, Scenario] = {
    "trial-checkpoint": _scenario(save=True),
    "trial-checkpoint-control": _scenario(save=False),
    "trial-checkpoint-artifacts": _scenario(save=True, artifacts=True),
}
