"""verify(): the integrity pass over every checkpoint, and the replay of the sampler."""

from __future__ import annotations

import gc
import pathlib
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.samplers import CmaEsSampler
from optuna.samplers import TPESampler
import pytest
import sqlalchemy as sa

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import verify
from optuna_checkpoint.state import _codec
from optuna_checkpoint.stores._sql import checkpoints
from optuna_checkpoint.stores._sql import streams
from tests.checkpoint_rows import seal_of_row


STUDY = "verified"


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5.0, 5.0)
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    k = trial.suggest_int("k", 0, 4)
    kind = trial.suggest_categorical("kind", ["a", "b", None])
    trial.report(x * x, 0)
    if trial.number % 7 == 5:
        raise optuna.TrialPruned()
    if trial.number % 7 == 6:
        raise ValueError("a failing trial")
    return x * x + lr + k + (kind == "a")


def open_study(url: str, sampler: BaseSampler, **options: Any) -> optuna.Study:
    return optuna.create_study(
        study_name=STUDY,
        storage=url,
        load_if_exists=True,
        sampler=CheckpointingSampler(sampler, **options),
    )


def interrupted_run(url: str, make: Any, n_trials: int = 12) -> optuna.Study:
    """Run with one trial abandoned midway, as by a process that died in the objective."""
    study = open_study(url, make())
    study.optimize(objective, n_trials=4, catch=(ValueError,))
    study.ask()  # left RUNNING
    del study
    gc.collect()  # the lease is released: the next sampler resumes
    study = open_study(url, make())
    study.enqueue_trial({"x": 0.5})  # a trial whose parameter is fixed by the user
    study.optimize(objective, n_trials=n_trials - 4, catch=(ValueError,))
    return optuna.load_study(study_name=STUDY, storage=url)


@pytest.fixture
def url(tmp_path: pathlib.Path) -> str:
    return f"sqlite:///{tmp_path / 'v.db'}"


@pytest.mark.parametrize(
    "make",
    [lambda: TPESampler(seed=7, n_startup_trials=4), lambda: CmaEsSampler(seed=7)],
    ids=["tpe", "cmaes"],
)
def test_a_resumed_study_verifies_and_replays_every_trial(url: str, make: Any) -> None:
    study = interrupted_run(url, make)

    report = verify(study, make())

    assert report.ok, str(report)
    assert report.problems == [] and report.divergence is None
    assert report.replayed_stream == "main"
    assert report.trials_replayed == 12  # the interrupted attempt is not part of the run
    assert report.checkpoints_checked == 12 + 1
    assert "verified" in str(report)


def test_a_differently_configured_sampler_is_reported_and_diverges_where_it_matters(
    url: str,
) -> None:
    study = interrupted_run(url, lambda: TPESampler(seed=7, n_startup_trials=4))

    report = verify(study, TPESampler(seed=7, n_startup_trials=2))

    assert not report.ok
    assert [p.kind for p in report.problems] == ["configuration"]
    assert "n_startup_trials" in report.problems[0].message
    divergence = report.divergence
    assert divergence is not None and divergence.trial_number == 2  # TPE's model starts there
    assert divergence.param == "x"
    assert divergence.recorded == study.trials[2].params["x"].hex()
    assert any("configured differently" in c for c in divergence.likely_causes)
    assert "First divergence at trial 2" in str(report)


def test_another_seed_is_reported_though_the_initial_checkpoint_replays_the_run(
    url: str,
) -> None:
    # The replay starts from the stream's initial checkpoint, which holds the RNG as seeded:
    # the trajectory is reproduced, but a resume with this sampler would be refused.
    study = interrupted_run(url, lambda: TPESampler(seed=7, n_startup_trials=4))
    report = verify(study, TPESampler(seed=8, n_startup_trials=4))
    assert report.divergence is None and report.trials_replayed == 12
    assert [p.kind for p in report.problems] == ["configuration"]
    assert "_rng" in report.problems[0].message


def rewrite_checkpoint(url: str, trial_number: int, change_state: Any) -> None:
    """Change the state in one trial's checkpoint and seal it validly, as a bug would."""
    study = optuna.load_study(study_name=STUDY, storage=url)
    trial_id = study.trials[trial_number]._trial_id
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            row = connection.execute(
                checkpoints.select().where(checkpoints.c.trial_id == trial_id)
            ).one()
            stream = connection.execute(
                streams.select().where(streams.c.stream_id == row.stream_id)
            ).one()
            state = change_state(_codec.decode(row.payload))
            payload = _codec.encode(state)
            connection.execute(
                checkpoints.update()
                .where(checkpoints.c.checkpoint_id == row.checkpoint_id)
                .values(payload=payload, checksum=seal_of_row(row, stream, payload=payload))
            )
    finally:
        engine.dispose()


def test_a_checkpoint_whose_state_differs_from_the_replay_is_the_divergence(url: str) -> None:
    interrupted_run(url, lambda: TPESampler(seed=7, n_startup_trials=4))

    def advance(state: dict[str, Any]) -> dict[str, Any]:
        key = state["rng"]["key"].copy()
        key[0] ^= 1
        return {**state, "rng": {**state["rng"], "key": key}}

    rewrite_checkpoint(url, 2, advance)
    study = optuna.load_study(study_name=STUDY, storage=url)
    report = verify(study, TPESampler(seed=7, n_startup_trials=4))

    assert report.problems == []  # validly sealed: only the replay can tell
    assert report.divergence is not None
    assert report.divergence.trial_number == 2 and report.divergence.param is None
    assert report.trials_replayed == 2


def test_a_tampered_checkpoint_is_reported_and_the_replay_is_not_run(url: str) -> None:
    interrupted_run(url, lambda: TPESampler(seed=7, n_startup_trials=4))
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                checkpoints.update()
                .where(checkpoints.c.logical_number == 3)
                .values(checksum="sha256:" + "A" * 43)
            )
    finally:
        engine.dispose()
    study = optuna.load_study(study_name=STUDY, storage=url)

    report = verify(study, TPESampler(seed=7, n_startup_trials=4))

    assert not report.ok
    assert [(p.kind, p.trial_number) for p in report.problems] == [("corrupt", 3)]
    assert report.replayed_stream is None
    assert any("replay not run" in note for note in report.notes)


def test_without_a_sampler_only_the_integrity_pass_runs(url: str) -> None:
    study = interrupted_run(url, lambda: TPESampler(seed=7), n_trials=5)
    report = verify(study)
    assert report.ok and report.checkpoints_checked == 6 and report.trials_replayed == 0
    assert any("pass the sampler" in note for note in report.notes)


def test_signed_checkpoints_need_the_key(url: str) -> None:
    key = "k" * 24
    study = open_study(url, TPESampler(seed=1), signing_key=key)
    study.optimize(objective, n_trials=3, catch=(ValueError,))

    assert verify(study, TPESampler(seed=1), signing_key=key).ok
    unchecked = verify(study, TPESampler(seed=1))
    assert {p.kind for p in unchecked.problems} == {"signature"}


def test_a_study_of_several_workers_is_checked_but_not_replayed(url: str) -> None:
    open_study(url, TPESampler(seed=1), worker_id="a").optimize(objective, n_trials=2)
    open_study(url, TPESampler(seed=1), worker_id="b").optimize(objective, n_trials=2)
    report = verify(optuna.load_study(study_name=STUDY, storage=url), TPESampler(seed=1))
    assert report.ok and report.streams == ["a", "b"] and report.checkpoints_checked == 6
    assert any("2 streams" in note for note in report.notes)


def with_a_reporting_attempt(url: str, objective: Any) -> optuna.Study:
    """Two trials, then one whose process "dies" after reporting, then its retry and one more."""
    study = open_study(url, TPESampler(seed=2))
    study.optimize(objective, n_trials=2)
    attempt = study.ask()
    objective(attempt)
    del study, attempt
    gc.collect()
    study = open_study(url, TPESampler(seed=2))
    study.optimize(objective, n_trials=2)
    return optuna.load_study(study_name=STUDY, storage=url)


def test_a_retry_that_reports_other_values_than_its_attempt_shows_a_random_objective(
    url: str,
) -> None:
    noise = iter([0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0])

    def noisy(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5.0, 5.0)
        trial.report(x + next(noise), 0)  # not a function of x alone
        return x

    study = with_a_reporting_attempt(url, noisy)
    report = verify(study, TPESampler(seed=2))

    assert report.ok  # the sampler is not at fault
    attempt, retry = (study.trials[n].intermediate_values[0] for n in (2, 3))
    assert [n for n in report.notes if "not deterministic" in n] == [
        "the objective is not deterministic: trial 3 repeated interrupted trial 2 with the same "
        f"parameters but reported {retry!r} at step 0 where it had reported {attempt!r}; "
        "resumes cannot be exact until it is (see audit_determinism)"
    ]


def test_a_deterministic_objective_gets_no_such_note(url: str) -> None:
    def steady(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5.0, 5.0)
        trial.report(x * 2, 0)
        return x

    study = with_a_reporting_attempt(url, steady)
    report = verify(study, TPESampler(seed=2))

    assert study.trials[3].system_attrs["retry_history"] == [2]  # a retry was compared
    assert 0 in study.trials[2].intermediate_values
    assert report.ok and not [n for n in report.notes if "deterministic" in n]
