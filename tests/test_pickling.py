"""A study with CheckpointingSampler pickles, deep-copies and crosses processes like a plain one.

The pickle and process tests do with a wrapped sampler, on a real SQLite file, what Optuna's own
``test_study_pickle`` and ``test_tell_from_another_process`` do with a plain one. The copies carry
the wrapped sampler's state and the configuration, never the lease: a copy takes a stream of its
own while the original lives, and the original's stream once the original is gone.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
import copy
import gc
import multiprocessing
import os
import pathlib
import pickle
from typing import Any

import optuna
from optuna.pruners import HyperbandPruner
from optuna.samplers import RandomSampler
from optuna.samplers import TPESampler
from optuna.study import Study
from optuna.trial import TrialState
import pytest
import sqlalchemy as sa

from optuna_checkpoint import CheckpointingPruner
from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import Retention
from optuna_checkpoint.stores._sql import streams
from tests.test_sampler import trajectory


N = 4


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -2.0, 2.0)
    for step in range(3):
        trial.report(x * x + step, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return x * x


def stream_owners(url: str) -> dict[str, int | None]:
    """Each stream of the file's studies by name, with the pid holding its lease (or None)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.select(streams.c.name, streams.c.owner_pid)).all()
    finally:
        engine.dispose()
    return {name: pid for name, pid in rows}


def fork_pool() -> ProcessPoolExecutor:
    # Forked: the child needs no second import of Optuna; the study still crosses as a pickle.
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))


def test_fresh_sampler_pickles_and_deep_copies_with_its_state_and_configuration() -> None:
    original = CheckpointingSampler(
        TPESampler(seed=3, n_startup_trials=2), max_retries=2, retention=Retention(keep_last=3)
    )
    original.sampler._rng.rng.uniform()  # type: ignore[attr-defined]  # a state past the seed
    for clone in (pickle.loads(pickle.dumps(original)), copy.deepcopy(original)):
        assert isinstance(clone, CheckpointingSampler)
        assert clone.sampler is not original.sampler
        assert type(clone.sampler) is TPESampler
        assert clone._fingerprint == original._fingerprint
        assert clone._resumer._max_retries == 2
        assert clone._recorder._pruning is not None
        # The copy goes on from the state the original is in, as a copied TPESampler would.
        drawn = clone.sampler._rng.rng.uniform()  # type: ignore[attr-defined]
        assert drawn == copy.deepcopy(original.sampler)._rng.rng.uniform()  # type: ignore[attr-defined]


def test_pickled_study_runs_beside_its_original_on_a_stream_of_its_own(
    tmp_path: pathlib.Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study_1 = optuna.create_study(
        study_name="s",
        storage=url,
        sampler=CheckpointingSampler(RandomSampler(seed=1)),
        pruner=CheckpointingPruner(HyperbandPruner(max_resource=3)),
    )
    study_1.optimize(objective, n_trials=N)
    study_2 = pickle.loads(pickle.dumps(study_1))
    assert len(study_2.trials) == N
    study_2.optimize(objective, n_trials=N)
    assert len(study_2.trials) == 2 * N
    # The copy took a slot of its own: the original still holds main and goes on.
    study_1.optimize(objective, n_trials=N)
    assert len(study_1.trials) == 3 * N
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study_1.trials)
    assert sorted(stream_owners(url)) == ["main", "worker-1"]


def test_deep_copied_study_attaches_afresh(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=url, sampler=CheckpointingSampler(RandomSampler(seed=1)))
    study.tell(study.ask(), 1.0)
    clone = copy.deepcopy(study)
    assert isinstance(clone.sampler, CheckpointingSampler)
    assert clone.sampler._attachment is None
    assert study.sampler._attachment is not None  # type: ignore[attr-defined]
    clone.tell(clone.ask(), 2.0)
    study.tell(study.ask(), 3.0)
    assert [t.value for t in study.trials] == [1.0, 2.0, 3.0]


def test_pickled_study_resumes_the_stream_of_an_original_that_is_gone(
    tmp_path: pathlib.Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(
        study_name="s", storage=url, sampler=CheckpointingSampler(TPESampler(seed=5))
    )
    study.optimize(objective, n_trials=N)
    saved = pickle.dumps(study)
    del study
    gc.collect()  # the original's lease goes with it, as with the end of its process
    pickle.loads(saved).optimize(objective, n_trials=N)

    reference = optuna.create_study(sampler=TPESampler(seed=5))
    reference.optimize(objective, n_trials=2 * N)
    resumed = optuna.load_study(study_name="s", storage=url)
    assert trajectory(resumed) == trajectory(reference)
    assert sorted(stream_owners(url)) == ["main"]


def tell(study: Study, trial: Any, value: float) -> None:
    study.tell(trial, value)


def optimize(study: Study, n_trials: int, url: str) -> dict[str, int | None]:
    study.optimize(objective, n_trials=n_trials)
    return stream_owners(url)


def test_tell_and_optimize_in_another_process(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=url, sampler=CheckpointingSampler(RandomSampler(seed=2)))
    trial_0 = study.ask()
    with fork_pool() as pool:
        pool.submit(tell, study, trial_0, 1.2).result()
        assert len(study.trials) == 1
        assert study.best_trial.state == TrialState.COMPLETE
        assert study.best_value == 1.2

        trial_1 = study.ask()
        pool.submit(tell, study, trial_1.number, 1.5).result()
        assert len(study.trials) == 2
        assert study.best_value == 1.2

        with pytest.raises(ValueError):
            pool.submit(tell, study, trial_0, 1.2).result()

        # A tell alone takes no stream; a child running trials takes one beside main.
        assert stream_owners(url) == {"main": os.getpid()}
        owners = pool.submit(optimize, study, N, url).result()
        assert owners["main"] == os.getpid()
        assert owners["worker-1"] not in (None, os.getpid())
    study.optimize(objective, n_trials=N)
    assert len(study.trials) == 2 + 2 * N
    assert stream_owners(url)["main"] == os.getpid()


def fresh_sampler_runs_a_trial(url: str) -> dict[str, int | None]:
    sampler = CheckpointingSampler(RandomSampler(seed=9))  # a sampler of its own, not a copy
    study = optuna.load_study(study_name="s", storage=url, sampler=sampler)
    study.optimize(objective, n_trials=1)
    return stream_owners(url)


def release_inherited_lease(study: Study) -> None:
    study.sampler._attachment.release()  # type: ignore[attr-defined]


def test_forked_process_neither_takes_over_nor_releases_the_parents_lease(
    tmp_path: pathlib.Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(
        study_name="s", storage=url, sampler=CheckpointingSampler(RandomSampler(seed=1))
    )
    study.optimize(objective, n_trials=1)  # idle now: a sampler of this process may take over
    with fork_pool() as pool:
        owners = pool.submit(fresh_sampler_runs_a_trial, url).result()
    assert owners["main"] == os.getpid()
    child = multiprocessing.get_context("fork").Process(
        target=release_inherited_lease, args=(study,)
    )
    child.start()
    child.join()
    assert child.exitcode == 0
    assert stream_owners(url)["main"] == os.getpid()
    study.optimize(objective, n_trials=1)
