"""Kill NSGA-II/III, multi-objective and constrained TPE and warm-started CMA-ES studies; compare.

Each study runs in real child processes (``child.py`` with a scenario of
``scenarios_evolutionary.py``), is interrupted at named crash points, resumed until
``N_COMPLETE`` trials are COMPLETE, and compared bit for bit with an uninterrupted run.

The crash plan aims at the first trial of a generation. With a population of 4 and no failure
among the first trials, the 5th trial of the first run is the first of generation 1, and the
5th of the resumed run (its first is the retry) the first of generation 2. Each is interrupted
at the start of ``after_trial``: after it selected the parents and cached them in the study
attribute ``<Sampler>:parent:<gen>``, before its checkpoint. Its retry must select them again,
as the uninterrupted run did, rather than read what the interrupted attempt left behind. For TPE
and CMA-ES the same plan lands in the first model-based trial and in a later one.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from pathlib import Path
from typing import Any

import optuna
import pytest

from optuna_checkpoint import uninterrupted_trials
from tests.kill_fuzz.harness import ReferenceRuns
from tests.kill_fuzz.harness import RunLog
from tests.kill_fuzz.harness import Trajectory
from tests.kill_fuzz.harness import first_difference
from tests.kill_fuzz.harness import run_with_crash_points
from tests.kill_fuzz.harness import scenario_config
from tests.kill_fuzz.harness import sqlite_url
from tests.kill_fuzz.harness import trajectory


N_COMPLETE = 10
SEED = 7

# SIGKILL in the first run; Ctrl-C (KeyboardInterrupt inside after_trial) in the second.
CRASH_PLAN = ["after_trial_start:5:KILL", "after_trial_start:5:INT"]
SCENARIOS = [
    "evo-nsga2",
    "evo-nsga2-sbx-constrained",
    "evo-nsga3-undx-constrained",
    "evo-tpe-multiobjective",
    "evo-tpe-constraints-lambda",
    "evo-cmaes-source-trials",
    "evo-cmaes-x0-sigma0",
]
NSGA_SCENARIOS = [s for s in SCENARIOS if "nsga" in s]


_config = functools.partial(scenario_config, seed=SEED, n_complete=N_COMPLETE)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """The URL of each scenario's uninterrupted, wrapped run, made once per module."""
    runs = ReferenceRuns(tmp_path_factory)
    return lambda scenario: runs.url(_config(scenario, ""))


def _generations(url: str) -> tuple[list[Any], dict[str, list[int]]]:
    """Each logical trial's generation, and each cached parent population by trial position."""
    study = optuna.load_study(study_name="fuzz", storage=url)
    trials = [t for t in uninterrupted_trials(study) if t.state.is_finished()]
    key = next(k for t in trials for k in t.system_attrs if k.endswith(":generation"))
    position = {t._trial_id: i for i, t in enumerate(trials)}
    attrs = study._storage.get_study_system_attrs(study._study_id)
    parents = {
        k.rpartition(":")[2]: [position[i] for i in ids]
        for k, ids in attrs.items()
        if ":parent:" in k and ids is not None
    }
    return [t.system_attrs.get(key) for t in trials], parents


def _interrupted(
    plan: list[str], url: str, scenario: str, **extra: Any
) -> tuple[Trajectory, RunLog]:
    log = run_with_crash_points(_config(scenario, url, **extra), plan)
    assert log.kills_landed == len(plan), f"a crash point was not reached: {log.signals}"
    return trajectory(url, wrapped=extra.get("wrap", True)), log


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_resume_after_kill_in_first_trial_of_a_generation_matches_uninterrupted_run(
    scenario: str, tmp_path: Path, reference: Any
) -> None:
    url = sqlite_url(tmp_path / "study.db")

    actual, log = _interrupted(CRASH_PLAN, url, scenario)

    expected = trajectory(reference(scenario), wrapped=True)
    difference = first_difference(actual, expected)
    assert difference is None, f"{difference}\n(after kills at {log.signals})"
    assert sum(1 for state, *_ in actual if state == "COMPLETE") == N_COMPLETE
    if scenario in NSGA_SCENARIOS:
        # The retries carry the generation of their position, and the cached parents name the
        # same trials as the uninterrupted run's.
        assert _generations(url) == _generations(reference(scenario))


def test_control_unwrapped_nsga_diverges_under_kills(tmp_path: Path, reference: Any) -> None:
    # The library's crash points are not passed without the wrapper: kill in the objective.
    url = sqlite_url(tmp_path / "study.db")

    actual, _ = _interrupted(["objective:5", "objective:5"], url, "evo-nsga2", wrap=False)

    assert first_difference(actual, trajectory(reference("evo-nsga2"), wrapped=True)) is not None


def test_control_nsga_without_the_parent_cache_withdrawal_diverges(
    tmp_path: Path, reference: Any
) -> None:
    # Generators restored exactly, but the interrupted trial's cached parents are read back by
    # its retry: the first difference is the retried trial itself.
    url = sqlite_url(tmp_path / "study.db")

    actual, _ = _interrupted(CRASH_PLAN[:1], url, "evo-nsga2-generators-only")

    expected = trajectory(reference("evo-nsga2-generators-only"), wrapped=True)
    assert expected == trajectory(reference("evo-nsga2"), wrapped=True)
    assert actual[:4] == expected[:4]
    assert actual[4] != expected[4]
