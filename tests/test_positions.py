"""Logical positions of a deterministic parallel study, and the view a trial is given."""

from __future__ import annotations

import datetime
import os
import socket
import time

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import pytest

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint._logging import ROOT_LOGGER_NAME
from optuna_checkpoint.exceptions import ConfigMismatchError
from optuna_checkpoint.parallel._schedule import ANNOUNCE_AFTER
from optuna_checkpoint.study._logical import FixedHistory
from optuna_checkpoint.study._positions import POSITION_ATTR
from optuna_checkpoint.study._positions import PositionBook
from optuna_checkpoint.study._positions import logical_trajectory
from optuna_checkpoint.study._trials import INTERRUPTED_ATTR


def _trial(number: int, state: TrialState, **system_attrs: object) -> FrozenTrial:
    finished = state.is_finished()
    return FrozenTrial(
        number=number,
        state=state,
        value=float(number) if state == TrialState.COMPLETE else None,
        datetime_start=datetime.datetime.now(),
        datetime_complete=datetime.datetime.now() if finished else None,
        params={"x": float(number)},
        distributions={"x": FloatDistribution(-100.0, 100.0)},
        user_attrs={},
        system_attrs=dict(system_attrs),
        intermediate_values={},
        trial_id=100 + number,
    )


C, R, F = TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL


def test_a_retry_takes_the_position_of_its_interrupted_attempt() -> None:
    trials = [
        _trial(0, C),
        _trial(1, F, **{INTERRUPTED_ATTR: "killed"}),
        _trial(2, C),
        _trial(3, C, **{POSITION_ATTR: 1}),
    ]
    book = PositionBook.read(trials, hidden=())
    assert sorted(book.settled) == [0, 1, 2]
    assert book.settled[1].number == 3
    assert book.unsettled(3) == [3]  # left free by trial 3
    assert [t.number for t in logical_trajectory(trials, ())] == [0, 3, 2]
    # Past a position not settled yet, nothing is listed: entry n is always position n.
    assert [t.number for t in logical_trajectory(trials[:3], ())] == [0]


def test_a_free_position_is_one_no_live_attempt_holds() -> None:
    trials = [_trial(0, C), _trial(1, R), _trial(2, R), _trial(3, C)]
    book = PositionBook.read(trials, hidden={102})  # trial 2 recorded as interrupted
    alive = {101}
    assert book.free(4, lambda t: t._trial_id in alive) == [2]
    assert book.free(4, lambda t: False) == [1, 2]
    assert [t.number for t in book.orphans(1, lambda t: False)] == [1]


def test_a_duplicate_uses_the_first_attempt_and_the_later_one_is_a_rival() -> None:
    trials = [_trial(0, F, **{INTERRUPTED_ATTR: "x"}), _trial(1, R, **{POSITION_ATTR: 0})]
    trials.append(_trial(2, R, **{POSITION_ATTR: 0}))
    book = PositionBook.read(trials, hidden=())
    assert book.rival(0, trials[2], lambda t: True)
    assert not book.rival(0, trials[1], lambda t: True)


def test_the_fixed_history_lists_by_state_and_renumbers_the_trial() -> None:
    history = PositionBook.read([_trial(0, C), _trial(1, F), _trial(2, R)], ()).history(1)
    current = _trial(7, R)
    fixed = FixedHistory(history, current._trial_id, 5)
    listed = fixed.logical_trials([current], copied=False, states=None)
    assert [(t.number, t.state) for t in listed] == [(0, C), (1, F), (5, R)]
    assert current.number == 7  # not renumbered in place
    complete = fixed.logical_trials([], copied=True, states=(C,))
    assert [t.number for t in complete] == [0]
    assert complete[0] is not history[0]


def test_deterministic_mode_needs_a_seeded_sampler() -> None:
    with pytest.raises(ValueError, match="seeded"):
        CheckpointingSampler(optuna.samplers.TPESampler(), deterministic_workers=2)
    with pytest.raises(ValueError, match="at least 1"):
        CheckpointingSampler(optuna.samplers.TPESampler(seed=1), deterministic_workers=0)


def _study(url: str, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    return optuna.create_study(study_name="s", storage=url, load_if_exists=True, sampler=sampler)


def test_every_worker_of_a_deterministic_study_must_be_alike(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    _study(
        url, CheckpointingSampler(optuna.samplers.TPESampler(seed=1), deterministic_workers=2)
    ).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    others = [
        (
            CheckpointingSampler(optuna.samplers.TPESampler(seed=1), deterministic_workers=3),
            "deterministic_workers=2",
        ),
        (
            CheckpointingSampler(optuna.samplers.TPESampler(seed=2), deterministic_workers=2),
            "configured differently",
        ),
        (
            CheckpointingSampler(optuna.samplers.TPESampler(seed=1), worker_id="other"),
            "deterministic parallel mode",
        ),
    ]
    for sampler, message in others:
        with pytest.raises(ConfigMismatchError, match=message):
            _study(url, sampler).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
        # The trial the refused worker had just created is closed at once, saying why.
        refused = optuna.load_study(study_name="s", storage=url).trials[-1]
        assert refused.state == TrialState.FAIL
        assert refused.system_attrs[INTERRUPTED_ATTR].startswith("refused: ")


def test_the_default_pruner_is_wrapped_in_place(tmp_path: object) -> None:
    from optuna_checkpoint import CheckpointingPruner

    study = _study(
        f"sqlite:///{tmp_path}/s.db",
        CheckpointingSampler(optuna.samplers.RandomSampler(seed=1), deterministic_workers=2),
    )
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert isinstance(study.pruner, CheckpointingPruner)


def test_one_worker_runs_the_same_trajectory_twice(tmp_path: object) -> None:
    def run(name: str) -> list[str]:
        study = _study(
            f"sqlite:///{tmp_path}/{name}.db",
            CheckpointingSampler(
                optuna.samplers.TPESampler(seed=3, n_startup_trials=3), deterministic_workers=2
            ),
        )
        study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=8)
        return [t.params["x"].hex() for t in study.trials]

    assert run("a") == run("b")


def test_a_long_wait_is_logged_naming_the_position_and_its_worker(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    # K = 2 with two threads: the lag is 3, so position 3 may not start before position 0 has
    # finished, and position 0 sleeps past the announcement delay.
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 0:
            time.sleep(ANNOUNCE_AFTER + 1.0)
        return x

    study = _study(
        f"sqlite:///{tmp_path}/s.db",
        CheckpointingSampler(
            optuna.samplers.RandomSampler(seed=1), deterministic_workers=2, worker_id="gpu-0"
        ),
    )
    with caplog.at_level("INFO", logger=ROOT_LOGGER_NAME):
        study.optimize(objective, n_trials=4, n_jobs=2)
    waits = [r.getMessage() for r in caplog.records if "waits for position" in r.getMessage()]
    assert waits == [
        f"Trial 3 (position 3) waits for position 0 to finish, run by worker 'gpu-0' "
        f"(pid {os.getpid()} on {socket.gethostname()})."
    ]
