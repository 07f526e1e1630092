"""Kill QMC, Grid, BruteForce and PartialFixed studies at crash points; resume; compare exactly.

What these samplers find hard is a kill right after a trial sampled: QMC has already advanced
its study-wide sequence counter, the interrupted trial carries its grid id, and BruteForce
counts its point as visited. Every plan has such a kill. Each wrapped run is compared with an
uninterrupted one; each control runs the unwrapped sampler under the same kill and must diverge.

The QMC control is not about random generators: after its first trial a seeded QMC study draws
only from the sequence, whose position is stored in the study, so plain Optuna restarted
between trials resumes it identically. It diverges only because the killed trial had already
advanced the sequence, which is what the wrapper must undo. The Grid control likewise diverges
through the trial numbers and grid ids, not through a generator.

Other variants (Halton unscrambled, PartialFixed around Random) are resumed in-process in
``tests/test_adapters_indexed.py``, which costs no child processes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.kill_fuzz.harness import ReferenceRuns
from tests.kill_fuzz.harness import RunLog
from tests.kill_fuzz.harness import Trajectory
from tests.kill_fuzz.harness import assert_resumed_exactly
from tests.kill_fuzz.harness import first_difference
from tests.kill_fuzz.harness import run_to_completion
from tests.kill_fuzz.harness import run_with_crash_points
from tests.kill_fuzz.harness import scenario_config
from tests.kill_fuzz.harness import sqlite_url
from tests.kill_fuzz.harness import trajectory


N_COMPLETE = 8
SEED = 3
DELAY_IN_OBJECTIVE = 0.005

# The scenarios pass ``objective`` twice per trial, before and after sampling: ``objective:8``
# kills the 4th trial of a run right after it sampled, ``objective:5`` the 3rd before it does.
AFTER_SAMPLING = "objective:8"
PLANS = {
    "indexed-qmc-sobol": [AFTER_SAMPLING, "objective:5:TERM"],
    # Ctrl-C right after the first trial sampled reaches after_trial as a FAIL, which is
    # checkpointed and then retried (before anything finished, QMC infers its space from
    # RUNNING trials); a kill inside a later trial's commit loses its end and its checkpoint.
    "indexed-qmc-sobol-scrambled": ["objective:2:INT", "inside_commit:3"],
    "indexed-grid": [AFTER_SAMPLING, "objective:5:INT"],
    "indexed-brute-force": [AFTER_SAMPLING, "inside_commit:3"],
    "indexed-partial-fixed-tpe": [AFTER_SAMPLING, "objective:5"],
}
UNSEEDED = ["indexed-qmc-halton-scrambled", "indexed-brute-force-strict"]
CONTROLS = ["indexed-qmc-sobol", "indexed-grid", "indexed-brute-force"]


def _config(
    scenario: str, storage: str, *, seed: int | None = SEED, **extra: Any
) -> dict[str, Any]:
    return scenario_config(
        scenario, storage, seed=seed, n_complete=N_COMPLETE, delay=DELAY_IN_OBJECTIVE, **extra
    )


def _signalled(plan: list[str]) -> list[str]:
    return [step if step.count(":") == 2 else f"{step}:KILL" for step in plan]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Trajectory]:
    """The uninterrupted trajectory of each seeded scenario, computed once."""
    runs = ReferenceRuns(tmp_path_factory)
    return lambda scenario: runs.trajectory(_config(scenario, ""))


@pytest.mark.parametrize(("scenario", "plan"), PLANS.items(), ids=list(PLANS))
def test_resume_after_crashes_matches_uninterrupted_run(
    scenario: str, plan: list[str], tmp_path: Path, reference: Any
) -> None:
    url = sqlite_url(tmp_path / "study.db")
    log = run_with_crash_points(_config(scenario, url), _signalled(plan))
    assert log.kills_landed == len(plan), f"a crash point was not reached: {log.signals}"
    assert_resumed_exactly(url, reference(scenario), log, N_COMPLETE)


@pytest.mark.parametrize("scenario", UNSEEDED)
def test_unseeded_study_resumes_to_its_own_continuation(scenario: str, tmp_path: Path) -> None:
    # Unseeded, QMC draws its scrambling seed at construction and BruteForce its generator from
    # OS entropy: the uninterrupted run is the one the first process would have made, replayed
    # without the wrapper from the initial state the killed run recorded.
    url = sqlite_url(tmp_path / "study.db")
    log = run_with_crash_points(_config(scenario, url, seed=None), _signalled([AFTER_SAMPLING]))
    assert log.kills_landed == 1, "the kill did not land: the test would prove nothing"
    reference_url = sqlite_url(tmp_path / "reference.db")
    run_to_completion(
        _config(scenario, reference_url, seed=None, wrap=False, initial_state_from=url), RunLog()
    )
    assert_resumed_exactly(url, trajectory(reference_url, wrapped=False), log, N_COMPLETE)


@pytest.mark.parametrize("scenario", CONTROLS)
def test_control_unwrapped_sampler_diverges_under_the_same_kill(
    scenario: str, tmp_path: Path, reference: Any
) -> None:
    url = sqlite_url(tmp_path / "study.db")
    log = run_with_crash_points(_config(scenario, url, wrap=False), _signalled([AFTER_SAMPLING]))
    assert log.kills_landed == 1
    assert first_difference(trajectory(url, wrapped=False), reference(scenario)) is not None
