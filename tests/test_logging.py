"""The library's log lines reach the user where Optuna's do, and obey Optuna's verbosity.

Checked as the user sees them: the standard error of a fresh interpreter with Optuna's default
logging (nothing configured), not log records.
"""

from __future__ import annotations

from pathlib import Path
import re
import signal
import subprocess
import sys

import optuna


SCRIPT = """
import sys

import optuna
import optuna
from optuna_checkpoint import CheckpointingSampler

def run():
    sampler = CheckpointingSampler(optuna.samplers.RandomSampler(seed=0))
    optuna.create_study(sampler=sampler).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)

run()  # with Optuna's default logging
print("--- ERROR ---", file=sys.stderr, flush=True)
optuna.logging.set_verbosity(optuna.logging.ERROR)
run()
"""
IN_MEMORY = "The study is in memory: its checkpoints are kept in memory too"


def test_a_warning_is_printed_as_optunas_own_and_obeys_its_verbosity() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    default, silenced = done.stderr.split("--- ERROR ---")
    lines = default.splitlines()
    ours = [line for line in lines if IN_MEMORY in line]
    assert len(ours) == 1, lines
    assert ours[0].startswith("[W ")  # Optuna's format: level letter, time, message
    # Optuna's own line for the trial comes through the same handler.
    assert any(line.startswith("[I ") and "Trial 0 finished" in line for line in lines), lines
    assert IN_MEMORY not in silenced and "Trial 0 finished" not in silenced


WORKER = """
import os, signal, sys, time
import optuna
from optuna_checkpoint import CheckpointingSampler
url, trials, kill_at, hold, worker_id = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
    sys.argv[4] == "hold", sys.argv[5] or None

def objective(trial):
    x = trial.suggest_float("x", 0, 1)
    if trial.number == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    if hold:
        print("holding", flush=True)
        time.sleep(60)
    return x

sampler = CheckpointingSampler(optuna.samplers.TPESampler(seed=0), worker_id=worker_id)
study = optuna.create_study(study_name="s", storage=url, load_if_exists=True, sampler=sampler)
study.optimize(objective, n_trials=trials)
"""


def _run(
    url: str, trials: int, *, kill_at: int = -1, worker_id: str = ""
) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-c", WORKER, url, str(trials), str(kill_at), "run", worker_id]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def _info_lines(stderr: str, text: str) -> list[str]:
    return [line for line in stderr.splitlines() if text in line]


def test_a_resume_says_from_where_and_which_trial_it_retries(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    killed = _run(url, 5, kill_at=2)
    assert killed.returncode == -signal.SIGKILL
    assert not _info_lines(killed.stderr, "Resumed")  # a first run resumes nothing
    resumed = _run(url, 2)
    assert resumed.returncode == 0, resumed.stderr
    [line] = _info_lines(resumed.stderr, "Resumed")
    assert line.startswith("[I ")
    assert re.search(
        r"Resumed study 's' exactly \(checkpoint stream 'main', after trial 1, finished "
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d by pid \d+ on .+\): trial 3 retries trial 2, "
        r"interrupted: .+\.$",
        line,
    ), line
    again = _run(url, 1)  # a clean restart: no retry, and nothing that reads like an alarm
    [line] = _info_lines(again.stderr, "Resumed")
    assert "after trial 4" in line and line.endswith(
        "trial 5 is trial 4 of the uninterrupted run."
    )
    assert "[W " not in again.stderr and "Took over" not in again.stderr
    # Every trial whose logical position differs from its number records it (for filtering in
    # optuna-dashboard); the others write nothing.
    trials = optuna.load_study(study_name="s", storage=url).trials
    positions = [t.system_attrs.get("optuna_checkpoint:position") for t in trials]
    assert positions == [None, None, None, 2, 3, 4]


def test_a_live_holder_of_main_is_named_and_main_can_be_insisted_on(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    assert _run(url, 1).returncode == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", WORKER, url, "1", "-1", "hold", ""],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        joined = _run(url, 1)
        assert joined.returncode == 0, joined.stderr
        [line] = _info_lines(joined.stderr, "is held by")
        assert line.startswith("[W ")
        assert f"held by pid {holder.pid} on " in line
        assert "joins the study as worker 'worker-1'" in line
        assert "not an exact resume of 'main'" in line and "worker_id='main'" in line
        insisted = _run(url, 1, worker_id="main")
        assert insisted.returncode != 0
        assert "StreamOwnedError" in insisted.stderr and "'main'" in insisted.stderr
    finally:
        holder.kill()
        holder.communicate()


def test_wrapping_a_study_that_ran_without_it_says_where_the_guarantee_starts(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    plain = optuna.create_study(study_name="s", storage=url)
    plain.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    wrapped = _run(url, 2)
    assert wrapped.returncode == 0, wrapped.stderr
    [line] = _info_lines(wrapped.stderr, "without optuna-checkpoint")
    assert line.startswith("[I ") and line.endswith(
        "Study 's' has 3 trials from runs without optuna-checkpoint: checkpointing starts with "
        "trial 3, and a resume reproduces the run from there on (the earlier trials are history "
        "the sampler reads, as they are)."
    )
    # A study that began with the wrapper says nothing of the kind, nor does its next run.
    fresh = _run(f"sqlite:///{tmp_path}/fresh.db", 2)
    again = _run(url, 1)
    assert not _info_lines(fresh.stderr + again.stderr, "without optuna-checkpoint")
