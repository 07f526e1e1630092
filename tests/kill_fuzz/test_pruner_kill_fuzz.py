"""Kill studies with pruners at crash points, resume them, and compare with uninterrupted runs.

The scenarios are in ``scenarios_pruners.py``. The crash plan kills the child inside a trial
after some of its steps were reported and judged (``objective`` is passed once per step), then,
in the resumed run, between a trial's checkpoint capture and its commit (that trial had run to
its end: pruned or complete). Each retried trial gets a new number, so every later trial's
number is shifted.

* Hyperband (``max_resource`` "auto" and explicit) and successive halving (``min_resource``
  "auto" and explicit), passed bare as users pass them (the sampler wraps them in place) or in
  ``CheckpointingPruner``, resume bit for bit. The same kills diverge on a subclass that no
  adapter knows, which stays bare (the controls): Hyperband puts the retried and every later
  trial in the bracket of its new number, and re-derives "auto" from more trials; successive
  halving re-estimates "auto", and counts the rung values an interrupted attempt wrote.
* ``MedianPruner``, Optuna's default, resumes exactly *without* the wrapper: it keeps no state
  and reads only the trial itself and the COMPLETE trials (an interrupted attempt never is).
  No pruner-side control can diverge there; the control runs the unwrapped sampler, killed in
  the objective alike, which shows that the comparison catches a divergence in that scenario.
  (``PercentilePruner``, ``ThresholdPruner``, ``WilcoxonPruner`` and ``PatientPruner`` are
  resumed after an abandoned trial in ``tests/test_pruners.py``.)
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from pathlib import Path
from typing import Any

import pytest

from tests.kill_fuzz.harness import ReferenceRuns
from tests.kill_fuzz.harness import RunLog
from tests.kill_fuzz.harness import Trajectory
from tests.kill_fuzz.harness import first_difference
from tests.kill_fuzz.harness import run_with_crash_points
from tests.kill_fuzz.harness import scenario_config
from tests.kill_fuzz.harness import sqlite_url
from tests.kill_fuzz.harness import trajectory


N_COMPLETE = 8
SEED = 11
CRASH_PLAN = ["objective:17", "after_capture:5"]

STATEFUL = [
    "pruners-hyperband-auto",
    "pruners-hyperband-explicit",
    "pruners-sh-auto",
    "pruners-sh-explicit",
]
EXACT_UNWRAPPED = ["pruners-median"]
# Wrapped explicitly, the pruners resume as when the sampler wraps them (each kind once here;
# test_pruners.py compares the two forms for every pruner).
WRAPPED = ["pruners-hyperband-auto-wrapped", "pruners-sh-auto-wrapped"]
# Left bare, Hyperband diverges by its brackets and "auto", successive halving by the rung
# values of interrupted attempts.
OPAQUE = ["pruners-hyperband-auto", "pruners-sh-explicit"]


_config = functools.partial(scenario_config, seed=SEED, n_complete=N_COMPLETE)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Trajectory]:
    """The uninterrupted trajectory of a scenario, computed once per module."""
    runs = ReferenceRuns(tmp_path_factory)
    return lambda scenario: runs.trajectory(_config(scenario, ""))


def _killed(
    scenario: str, tmp_path: Path, plan: list[str] = CRASH_PLAN, **extra: Any
) -> tuple[str, RunLog]:
    url = sqlite_url(tmp_path / "study.db")
    log = run_with_crash_points(_config(scenario, url, **extra), plan)
    assert log.kills_landed == len(plan), f"a crash point was not reached: {log.signals}"
    return url, log


def _pruned(actual: Trajectory) -> int:
    return sum(1 for state, *_ in actual if state == "PRUNED")


@pytest.mark.parametrize("scenario", [*STATEFUL, *WRAPPED, *EXACT_UNWRAPPED])
def test_resume_at_crash_points_matches_uninterrupted_run(
    scenario: str, tmp_path: Path, reference: Any
) -> None:
    url, log = _killed(scenario, tmp_path)
    actual = trajectory(url, wrapped=True)
    # Without interruptions, bare and wrapped pruners decide alike (test_pruners.py).
    difference = first_difference(actual, reference(scenario.removesuffix("-wrapped")))
    assert difference is None, f"{difference}\n(after kills at {log.signals})"
    assert sum(1 for state, *_ in actual if state == "COMPLETE") == N_COMPLETE
    assert _pruned(actual) >= 2, "the pruner pruned too little for the test to mean anything"


@pytest.mark.parametrize("scenario", OPAQUE)
def test_pruner_left_bare_diverges_under_the_same_kills(
    scenario: str, tmp_path: Path, reference: Any
) -> None:
    # The subclass decides as its base without interruptions, so the base's run is the
    # reference.
    url, log = _killed(f"{scenario}-opaque", tmp_path)
    difference = first_difference(trajectory(url, wrapped=True), reference(scenario))
    assert difference is not None, f"the bare pruner resumed exactly after {log.signals}"


def test_unwrapped_sampler_diverges_when_killed_alike(tmp_path: Path, reference: Any) -> None:
    # An unwrapped sampler never passes the library's crash points: both kills are in the
    # objective, the first as in CRASH_PLAN.
    scenario = EXACT_UNWRAPPED[0]
    url, log = _killed(scenario, tmp_path, plan=["objective:17", "objective:9"], wrap=False)
    difference = first_difference(trajectory(url, wrapped=False), reference(scenario))
    assert difference is not None, f"the unwrapped sampler resumed exactly after {log.signals}"
