"""trial_checkpoint under real kills: the trajectory stays exact, a kill costs one step at most.

The child runs ``scenarios_trial_checkpoint.py``: a twelve-step objective with a ``MedianPruner``
that saves its state after every step. It is SIGKILLed at random instants and started again until
its study is complete. Its logical trajectory (``uninterrupted_trials``: states, parameters,
values and intermediate values, floats compared as ``float.hex``) must equal an uninterrupted
run's, and the steps it executed beyond the uninterrupted run's (counted from the file the
objective appends each step to) at most one per kill: one save interval. The control runs the
same objective without saving: the same trajectory, but more steps redone than kills, so the
bound can fail.
"""

from __future__ import annotations

import functools
from pathlib import Path
import random
import signal
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import pytest

from optuna_checkpoint import uninterrupted_trials
from tests.kill_fuzz.harness import Reference
from tests.kill_fuzz.harness import RunLog
from tests.kill_fuzz.harness import first_difference
from tests.kill_fuzz.harness import reference_run
from tests.kill_fuzz.harness import run_with_crash_points
from tests.kill_fuzz.harness import run_with_random_kills
from tests.kill_fuzz.harness import scenario_config
from tests.kill_fuzz.harness import shared_directory
from tests.kill_fuzz.harness import sqlite_url
from tests.kill_fuzz.storages import open_storage


N_COMPLETE = 4
SEED = 3
DELAY = 0.08  # seconds of "training" per trial, spread over its steps
SAVE_INTERVAL = 1  # steps between saves
STEP_LOG_ENV = (
    "KILL_FUZZ_STEP_LOG"  # as scenarios_trial_checkpoint.py (a script's module) reads it
)
ARTIFACT_DIR_ENV = "KILL_FUZZ_ARTIFACT_DIR"  # likewise

_config = functools.partial(scenario_config, seed=SEED, n_complete=N_COMPLETE, delay=DELAY)

Trajectory = list[tuple[Any, ...]]


def _exact(value: float) -> str:
    return value.hex()


def full_key(trial: FrozenTrial) -> tuple[Any, ...]:
    """A trial's state, params, values and intermediate values, floats as ``float.hex``."""
    params = tuple(
        sorted((n, _exact(v) if isinstance(v, float) else v) for n, v in trial.params.items())
    )
    values = None if trial.values is None else tuple(_exact(v) for v in trial.values)
    steps = tuple((s, _exact(v)) for s, v in sorted(trial.intermediate_values.items()))
    return (trial.state.name, params, values, steps)


def logical_trajectory(address: str) -> Trajectory:
    study = optuna.load_study(study_name="fuzz", storage=open_storage(address))
    return [full_key(t) for t in uninterrupted_trials(study) if t.state != TrialState.RUNNING]


def steps_reported(trajectory: Trajectory) -> int:
    """The steps an uninterrupted run executes: each reports exactly once."""
    return sum(len(steps) for *_, steps in trajectory)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Reference, Trajectory]:
    """The uninterrupted run (made before any test sets the step log), and its trajectory."""
    made = reference_run(_config("trial-checkpoint", ""), shared_directory(tmp_path_factory))
    return made, logical_trajectory(made.url)


def _killed(
    scenario: str,
    address: str,
    step_log: Path,
    reference: tuple[Reference, Trajectory],
    rng: random.Random,
    monkeypatch: pytest.MonkeyPatch,
    *,
    kills: int = 3,
    signals: tuple[signal.Signals, ...] = (signal.SIGKILL,),
) -> tuple[RunLog, Trajectory, int]:
    """Kill the scenario at random instants until done; its log, trajectory and steps redone."""
    monkeypatch.setenv(STEP_LOG_ENV, str(step_log))
    made, expected = reference
    log = run_with_random_kills(
        _config(scenario, address),
        kills=kills,
        signals=list(signals),
        rng=rng,
        # Within the uninterrupted run's span, past its start-up, so that the kills land.
        min_delay=0.1 * made.seconds_after_ready,
        max_delay=0.8 * made.seconds_after_ready,
    )
    assert log.kills_landed >= 1, "no kill landed: the test would prove nothing"
    executed = len(step_log.read_text().splitlines())
    return log, logical_trajectory(address), executed - steps_reported(expected)


def _assert_exact(actual: Trajectory, expected: Trajectory, log: RunLog) -> None:
    difference = first_difference(actual, expected)
    assert difference is None, f"{difference}\n(after {log.kills_landed} kills: {log.signals})"
    assert sum(1 for state, *_ in actual if state == "COMPLETE") == N_COMPLETE
    assert sum(1 for state, *_ in actual if state == "PRUNED") >= 1, "nothing was pruned"


def test_resume_inside_trials_after_sigkills_is_exact_and_redoes_one_save_interval_per_kill(
    tmp_path: Path, reference: Any, kill_rng: random.Random, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sqlite_url(tmp_path / "study.db")
    log, actual, redone = _killed(
        "trial-checkpoint", url, tmp_path / "steps", reference, kill_rng, monkeypatch
    )
    _assert_exact(actual, reference[1], log)
    assert redone <= SAVE_INTERVAL * log.kills_landed, (redone, log.signals)


def test_control_without_trial_checkpoint_redoes_more_steps_than_kills(
    tmp_path: Path, reference: Any, kill_rng: random.Random, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sqlite_url(tmp_path / "study.db")
    log, actual, redone = _killed(
        "trial-checkpoint-control", url, tmp_path / "steps", reference, kill_rng, monkeypatch
    )
    _assert_exact(actual, reference[1], log)  # exact all the same: the retry starts over
    assert redone > SAVE_INTERVAL * log.kills_landed, (redone, log.signals)


def test_a_kill_inside_a_save_leaves_the_previous_state(
    tmp_path: Path, reference: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGKILL between the DELETE of the previous state and the INSERT of the new one, in the
    # middle of a trial (the 16th save).
    monkeypatch.setenv(STEP_LOG_ENV, str(tmp_path / "steps"))
    url = sqlite_url(tmp_path / "study.db")
    plan = ["inside_trial_state_save:16"]
    log = run_with_crash_points(_config("trial-checkpoint", url), plan)
    assert log.kills_landed == len(plan)
    _assert_exact(logical_trajectory(url), reference[1], log)
    executed = len((tmp_path / "steps").read_text().splitlines())
    assert executed - steps_reported(reference[1]) <= SAVE_INTERVAL * len(plan)


@pytest.mark.parametrize("plan", [None, ["after_artifact_upload:9"]], ids=["random", "mid-save"])
def test_with_an_artifact_store_and_a_weights_file_resume_is_exact(
    plan: list[str] | None,
    tmp_path: Path,
    reference: Any,
    kill_rng: random.Random,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The vector travels as a file saved with the state, in an artifact store; a kill between
    # an upload and the commit of its reference (mid-save) leaves the previous save in force.
    monkeypatch.setenv(ARTIFACT_DIR_ENV, str(tmp_path / "artifacts"))
    (tmp_path / "artifacts").mkdir()
    url = sqlite_url(tmp_path / "study.db")
    if plan is None:
        log, actual, redone = _killed(
            "trial-checkpoint-artifacts", url, tmp_path / "steps", reference, kill_rng, monkeypatch
        )
    else:
        monkeypatch.setenv(STEP_LOG_ENV, str(tmp_path / "steps"))
        log = run_with_crash_points(_config("trial-checkpoint-artifacts", url), plan)
        assert log.kills_landed == len(plan)
        actual = logical_trajectory(url)
        executed = len((tmp_path / "steps").read_text().splitlines())
        redone = executed - steps_reported(reference[1])
    _assert_exact(actual, reference[1], log)
    assert redone <= SAVE_INTERVAL * log.kills_landed, (redone, log.signals)


# Under -m soak: about 4 s on an idle machine (a fresh PostgreSQL database and Optuna's schema in
# it), which the default tier's budget does not have; the store's SQL is also checked on
# PostgreSQL and MySQL by test_trial_checkpoint.py.
@pytest.mark.soak
def test_soak_resume_inside_trials_after_sigkills_on_postgresql(
    postgres_url: str, tmp_path: Path, reference: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, actual, redone = _killed(
        "trial-checkpoint",
        postgres_url,
        tmp_path / "steps",
        reference,
        random.Random(7),
        monkeypatch,
        kills=1,
    )
    _assert_exact(actual, reference[1], log)
    assert redone <= SAVE_INTERVAL * log.kills_landed, (redone, log.signals)


@pytest.mark.soak
@pytest.mark.parametrize("round_", range(3))
def test_soak_many_random_kills_inside_trials_with_every_signal(
    round_: int,
    tmp_path: Path,
    reference: Any,
    kill_rng: random.Random,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = sqlite_url(tmp_path / "study.db")
    log, actual, redone = _killed(
        "trial-checkpoint",
        url,
        tmp_path / "steps",
        reference,
        kill_rng,
        monkeypatch,
        kills=8,
        signals=(signal.SIGKILL, signal.SIGTERM, signal.SIGINT),
    )
    _assert_exact(actual, reference[1], log)
    assert redone <= SAVE_INTERVAL * log.kills_landed, (redone, log.signals)
