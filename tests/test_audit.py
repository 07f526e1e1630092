"""audit_determinism: re-evaluate COMPLETE trials and compare their values bit for bit."""

from __future__ import annotations

from collections.abc import Callable
import gc
import math
import pathlib
import random
from typing import Literal

import numpy as np
import optuna
from optuna.samplers import RandomSampler
import pytest

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import DeterminismReport
from optuna_checkpoint import audit_determinism
from optuna_checkpoint import seed_everything
from optuna_checkpoint import trial_seed
from optuna_checkpoint.tools._audit import _same
from optuna_checkpoint.tools._seeding import ReplayTrial


SEED = 3


def sqlite_url(tmp_path: pathlib.Path) -> str:
    return f"sqlite:///{tmp_path / 'audit.db'}"


def run_study(
    tmp_path: pathlib.Path,
    objective: Callable[[optuna.Trial], float | tuple[float, float]],
    n_trials: int = 5,
    directions: tuple[Literal["minimize", "maximize"], ...] = ("minimize",),
) -> optuna.Study:
    study = optuna.create_study(
        study_name="audited",
        storage=sqlite_url(tmp_path),
        sampler=CheckpointingSampler(RandomSampler(seed=SEED)),
        directions=list(directions),
    )
    study.optimize(objective, n_trials=n_trials)
    return study


def deterministic(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -2.0, 2.0)
    return math.exp(x) / 3.0


def unseeded(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", -2.0, 2.0) + random.random()


def seeded(trial: optuna.Trial) -> float:
    seed_everything(trial)
    noise = np.random.default_rng(trial_seed(trial, "noise")).normal()
    return trial.suggest_float("x", -2.0, 2.0) + random.random() + np.random.random() + noise


def test_deterministic_objective_is_reported_identical(tmp_path: pathlib.Path) -> None:
    study = run_study(tmp_path, deterministic)

    report = audit_determinism(study, deterministic)

    assert isinstance(report, DeterminismReport)
    assert report.identical and report.differing == ()
    assert [t.number for t in report.trials] == [0, 2, 4]  # first, middle, last
    assert all(t.recomputed == t.recorded for t in report.trials)
    assert "all 3 audited trials returned their recorded values bit for bit" in str(report)
    assert "Likely causes" not in str(report)


def test_unseeded_randomness_is_reported_with_its_causes(tmp_path: pathlib.Path) -> None:
    study = run_study(tmp_path, unseeded)

    report = audit_determinism(study, unseeded, trials=2)

    assert not report.identical
    assert [t.number for t in report.differing] == [0, 4]
    audit = report.trials[0]
    assert audit.params == study.trials[0].params
    assert audit.recorded == tuple(study.trials[0].values)
    assert audit.recomputed is not None and audit.recomputed != audit.recorded
    text = str(report)
    assert "2 of 2 audited trials returned other values" in text
    assert "trial 0: DIFFERS" in text and float.hex(audit.recorded[0]) in text
    for cause in ("seed_everything(trial)", "cuDNN", "BLAS threads", "worker", "Wall-clock"):
        assert cause in text


def test_seeded_objective_is_identical_across_a_retry_and_a_copied_study(
    tmp_path: pathlib.Path,
) -> None:
    url = sqlite_url(tmp_path)
    sampler = CheckpointingSampler(RandomSampler(seed=SEED))
    study = optuna.create_study(study_name="audited", storage=url, sampler=sampler)
    study.optimize(seeded, n_trials=2)
    study.ask()  # abandoned: trial 2 is retried as trial 3, seeded as logical trial 2
    del study, sampler
    gc.collect()
    resumed = optuna.load_study(
        study_name="audited", storage=url, sampler=CheckpointingSampler(RandomSampler(seed=SEED))
    )
    resumed.optimize(seeded, n_trials=2)
    # The global generators move on: the audit must not depend on where they are.
    random.random()
    np.random.random()
    copy_url = f"sqlite:///{tmp_path / 'copy.db'}"
    optuna.copy_study(from_study_name="audited", from_storage=url, to_storage=copy_url)
    copied = optuna.load_study(study_name="audited", storage=copy_url)

    for audited in (resumed, copied):
        report = audit_determinism(audited, seeded, trials=[0, 3, 4])
        assert report.identical, str(report)
    # Control: seeded by its raw number, the retry would have returned another value.
    retry = resumed.trials[3]
    assert retry.system_attrs["optuna_checkpoint:seed_number"] == 2
    raw = ReplayTrial(retry.params, number=3, study_name="audited", seed_number=3)
    assert seeded(raw) != retry.value  # type: ignore[arg-type]


def test_multi_objective_values_are_compared_one_by_one(tmp_path: pathlib.Path) -> None:
    def half_noisy(trial: optuna.Trial) -> tuple[float, float]:
        x = trial.suggest_float("x", 0.0, 1.0)
        return x, x + random.random()

    study = run_study(tmp_path, half_noisy, directions=("minimize", "maximize"))

    report = audit_determinism(study, half_noisy, trials=1)

    (audit,) = report.trials
    assert audit.recomputed is not None
    assert audit.recomputed[0] == audit.recorded[0] and audit.recomputed[1] != audit.recorded[1]
    assert not audit.identical


def test_objective_raising_on_replay_is_reported_not_raised(tmp_path: pathlib.Path) -> None:
    study = run_study(tmp_path, deterministic, n_trials=2)

    def uses_the_study(trial: optuna.Trial) -> float:
        return deterministic(trial) + len(trial.study.trials)

    report = audit_determinism(study, uses_the_study, trials=1)

    assert report.trials[0].recomputed is None
    assert report.trials[0].error is not None and "AttributeError" in report.trials[0].error
    assert "now raised AttributeError" in str(report)


def test_values_compare_bit_for_bit_with_nan_equal_to_nan() -> None:
    assert _same((math.nan, 1.0), (-math.nan, 1.0))
    assert not _same((0.0,), (-0.0,))
    assert not _same((1.0,), (1.0 + 2**-52,))
    assert not _same((1.0,), (1.0, 2.0))


def test_bad_trial_choices_are_refused_with_what_to_do(tmp_path: pathlib.Path) -> None:
    study = run_study(tmp_path, deterministic, n_trials=3)

    with pytest.raises(ValueError, match=r"trials \[7\] are not COMPLETE trials"):
        audit_determinism(study, deterministic, trials=[1, 7])
    with pytest.raises(ValueError, match="at least 1"):
        audit_determinism(study, deterministic, trials=0)
    assert [t.number for t in audit_determinism(study, deterministic, trials=9).trials] == [
        0,
        1,
        2,
    ]
    empty = optuna.create_study()
    with pytest.raises(ValueError, match="no COMPLETE trial"):
        audit_determinism(empty, deterministic)
