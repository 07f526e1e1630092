"""Optuna internals the library reads, each with the fallback it takes when one goes away.

These tests fail when a new Optuna moves one of them, so that the fallback is noticed and the
reading is updated, rather than the library silently taking the slower path.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
import pytest

from optuna_checkpoint import CheckpointingPruner
from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint._pruner import unfiltered_study
from optuna_checkpoint.study import _trials
from optuna_checkpoint.study._trials import cut_off_by_ctrl_c


def test_optuna_still_has_the_per_trial_cache_that_the_resume_shares() -> None:
    assert _trials.OPTUNA_HAS_TRIAL_CACHE


def test_the_resume_reads_the_study_once_for_itself_and_the_wrapped_sampler(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(
        storage=url, sampler=CheckpointingSampler(optuna.samplers.TPESampler(seed=1))
    )
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)

    resumed = optuna.load_study(
        study_name=study.study_name,
        storage=url,
        sampler=CheckpointingSampler(optuna.samplers.TPESampler(seed=1)),
    )
    trial = resumed.ask()  # the first hook: the resume
    cached = resumed._thread_local.cached_all_trials
    assert cached is not None and [t.number for t in cached] == [0, 1, 2, 3]
    assert cached[3].state == TrialState.RUNNING
    trial.suggest_float("x", 0, 1)
    # TPE read the trials through the same cache: nothing was read again.
    assert resumed._thread_local.cached_all_trials is cached


def test_a_resume_that_changes_a_trial_empties_the_cache(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(
        storage=url, sampler=CheckpointingSampler(optuna.samplers.TPESampler(seed=1))
    )
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    left_running = study.ask()  # as a killed process leaves it
    left_running.suggest_float("x", 0, 1)
    trial_id, name = left_running._trial_id, study.study_name
    del study, left_running  # the sampler that ran it is gone, as with a killed process
    gc.collect()

    resumed = optuna.load_study(
        study_name=name,
        storage=url,
        sampler=CheckpointingSampler(optuna.samplers.TPESampler(seed=1)),
    )
    resumed.ask()
    assert resumed._storage.get_trial(trial_id).state == TrialState.FAIL
    assert resumed._thread_local.cached_all_trials is None


def test_a_ctrl_c_in_the_objective_is_seen_in_after_trial() -> None:
    # The deterministic mode tags a trial cut off by Ctrl-C from Optuna's own record of the
    # exception (a local of optuna.study._optimize._run_trial). If Optuna changes that, this
    # fails instead of the mode silently taking Ctrl-C for a genuine failure.
    seen: list[bool | None] = []

    class Spy(optuna.samplers.RandomSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            seen.append(cut_off_by_ctrl_c())

    def objective(trial: optuna.Trial) -> float:
        if trial.number == 1:
            raise KeyboardInterrupt
        if trial.number == 2:
            raise ValueError("a genuine failure")
        return 0.0

    study = optuna.create_study(sampler=Spy(seed=0))
    study.optimize(objective, n_trials=1)
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=1)
    study.optimize(objective, n_trials=1, catch=(ValueError,))
    study.tell(study.ask(), 1.0)  # told by the user: no frame of Optuna's loop
    assert seen == [False, True, False, None]


def test_the_first_hook_under_a_bare_hyperband_can_reach_the_study_itself() -> None:
    # The sampler wraps a bare HyperbandPruner in place on its first hook, which Optuna calls
    # with a per-bracket view (_filter_study): the wrapping must reach the study behind it.
    seen: list[optuna.Study] = []

    class Recording(optuna.samplers.RandomSampler):
        def before_trial(self, study: optuna.Study, trial: Any) -> None:
            seen.append(study)

    study = optuna.create_study(sampler=Recording(), pruner=optuna.pruners.HyperbandPruner())
    study.ask()
    assert seen[0] is not study, "Optuna no longer filters the study for Hyperband"
    assert unfiltered_study(seen[0]) is study

    wrapped = optuna.create_study(
        sampler=CheckpointingSampler(optuna.samplers.RandomSampler(seed=0)),
        pruner=optuna.pruners.HyperbandPruner(),
    )
    wrapped.ask()
    assert isinstance(wrapped.pruner, CheckpointingPruner)
