"""Optuna internals the library reads, each with the fallback it takes when one goes away.

These tests fail when a new Optuna moves one of them, so that the fallback is noticed and the
reading is updated, rather than the library silently taking the slower path.
"""

from __future__ import annotations

import gc
from pathlib import Path

import optuna
from optuna.trial import TrialState

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint.study import _trials


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
