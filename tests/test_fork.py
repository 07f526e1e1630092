"""fork_study(): a new study that continues from a trial of another, exactly as it did."""

from __future__ import annotations

import gc
import pathlib
from typing import Any

import optuna
from optuna.samplers import NSGAIISampler
from optuna.samplers import TPESampler
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
import pytest

from optuna_checkpoint import CheckpointError
from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import ConfigMismatchError
from optuna_checkpoint import Retention
from optuna_checkpoint import fork_study


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5.0, 5.0)
    return x * x + trial.suggest_int("k", 0, 4)


def two_objectives(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("x", -5.0, 5.0)
    y = trial.suggest_float("y", -5.0, 5.0)
    return x * x + y, (x - 2) ** 2 - y


def exact(trials: list[optuna.trial.FrozenTrial]) -> list[dict[str, str]]:
    return [{k: float(v).hex() for k, v in t.params.items()} for t in trials]


def run_with_an_interruption(
    url: str, make: Any, n_trials: int, func: Any = objective, **options: Any
) -> optuna.Study:
    def open_study() -> optuna.Study:
        return optuna.create_study(
            study_name="source",
            storage=url,
            load_if_exists=True,
            directions=["minimize"] * (2 if func is two_objectives else 1),
            sampler=CheckpointingSampler(make(), **options),
        )

    study = open_study()
    study.optimize(func, n_trials=3)
    study.ask()  # left RUNNING, as by a process that died in the objective
    del study
    gc.collect()
    study = open_study()
    study.optimize(func, n_trials=n_trials - 3)
    return optuna.load_study(study_name="source", storage=url)


def continue_study(storage: Any, name: str, make: Any, n_trials: int, func: Any) -> list[Any]:
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=CheckpointingSampler(make())
    )
    before = len(study.trials)
    study.optimize(func, n_trials=n_trials)
    return study.trials[before:]


@pytest.fixture
def url(tmp_path: pathlib.Path) -> str:
    return f"sqlite:///{tmp_path / 'f.db'}"


@pytest.mark.parametrize(
    ("make", "func"),
    [
        (lambda: TPESampler(seed=3, n_startup_trials=4), objective),
        # A fork in the middle of a generation: the later generations' parent caches go.
        (lambda: NSGAIISampler(population_size=4, seed=3), two_objectives),
    ],
    ids=["tpe", "nsga2"],
)
def test_a_fork_continues_exactly_as_the_original_did(url: str, make: Any, func: Any) -> None:
    source = run_with_an_interruption(url, make, 14, func)
    # Trial 3 is the interrupted attempt; trial 6 is the 6th of the uninterrupted run.
    report = fork_study(source, make(), at_trial=6, to_study_name="fork")

    assert (report.trials_copied, report.stream) == (6, "main")
    forked = optuna.load_study(study_name="fork", storage=url)
    assert [t.number for t in forked.trials] == list(range(6))
    assert exact(forked.trials) == exact([t for t in source.trials if t.number != 3][:6])

    continued = continue_study(url, "fork", make, 8, func)
    assert exact(continued) == exact(source.trials[7:])

    # Control: the same history without the fork's checkpoint continues differently.
    bare = optuna.create_study(
        storage=url, study_name="bare", directions=source.directions, sampler=make()
    )
    bare.add_trials(forked.trials[:6])
    bare.optimize(func, n_trials=8)
    assert exact(bare.trials[6:]) != exact(source.trials[7:])


def test_a_fork_into_another_kind_of_storage(url: str, tmp_path: pathlib.Path) -> None:
    make = lambda: TPESampler(seed=5, n_startup_trials=3)  # noqa: E731
    source = run_with_an_interruption(url, make, 10)
    journal = JournalStorage(JournalFileBackend(str(tmp_path / "fork.log")))

    fork_study(source, make(), at_trial=4, to_study_name="elsewhere", to_storage=journal)

    continued = continue_study(journal, "elsewhere", make, 5, objective)
    assert exact(continued) == exact(source.trials[5:10])


def test_a_fork_refuses_what_it_cannot_continue_exactly(url: str) -> None:
    make = lambda: TPESampler(seed=5)  # noqa: E731
    source = run_with_an_interruption(url, make, 12, retention=Retention(keep_last=2))

    with pytest.raises(ConfigMismatchError, match=r"seed|_rng"):
        fork_study(source, TPESampler(seed=6), at_trial=10, to_study_name="a")
    with pytest.raises(CheckpointError, match="interrupted attempt"):
        fork_study(source, make(), at_trial=3, to_study_name="b")
    with pytest.raises(
        CheckpointError,
        match=r"no checkpoint.*no trial before it has one; the nearest after it is trial",
    ):
        fork_study(source, make(), at_trial=1, to_study_name="c")  # pruned by retention
    fork_study(source, make(), at_trial=11, to_study_name="d")
    with pytest.raises(CheckpointError, match="already exists"):
        fork_study(source, make(), at_trial=11, to_study_name="d")
    assert {s.study_name for s in optuna.get_all_study_summaries(url)} == {"source", "d"}
