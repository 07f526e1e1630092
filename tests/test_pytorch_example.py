"""The PyTorch example of the user guide, killed mid-training and run again, resumes exactly.

``docs/examples/pytorch_training.py`` runs as a user runs it, in its own process: once to the
end, and once SIGKILLed while a trial is past its second epoch, then again to the end. The
second study's uninterrupted trajectory (states, parameters, values and every epoch's loss, as
``float.hex``) must equal the first's, and the interrupted trial must have continued from a saved
epoch rather than from epoch 0. Runs under ``-m soak``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
import signal
import subprocess
import sys
import time
from typing import Any

import optuna
import pytest

from optuna_checkpoint import uninterrupted_trials


# Checked without importing torch here: the example imports it in its own processes, and this
# worker need not pay for it (nor join the torch xdist group, which runs serially).
# Under -m soak: three processes that import torch cost about 25 s of CPU, too much for the
# default run's budget.
pytestmark = [
    pytest.mark.soak,
    pytest.mark.skipif(
        importlib.util.find_spec("torch") is None,
        reason="the PyTorch example needs torch (pip install torch)",
    ),
]

EXAMPLE = Path(__file__).parent.parent / "docs" / "examples" / "pytorch_training.py"
STUDY = "pytorch-training"
TRIALS = 5


def run(url: str, artifacts: Path) -> subprocess.Popen[str]:
    args = [str(EXAMPLE), "--storage", url, "--artifacts", str(artifacts)]
    return subprocess.Popen(
        [sys.executable, *args, "--trials", str(TRIALS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )


def finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return out


def trajectory(url: str) -> list[Any]:
    study = optuna.load_study(study_name=STUDY, storage=url)
    return [
        (
            t.state.name,
            sorted((k, v.hex() if isinstance(v, float) else v) for k, v in t.params.items()),
            None if t.value is None else t.value.hex(),
            sorted((s, v.hex()) for s, v in t.intermediate_values.items()),
        )
        for t in uninterrupted_trials(study)
    ]


def kill_mid_training(process: subprocess.Popen[str], url: str) -> None:
    """SIGKILL the run once a trial other than the first is past its second epoch."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
        try:
            trials = optuna.load_study(study_name=STUDY, storage=url).get_trials(deepcopy=False)
        except KeyError:
            continue  # the study is not created yet
        running = [t for t in trials if t.state.name == "RUNNING" and t.number >= 2]
        if any(len(t.intermediate_values) >= 2 for t in running):
            process.send_signal(signal.SIGKILL)
            process.communicate()
            return
    raise AssertionError("the run ended before a trial reached its third epoch")


def test_the_pytorch_example_resumes_inside_the_killed_trial_exactly(tmp_path: Path) -> None:
    reference_url = f"sqlite:///{tmp_path / 'reference.db'}"
    killed_url = f"sqlite:///{tmp_path / 'killed.db'}"
    reference = run(reference_url, tmp_path / "reference-artifacts")
    killed = run(killed_url, tmp_path / "killed-artifacts")
    kill_mid_training(killed, killed_url)
    finish(reference)
    resumed_output = finish(run(killed_url, tmp_path / "killed-artifacts"))

    assert "resumes at epoch" in resumed_output, resumed_output
    epoch = int(resumed_output.split("resumes at epoch ")[1].split()[0])
    assert epoch >= 1  # it went on from a saved epoch, not from epoch 0
    expected = trajectory(reference_url)
    assert len(expected) >= TRIALS
    assert trajectory(killed_url) == expected
    # The kill did cut a trial off: the stored study has an interrupted attempt more.
    assert len(optuna.load_study(study_name=STUDY, storage=killed_url).trials) > len(expected)
