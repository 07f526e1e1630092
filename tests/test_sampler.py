"""CheckpointingSampler as a drop-in: transparent, checkpointing every told trial atomically."""

from __future__ import annotations

from collections.abc import Callable
import gc
import json
import logging
import math
import pathlib
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import FloatDistribution
from optuna.samplers import BaseSampler
from optuna.samplers import CmaEsSampler
from optuna.samplers import RandomSampler
from optuna.samplers import TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import pytest
import sqlalchemy as sa

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import UnsupportedSamplerError
from optuna_checkpoint import uninterrupted_trials
from optuna_checkpoint._logging import ROOT_LOGGER_NAME
from optuna_checkpoint.stores._sql import checkpoints
from optuna_checkpoint.stores._sql import interrupted_trials
from optuna_checkpoint.stores._sql import streams


pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

SEED = 20240611
N_TRIALS = 18

SAMPLERS: dict[str, Callable[[], BaseSampler]] = {
    "random": lambda: RandomSampler(seed=SEED),
    "tpe": lambda: TPESampler(seed=SEED),
    "tpe-independent": lambda: TPESampler(seed=SEED, multivariate=False),
    "tpe-group": lambda: TPESampler(seed=SEED, multivariate=True, group=True),
    "cmaes": lambda: CmaEsSampler(seed=SEED),
    "cmaes-sep": lambda: CmaEsSampler(seed=SEED, use_separable_cma=True),
    "cmaes-margin": lambda: CmaEsSampler(seed=SEED, with_margin=True),
    "cmaes-lr-adapt": lambda: CmaEsSampler(seed=SEED, lr_adapt=True),
}
# Optuna 5.0's CmaEsSampler(with_margin=True) itself crashes in cmaes.CMAwM.tell once a
# conditional parameter has entered the search space (unwrapped too), so it gets none.
CONDITIONAL = {name: name != "cmaes-margin" for name in SAMPLERS}


class GenuineFailure(Exception):
    pass


def make_objective(conditional: bool = True) -> Callable[[optuna.Trial], float]:
    """Every kind of distribution, a conditional branch, some failures and some prunes."""

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5.0, 5.0)
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        s = trial.suggest_float("s", 0.0, 1.0, step=0.1)
        n = trial.suggest_int("n", 1, 8)
        kind = trial.suggest_categorical("kind", ["a", "b", "c"])
        extra = 0.0
        if conditional and kind == "a":
            extra = trial.suggest_float("ya", -1.0, 1.0)
        elif conditional:
            extra = float(trial.suggest_int("yb", 0, 3))
        if n == 8 and kind != "a":
            raise GenuineFailure("failure for some parameters")
        if n == 1 and kind != "a":
            raise optuna.TrialPruned()
        return (x - 1.0) ** 2 + math.log10(lr) ** 2 / 10 + s + abs(n - 5) + extra

    return objective


objective = make_objective()


def light_objective(trial: optuna.Trial) -> float:
    """Few parameters (each costs a commit) and every end state, by trial number."""
    x = trial.suggest_float("x", -1.0, 1.0)
    k = trial.suggest_int("k", 0, 3)
    if trial.number % 5 == 3:
        raise GenuineFailure("failure for some trials")
    if trial.number % 5 == 4:
        raise optuna.TrialPruned()
    return x * x + k


def trajectory(study: Study) -> list[tuple[Any, ...]]:
    """The trials as bit-exact data: floats by ``float.hex``."""

    def exact(v: Any) -> Any:
        return v.hex() if isinstance(v, float) else v

    return [
        (
            t.number,
            t.state.name,
            {k: exact(v) for k, v in sorted(t.params.items())},
            None if t.values is None else [v.hex() for v in t.values],
        )
        for t in study.get_trials(deepcopy=False)
    ]


def run(
    url: str,
    sampler: BaseSampler,
    n_trials: int = N_TRIALS,
    name: str = "s",
    func: Callable[[optuna.Trial], float] = light_objective,
) -> Study:
    study = optuna.create_study(study_name=name, storage=url, sampler=sampler)
    study.optimize(func, n_trials=n_trials, catch=(GenuineFailure,))
    return study


def checkpoint_rows(url: str) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return list(
                connection.execute(
                    checkpoints.select().order_by(checkpoints.c.checkpoint_id)
                ).all()
            )
    finally:
        engine.dispose()


def sqlite_url(tmp_path: pathlib.Path, name: str) -> str:
    return f"sqlite:///{tmp_path / name}"


# -- transparency ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_wrapped_sampler_proposes_bit_for_bit_what_the_sampler_alone_proposes(
    name: str, tmp_path: pathlib.Path
) -> None:
    func = make_objective(CONDITIONAL[name])
    plain = run(sqlite_url(tmp_path, "plain.db"), SAMPLERS[name](), func=func)
    wrapped = run(
        sqlite_url(tmp_path, "wrapped.db"), CheckpointingSampler(SAMPLERS[name]()), func=func
    )

    expected = trajectory(plain)
    assert trajectory(wrapped) == expected
    assert len(checkpoint_rows(sqlite_url(tmp_path, "wrapped.db"))) == N_TRIALS + 1
    # The comparison covers trials the sampler chose after learning, not only start-up ones.
    assert sum(state == "COMPLETE" for _, state, _, _ in expected) >= 10


def test_transparency_objective_reaches_every_end_state_and_branch() -> None:
    # Guards the test above: with a sampler that explores, its objective produces all three
    # end states and both sides of the conditional branch.
    study = optuna.create_study(sampler=RandomSampler(seed=SEED))
    study.optimize(objective, n_trials=100, catch=(GenuineFailure,))
    assert {t.state for t in study.trials} == {
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.PRUNED,
    }
    assert {"ya", "yb"} <= {name for t in study.trials for name in t.params}


# -- ask and tell ----------------------------------------------------------------------------


def ask_tell(study: Study, n: int) -> None:
    for i in range(n):
        trial = study.ask()
        x = trial.suggest_float("x", -1.0, 1.0)
        k = trial.suggest_int("k", 0, 10)
        if i == 2:
            study.tell(trial, state=TrialState.FAIL)
        elif i == 4:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, x * x + k)


def test_ask_and_tell_writes_one_checkpoint_per_told_trial_plus_the_initial_one(
    tmp_path: pathlib.Path,
) -> None:
    url = sqlite_url(tmp_path, "s.db")
    study = optuna.create_study(
        study_name="s", storage=url, sampler=CheckpointingSampler(TPESampler(seed=SEED))
    )
    plain = optuna.create_study(
        study_name="s", storage=sqlite_url(tmp_path, "plain.db"), sampler=TPESampler(seed=SEED)
    )

    ask_tell(study, 7)
    ask_tell(plain, 7)

    rows = checkpoint_rows(url)
    assert len(rows) == 7 + 1
    assert rows[0].trial_id == -1 and rows[0].logical_number == -1
    assert [r.trial_id for r in rows[1:]] == [t._trial_id for t in study.trials]
    assert [r.trial_state for r in rows[1:]] == [t.state.name for t in study.trials]
    assert trajectory(study) == trajectory(plain)


def test_asked_but_not_yet_told_trial_has_no_checkpoint(tmp_path: pathlib.Path) -> None:
    url = sqlite_url(tmp_path, "s.db")
    study = optuna.create_study(
        study_name="s", storage=url, sampler=CheckpointingSampler(RandomSampler(seed=SEED))
    )
    ask_tell(study, 2)
    pending = study.ask()
    pending.suggest_float("x", -1.0, 1.0)

    assert len(checkpoint_rows(url)) == 2 + 1
    study.tell(pending, 0.5)
    assert checkpoint_rows(url)[-1].trial_id == pending._trial_id


# -- the atomic path -------------------------------------------------------------------------


def test_every_finished_trial_is_checkpointed_inside_optunas_commit(
    tmp_path: pathlib.Path,
) -> None:
    url = sqlite_url(tmp_path, "s.db")
    sampler = CheckpointingSampler(TPESampler(seed=SEED, n_startup_trials=4))
    study = run(url, sampler, n_trials=10)

    attachment = sampler._attachment
    assert attachment is not None
    # Still True: no trial was stored finished without its checkpoint (see
    # _settle_deferred_saves), i.e. the commit hook recognised every one of Optuna's commits.
    assert attachment.atomic is True
    assert attachment.store.pending_trial_ids() == set()
    rows = {r.trial_id: r for r in checkpoint_rows(url)}
    trials = study.get_trials(deepcopy=False)
    assert {t.state for t in trials} == {TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED}
    assert set(rows) == {-1} | {t._trial_id for t in trials}
    for trial in trials:
        row = rows[trial._trial_id]
        assert row.logical_number == trial.number
        assert row.trial_state == trial.state.name
        expected_values = None if trial.values is None else [v.hex() for v in trial.values]
        stored = None if row.trial_values is None else json.loads(row.trial_values)
        assert stored == expected_values  # stored as float.hex, so exact


# -- deleted and recreated studies -----------------------------------------------------------


def test_recreated_study_with_a_reused_id_does_not_restore_the_deleted_studys_checkpoints(
    tmp_path: pathlib.Path,
) -> None:
    url = sqlite_url(tmp_path, "s.db")
    old = run(url, CheckpointingSampler(RandomSampler(seed=SEED)), n_trials=6, name="d")
    old_id = old._study_id
    del old
    gc.collect()
    optuna.delete_study(study_name="d", storage=url)

    new = run(url, CheckpointingSampler(RandomSampler(seed=SEED)), n_trials=6, name="d")
    fresh = run(sqlite_url(tmp_path, "fresh.db"), RandomSampler(seed=SEED), n_trials=6)

    assert new._study_id == old_id  # SQLite reused the id: the case this test is about
    assert trajectory(new) == trajectory(fresh)
    # Also on resume: a new sampler continues the new study's trajectory, not the old one's.
    del new
    gc.collect()
    resumed = optuna.load_study(
        study_name="d", storage=url, sampler=CheckpointingSampler(RandomSampler(seed=SEED))
    )
    resumed.optimize(light_objective, n_trials=2, catch=(GenuineFailure,))
    fresh.optimize(light_objective, n_trials=2, catch=(GenuineFailure,))
    assert trajectory(resumed) == trajectory(fresh)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            assert (
                connection.execute(sa.select(sa.func.count()).select_from(streams)).scalar() == 1
            )
    finally:
        engine.dispose()


def abandon_a_trial_then_resume(url: str) -> Study:
    """Leave trial 2 RUNNING as a dead process would, then resume, which hides it."""
    sampler = CheckpointingSampler(RandomSampler(seed=SEED))
    study = optuna.create_study(study_name="d", storage=url, sampler=sampler)
    study.optimize(light_objective, n_trials=2, catch=(GenuineFailure,))
    abandoned = study.ask()
    del study, sampler, abandoned
    gc.collect()  # the sampler is gone and its lease released, as when a process dies
    resumed = optuna.load_study(
        study_name="d", storage=url, sampler=CheckpointingSampler(RandomSampler(seed=SEED))
    )
    resumed.optimize(light_objective, n_trials=1, catch=(GenuineFailure,))
    return resumed


def test_interrupted_trial_is_hidden_from_uninterrupted_trials(tmp_path: pathlib.Path) -> None:
    study = abandon_a_trial_then_resume(sqlite_url(tmp_path, "s.db"))

    assert [t.state for t in study.trials][2] == TrialState.FAIL
    assert [t.number for t in uninterrupted_trials(study)] == [0, 1, 3]


def test_recreated_study_records_its_own_interruptions_at_reused_trial_ids(
    tmp_path: pathlib.Path,
) -> None:
    url = sqlite_url(tmp_path, "s.db")
    old = abandon_a_trial_then_resume(url)
    old_interrupted_id = old.trials[2]._trial_id
    del old
    gc.collect()
    optuna.delete_study(study_name="d", storage=url)

    new = abandon_a_trial_then_resume(url)

    assert new.trials[2]._trial_id == old_interrupted_id  # SQLite reused the trial id
    assert new.trials[2].state == TrialState.FAIL
    assert [t.number for t in uninterrupted_trials(new)] == [0, 1, 3]
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            uids = connection.execute(sa.select(interrupted_trials.c.study_uid)).scalars().all()
            uid = connection.execute(sa.select(streams.c.study_uid)).scalar_one()
    finally:
        engine.dispose()
    assert uids == [uid]


# -- construction ----------------------------------------------------------------------------


class NumpyRandomSampler(BaseSampler):
    """A sampler no adapter knows: independent uniform floats from its own RandomState."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.RandomState(seed)

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        assert isinstance(param_distribution, FloatDistribution)
        low, high = param_distribution.low, param_distribution.high
        return float(low + (high - low) * self._rng.rand())


def float_objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", -1.0, 1.0) ** 2


def test_wrapping_a_checkpointing_sampler_again_raises_value_error() -> None:
    with pytest.raises(ValueError, match="already a CheckpointingSampler"):
        CheckpointingSampler(CheckpointingSampler(RandomSampler(seed=0)))


def test_unknown_sampler_class_is_refused_at_construction_naming_allow_pickle() -> None:
    with pytest.raises(UnsupportedSamplerError) as raised:
        CheckpointingSampler(NumpyRandomSampler(seed=0))
    message = str(raised.value)
    assert "NumpyRandomSampler" in message
    assert "allow_pickle=True" in message


def test_unknown_sampler_with_allow_pickle_is_transparent_and_resumes(
    tmp_path: pathlib.Path,
) -> None:
    url = sqlite_url(tmp_path, "s.db")
    study = optuna.create_study(
        study_name="s",
        storage=url,
        sampler=CheckpointingSampler(NumpyRandomSampler(seed=3), allow_pickle=True),
    )
    study.optimize(float_objective, n_trials=3)
    del study
    gc.collect()
    resumed = optuna.load_study(
        study_name="s",
        storage=url,
        sampler=CheckpointingSampler(NumpyRandomSampler(seed=3), allow_pickle=True),
    )
    resumed.optimize(float_objective, n_trials=3)

    plain = optuna.create_study(sampler=NumpyRandomSampler(seed=3))
    plain.optimize(float_objective, n_trials=6)
    assert [t.params["x"].hex() for t in resumed.trials] == [
        t.params["x"].hex() for t in plain.trials
    ]
    assert {r.adapter for r in checkpoint_rows(url)} == {"Pickle"}


def test_in_memory_storage_works_with_a_warning_and_resumes_within_the_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger=ROOT_LOGGER_NAME):
        study = optuna.create_study(sampler=CheckpointingSampler(TPESampler(seed=SEED)))
        study.optimize(objective, n_trials=12, catch=(GenuineFailure,))
    assert "The study is in memory" in caplog.text
    assert "sqlite:///" in caplog.text

    # A new sampler on the same in-memory study continues the same trajectory.
    study.sampler = CheckpointingSampler(TPESampler(seed=SEED))
    study.optimize(objective, n_trials=8, catch=(GenuineFailure,))

    plain = optuna.create_study(sampler=TPESampler(seed=SEED))
    plain.optimize(objective, n_trials=20, catch=(GenuineFailure,))
    assert trajectory(study) == trajectory(plain)


CTRL_C_SCRIPT = """
import os, signal, sys, time
import optuna
from optuna_checkpoint import CheckpointingSampler
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in an interactive shell

def objective(trial):
    x = trial.suggest_float("x", 0, 1)
    if trial.number == 1:
        for _ in range(100):  # Ctrl-C, pressed again if Python swallowed it somewhere
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
    return x

sampler = CheckpointingSampler(optuna.samplers.RandomSampler(seed=0))
study = optuna.create_study(study_name="s", storage=sys.argv[1], load_if_exists=True,
                            sampler=sampler)
study.optimize(objective, n_trials=3)
"""


def test_a_trial_cut_off_by_ctrl_c_is_tagged_interrupted(tmp_path: pathlib.Path) -> None:
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path}/s.db"
    run = [sys.executable, "-c", CTRL_C_SCRIPT, url]
    done = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert "KeyboardInterrupt" in done.stderr
    study = optuna.load_study(study_name="s", storage=url)
    cut = study.trials[1]
    assert cut.state == TrialState.FAIL
    assert cut.system_attrs.get("optuna_checkpoint:interrupted") == (
        "Ctrl-C (KeyboardInterrupt) cut it off"
    )
    # Run again: the tagged attempt is hidden and retried, as a killed one is.
    subprocess.run([*run[:3], url], capture_output=True, text=True, timeout=60)
    retried = optuna.load_study(study_name="s", storage=url).trials[2]
    assert retried.params == cut.params and retried.system_attrs["failed_trial"] == 1
