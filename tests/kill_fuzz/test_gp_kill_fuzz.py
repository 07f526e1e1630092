"""Kill GPSampler studies (single objective; two objectives with constraints); compare bit for bit.

Each study runs in real child processes (``child.py`` with a ``gp-*`` scenario of
``scenarios_user.py``), is killed at named crash points, resumed until ``N_COMPLETE`` trials are
COMPLETE, and compared with an uninterrupted run of the bare sampler.

GPSampler fits its Gaussian processes from the second trial after its ``GP_STARTUP_TRIALS`` on,
starting each kernel fit from the previous trial's hyperparameters. The plan kills the 6th
trial inside its objective, after the GP proposed it (so its retry must start the fit from the
kernel cache of the 5th), then, in the resumed run, a trial between its capture and its commit.
Every child imports torch (about 2 s of CPU), so the plans are short and the study small, and
the constrained two-objective study runs under -m soak.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from tests.kill_fuzz.harness import ReferenceRuns
from tests.kill_fuzz.harness import Trajectory
from tests.kill_fuzz.harness import assert_resumed_exactly
from tests.kill_fuzz.harness import first_difference
from tests.kill_fuzz.harness import run_with_crash_points
from tests.kill_fuzz.harness import scenario_config
from tests.kill_fuzz.harness import sqlite_url
from tests.kill_fuzz.harness import trajectory


# The children import torch, this process does not: checked without importing it, so that
# collecting this module costs every xdist worker nothing. The group puts these tests on one
# worker, whose zygote then imports torch once for all their children.
pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("torch") is None,
        reason="GPSampler needs torch, which is not installed (optional; the CPU build: "
        "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("scipy") is None,
        reason="GPSampler needs scipy: pip install scipy",
    ),
    pytest.mark.xdist_group("torch"),
]

N_COMPLETE = 8
SEED = 7
CRASH_PLAN = ["objective:6:KILL", "after_capture:2:KILL"]
CONTROL_PLAN = ["objective:6:KILL"]


_config = functools.partial(scenario_config, seed=SEED, n_complete=N_COMPLETE)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Trajectory]:
    """The uninterrupted trajectory of the bare sampler, computed once per scenario."""
    runs = ReferenceRuns(tmp_path_factory)
    return lambda scenario: runs.trajectory(_config(scenario, "", wrap=False))


def test_gp_resumes_at_crash_points_like_the_uninterrupted_bare_sampler(
    tmp_path: Path, reference: Any
) -> None:
    _resumes_at_crash_points("gp-single", tmp_path, reference)


@pytest.mark.soak
def test_soak_constrained_multi_objective_gp_resumes_at_crash_points(
    tmp_path: Path, reference: Any
) -> None:
    _resumes_at_crash_points("gp-multi-constrained", tmp_path, reference)


def _resumes_at_crash_points(scenario: str, tmp_path: Path, reference: Any) -> None:
    url = sqlite_url(tmp_path / "study.db")
    log = run_with_crash_points(_config(scenario, url), CRASH_PLAN)
    assert log.kills_landed == len(CRASH_PLAN), f"a crash point was not reached: {log.signals}"
    assert_resumed_exactly(url, reference(scenario), log, N_COMPLETE)


def test_control_bare_gp_diverges_after_the_same_kill(tmp_path: Path, reference: Any) -> None:
    # Restarted bare, GPSampler starts from its seed again without its kernel cache, and sees
    # the killed trial as a running one: the comparison above must catch that.
    url = sqlite_url(tmp_path / "study.db")
    log = run_with_crash_points(_config("gp-single", url, wrap=False), CONTROL_PLAN)
    assert log.kills_landed == len(CONTROL_PLAN)
    assert first_difference(trajectory(url, wrapped=False), reference("gp-single")) is not None
