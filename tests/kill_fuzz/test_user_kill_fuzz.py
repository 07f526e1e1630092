"""Kill studies of user-defined samplers at crash points; compare bit for bit with the bare run.

The samplers (``user-*`` scenarios of ``scenarios_user.py``): the documented local-search
example, which is ``Stateful``; a user's sampler wrapping ``TPESampler`` that is ``Stateful``
through :func:`optuna_checkpoint.sampler_state_dict`; the same sampler without those methods,
checkpointed with ``allow_pickle=True``; and ``class MyTPE(TPESampler): pass``, checkpointed by
TPESampler's adapter. Their state is in memory only (a generator and a best point; two inner
samplers and a trial counter; TPE's two generators), so a bare restart diverges, which the
controls check.

The plan kills inside the objective of the 5th trial (after its parameters were sampled), then,
in the resumed run, inside sampling, and between a trial's capture and its commit.
"""

from __future__ import annotations

from collections.abc import Callable
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


N_COMPLETE = 10
SEED = 7
CRASH_PLAN = ["objective:5:KILL", "sample_independent:3:INT", "after_capture:2:TERM"]
CONTROL_PLAN = ["objective:5:KILL"]
SCENARIOS = {
    "user-local-search": {},
    "user-tpe-wrapper-stateful": {},
    "user-tpe-wrapper-pickled": {"allow_pickle": True},
    "user-tpe-subclass": {},
}
# Both wrapper scenarios run the same sampler unwrapped; the subclass is a seeded TPE.
CONTROLS = ["user-local-search", "user-tpe-wrapper-stateful", "user-tpe-subclass"]


def _config(scenario: str, storage: str, **extra: Any) -> dict[str, Any]:
    return scenario_config(
        scenario, storage, seed=SEED, n_complete=N_COMPLETE, **SCENARIOS[scenario], **extra
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Trajectory]:
    """The uninterrupted trajectory of the bare sampler, computed once per scenario."""
    runs = ReferenceRuns(tmp_path_factory)
    return lambda scenario: runs.trajectory(_config(scenario, "", wrap=False))


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_user_sampler_resumes_at_crash_points_like_the_uninterrupted_bare_sampler(
    scenario: str, tmp_path: Path, reference: Any
) -> None:
    url = sqlite_url(tmp_path / "study.db")
    log = run_with_crash_points(_config(scenario, url), CRASH_PLAN)
    assert log.kills_landed == len(CRASH_PLAN), f"a crash point was not reached: {log.signals}"
    assert_resumed_exactly(url, reference(scenario), log, N_COMPLETE)


@pytest.mark.parametrize("scenario", CONTROLS)
def test_control_bare_user_sampler_diverges_after_the_same_kill(
    scenario: str, tmp_path: Path, reference: Any
) -> None:
    url = sqlite_url(tmp_path / "study.db")
    log = run_with_crash_points(_config(scenario, url, wrap=False), CONTROL_PLAN)
    assert log.kills_landed == len(CONTROL_PLAN)
    assert first_difference(trajectory(url, wrapped=False), reference(scenario)) is not None
