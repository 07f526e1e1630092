"""The library's log lines reach the user where Optuna's do, and obey Optuna's verbosity.

Checked as the user sees them: the standard error of a fresh interpreter with Optuna's default
logging (nothing configured), not log records.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


SCRIPT = """
import optuna
from optuna_checkpoint import CheckpointingSampler
{configure}
study = optuna.create_study(sampler=CheckpointingSampler(optuna.samplers.RandomSampler(seed=0)))
study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
"""
IN_MEMORY = "The study is in memory: its checkpoints are kept in memory too"


def _stderr(configure: str = "") -> str:
    script = SCRIPT.format(configure=configure)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stderr


@pytest.mark.parametrize("verbosity", ["default", "INFO"])
def test_a_warning_is_printed_as_optuna_prints_its_own(verbosity: str) -> None:
    configure = (
        "" if verbosity == "default" else "optuna.logging.set_verbosity(optuna.logging.INFO)"
    )
    lines = _stderr(configure).splitlines()
    ours = [line for line in lines if IN_MEMORY in line]
    assert len(ours) == 1, lines
    assert ours[0].startswith("[W ")  # Optuna's format: level letter, time, message
    # Optuna's own line for the trial comes through the same handler.
    assert any(line.startswith("[I ") and "Trial 0 finished" in line for line in lines), lines


def test_optunas_verbosity_silences_it() -> None:
    stderr = _stderr("optuna.logging.set_verbosity(optuna.logging.ERROR)")
    assert IN_MEMORY not in stderr
    assert "Trial 0 finished" not in stderr
