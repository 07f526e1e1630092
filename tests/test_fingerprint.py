"""The sampler fingerprint: a resume with another configuration is refused, and says why."""

from __future__ import annotations

from collections.abc import Callable
import logging
import pathlib
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import optuna
from optuna.samplers import BaseSampler
from optuna.samplers import CmaEsSampler
from optuna.samplers import RandomSampler
from optuna.samplers import TPESampler
from optuna.trial import TrialState
import pytest

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import ConfigMismatchError
from optuna_checkpoint._logging import ROOT_LOGGER_NAME
from optuna_checkpoint.state._fingerprint import _rng_digest
from optuna_checkpoint.state._fingerprint import comparable
from optuna_checkpoint.state._fingerprint import describe
from optuna_checkpoint.state._fingerprint import differences
from optuna_checkpoint.state._fingerprint import digest
from optuna_checkpoint.state._fingerprint import readable_differences
from optuna_checkpoint.state._fingerprint import sampler_named


STUDY = "fp"

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -3.0, 3.0)
    y = trial.suggest_float("y", -3.0, 3.0)
    return (x - 1.0) ** 2 + (y + 0.5) ** 2


def fingerprint(sampler: BaseSampler) -> object:
    return CheckpointingSampler(sampler)._fingerprint


def first_run(url: str, sampler: BaseSampler, n_trials: int = 3) -> optuna.Study:
    """Run the first part of a study; the returned study keeps its (idle) sampler alive."""
    study = optuna.create_study(
        study_name=STUDY, storage=url, sampler=CheckpointingSampler(sampler)
    )
    study.optimize(objective, n_trials=n_trials)
    return study


def resume(url: str, sampler: BaseSampler, **kwargs: object) -> optuna.Study:
    study = optuna.load_study(
        study_name=STUDY, storage=url, sampler=CheckpointingSampler(sampler, **kwargs)
    )
    study.optimize(objective, n_trials=1)
    return study


@pytest.fixture
def url(tmp_path: pathlib.Path) -> str:
    return f"sqlite:///{tmp_path / 's.db'}"


# -- descriptions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: RandomSampler(seed=seed),
        lambda seed: TPESampler(seed=seed),
        lambda seed: TPESampler(seed=seed, multivariate=True, group=True),
        lambda seed: CmaEsSampler(seed=seed),
        lambda seed: CmaEsSampler(seed=seed, with_margin=True),
    ],
    ids=["random", "tpe", "tpe-group", "cmaes", "cmaes-margin"],
)
def test_same_configuration_and_seed_describe_equal_and_other_seed_differs(
    make: Callable[[int | None], BaseSampler],
) -> None:
    assert fingerprint(make(7)) == fingerprint(make(7))
    assert fingerprint(make(None)) == fingerprint(make(None))

    other_seed = differences(fingerprint(make(7)), fingerprint(make(8)))
    assert other_seed, "another seed must show up as a difference"
    assert all("rng" in line for line in other_seed), other_seed
    assert differences(fingerprint(make(7)), fingerprint(make(None)))


def test_description_of_an_rng_is_taken_from_the_fresh_sampler() -> None:
    sampler = RandomSampler(seed=5)
    wrapped = CheckpointingSampler(sampler)
    sampler._rng.rng.rand(3)  # using the sampler advances its RNG ...

    # ... but the fingerprint was taken at construction, so it still names the seed.
    assert wrapped._fingerprint == fingerprint(RandomSampler(seed=5))
    assert describe(sampler) != describe(RandomSampler(seed=5))


@pytest.mark.filterwarnings("ignore:`x0` has been deprecated:FutureWarning")
def test_float_configuration_differences_are_exact() -> None:
    lines = differences(
        fingerprint(CmaEsSampler(seed=1, x0={"x": 0.5})),
        fingerprint(CmaEsSampler(seed=1, x0={"x": 0.5000000000000001})),
    )
    assert len(lines) == 1
    assert lines[0].startswith("sampler.attrs._x0.x")


@pytest.mark.filterwarnings("ignore:`x0` has been deprecated:FutureWarning")
def test_float_configuration_differences_are_shown_as_decimal_floats() -> None:
    lines = differences(
        fingerprint(CmaEsSampler(seed=1, x0={"x": 0.5})),
        fingerprint(CmaEsSampler(seed=1, x0={"x": 0.5000000000000001})),
    )
    assert lines == ["sampler.attrs._x0.x: was 0.5, now 0.5000000000000001"]


def test_readable_differences_name_arguments_and_seeds_each_once() -> None:
    # TPE hands its seed to the RandomSampler it holds: one seed, two generators, one line.
    assert readable_differences(
        fingerprint(TPESampler(seed=42, n_startup_trials=4)),
        fingerprint(TPESampler(seed=43, n_startup_trials=2)),
    ) == ["n_startup_trials: recorded 4, given 2", "seed: recorded 42, given 43"]
    assert readable_differences(
        fingerprint(CmaEsSampler(seed=1)), fingerprint(CmaEsSampler(n_startup_trials=3))
    ) == ["seed: recorded 1, given none", "n_startup_trials: recorded 1, given 3"]


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: TPESampler(seed=42), "TPESampler(seed=42)"),
        (lambda: CmaEsSampler(seed=3), "CmaEsSampler(seed=3)"),
        (lambda: optuna.samplers.QMCSampler(seed=5), "QMCSampler(seed=5)"),  # its seed is held
        (lambda: RandomSampler(), "RandomSampler"),
    ],
    ids=["tpe", "cmaes", "qmc", "unseeded"],
)
def test_a_fingerprint_names_its_sampler_as_constructed(
    make: Callable[[], BaseSampler], named: str
) -> None:
    assert sampler_named(fingerprint(make())) == named


# -- resume ----------------------------------------------------------------------------------


def test_resume_with_same_configuration_and_seed_continues(url: str) -> None:
    first_run(url, TPESampler(seed=11, n_startup_trials=2))

    study = resume(url, TPESampler(seed=11, n_startup_trials=2))

    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4


def test_resume_with_other_n_startup_trials_raises_config_mismatch_naming_the_difference(
    url: str,
) -> None:
    first_run(url, TPESampler(seed=11))

    with pytest.raises(ConfigMismatchError) as raised:
        resume(url, TPESampler(seed=11, n_startup_trials=3))

    message = str(raised.value)
    assert "_n_startup_trials: was 10, now 3" in message
    assert "start_new_stream=True" in message
    assert "rng" not in message  # the seed is the same, so only the real difference is named


def test_resume_with_other_seed_raises_config_mismatch(url: str) -> None:
    first_run(url, TPESampler(seed=11))

    with pytest.raises(ConfigMismatchError, match=r"_rng: was seed 11, now seed 12"):
        resume(url, TPESampler(seed=12))


def test_a_stream_that_recorded_its_seed_as_a_digest_still_resumes(tmp_path: pathlib.Path) -> None:
    # Releases up to 0.4 recorded every seeded generator as a digest of its state.
    url = f"sqlite:///{tmp_path}/old.db"
    first_run(url, TPESampler(seed=11))
    old_form = _rng_digest(np.random.RandomState(11))
    with sqlite3.connect(tmp_path / "old.db") as connection:
        changed = connection.execute(
            "UPDATE optuna_checkpoint_streams SET fingerprint = replace(fingerprint, ?, ?)",
            ('"seed:11"', f'"{old_form}"'),
        ).rowcount
    assert changed == 1

    with pytest.raises(
        ConfigMismatchError, match="was a seed recorded only as a digest, now seed 12"
    ):
        resume(url, TPESampler(seed=12))
    study = resume(url, TPESampler(seed=11))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3 + [
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]


def test_a_refused_resume_closes_its_trial_at_once_saying_why(url: str) -> None:
    first_run(url, TPESampler(seed=11))
    with pytest.raises(ConfigMismatchError):
        resume(url, TPESampler(seed=12))
    refused = optuna.load_study(study_name=STUDY, storage=url).trials[-1]
    assert refused.state == TrialState.FAIL  # not left RUNNING for the next run to misread
    reason = refused.system_attrs["optuna_checkpoint:interrupted"]
    assert reason == "refused: the sampler is configured differently from the stream's"
    study = resume(url, TPESampler(seed=11))
    assert "failed_trial" not in study.trials[-1].system_attrs  # it retries nothing


def test_resume_with_other_sampler_class_raises_config_mismatch(url: str) -> None:
    first_run(url, TPESampler(seed=11))

    with pytest.raises(ConfigMismatchError) as raised:
        resume(url, CmaEsSampler(seed=11))

    message = str(raised.value)
    assert 'adapter: was "TPESampler", now "CmaEsSampler"' in message
    assert "start_new_stream=True" in message


def test_config_mismatch_leaves_the_finished_trials_untouched(url: str) -> None:
    study = first_run(url, TPESampler(seed=11))
    before = [(t.number, t.state, t.params, t.values) for t in study.trials]

    with pytest.raises(ConfigMismatchError):
        resume(url, TPESampler(seed=11, n_startup_trials=3))

    after = optuna.load_study(study_name=STUDY, storage=url).trials
    assert [(t.number, t.state, t.params, t.values) for t in after[:3]] == before
    assert len(after) == 4 and after[3].state != TrialState.COMPLETE


def test_start_new_stream_resumes_from_the_sampler_as_given(
    url: str, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    first_run(url, TPESampler(seed=11))
    # What the new configuration, unwrapped, proposes on the same study.
    shutil.copy(tmp_path / "s.db", tmp_path / "control.db")
    control = optuna.load_study(
        study_name=STUDY,
        storage=f"sqlite:///{tmp_path / 'control.db'}",
        sampler=TPESampler(seed=11, n_startup_trials=3),
    )
    control.optimize(objective, n_trials=2)

    with caplog.at_level(logging.WARNING, logger=ROOT_LOGGER_NAME):
        study = resume(url, TPESampler(seed=11, n_startup_trials=3), start_new_stream=True)
    study.optimize(objective, n_trials=1)

    assert "Started a new checkpoint stream 'main' for study 'fp'" in caplog.text
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5
    assert [t.params for t in study.trials] == [t.params for t in control.trials]
    # The stream now records the new configuration: it resumes as is, the old one is refused.
    del study
    assert resume(url, TPESampler(seed=11, n_startup_trials=3)).trials[-1].state == (
        TrialState.COMPLETE
    )
    with pytest.raises(ConfigMismatchError):
        resume(url, TPESampler(seed=11))


def test_start_new_stream_after_a_config_mismatch_in_the_same_process_resumes(url: str) -> None:
    first_run(url, TPESampler(seed=11))
    with pytest.raises(ConfigMismatchError):
        resume(url, TPESampler(seed=11, n_startup_trials=3))

    study = resume(url, TPESampler(seed=11, n_startup_trials=3), start_new_stream=True)

    assert study.trials[-1].state == TrialState.COMPLETE


CUSTOM_GAMMA_CHILD = """
import sys

import optuna

from optuna_checkpoint import CheckpointingSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


def gamma(n):
    # A generator expression: its code object is a constant of this function's code.
    return min(25, sum(1 for _ in range(n)) // 10)


sampler = CheckpointingSampler(optuna.samplers.TPESampler(seed=1, gamma=gamma))
study = optuna.create_study(
    study_name="fp", storage=sys.argv[1], sampler=sampler, load_if_exists=True
)
study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=2)
"""


def test_sampler_with_a_custom_function_resumes_in_a_fresh_process(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    command = [sys.executable, "-W", "ignore", "-c", CUSTOM_GAMMA_CHILD, url]

    first = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)

    assert "ConfigMismatchError" not in second.stderr, second.stderr[-600:]
    assert second.returncode == 0
    assert len(optuna.load_study(study_name=STUDY, storage=url).trials) == 4


# Digests of the fingerprints that optuna-checkpoint 0.2 stored, on Python 3.11 and Optuna 5.0
# (a function's fingerprint digests its bytecode, which differs between Python versions). A
# change here makes every stream written by 0.2 refuse to resume after an upgrade.
FINGERPRINTS_OF_0_2 = {
    "random": ("b3ea28c6c01510879bb28060e3edae7a", lambda: RandomSampler(seed=1)),
    "tpe": ("1d09cc365404a8d6b245cb289154f020", lambda: TPESampler(seed=1)),
    "tpe-independent": (
        "2dfab6108567c55dbfb566888dff38f9",
        lambda: TPESampler(seed=1, multivariate=False),
    ),
    "tpe-group": (
        "1129263eb6a958b14dcb02c2dd4feb97",
        lambda: TPESampler(seed=1, multivariate=True, group=True),
    ),
    "tpe-unseeded": ("3b5254eb47173926eec261ff73d86ca8", lambda: TPESampler()),
    "cmaes": ("99476498e4d12ff8beda35e4708acc5a", lambda: CmaEsSampler(seed=1)),
    "cmaes-sep": (
        "f21bc47a8de08d003ed732856ccbba5f",
        lambda: CmaEsSampler(seed=1, use_separable_cma=True),
    ),
    "cmaes-margin": (
        "02597256cdb951febe67f59765202253",
        lambda: CmaEsSampler(seed=1, with_margin=True),
    ),
    "cmaes-lr-adapt": (
        "16517b43a49093b9b3687aefc17b6107",
        lambda: CmaEsSampler(seed=1, lr_adapt=True),
    ),
}


@pytest.mark.skipif(
    sys.version_info[:2] != (3, 11) or not optuna.__version__.startswith("5.0."),
    reason="the recorded digests are of Python 3.11 and Optuna 5.0",
)
@pytest.mark.parametrize("name", list(FINGERPRINTS_OF_0_2))
def test_streams_written_by_0_2_still_resume(name: str) -> None:
    expected, make = FINGERPRINTS_OF_0_2[name]
    # Seeds are recorded as "seed:<n>" since 0.5; compared, they are the digests 0.2 recorded.
    assert digest(comparable(fingerprint(make()))) == expected
