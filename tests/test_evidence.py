"""Lost checkpoints are evidence: the resume refuses, and status says why, naming the trials.

A trial's end is never stored without its checkpoint, so finished trials of a stream newer than
its newest checkpoint mean checkpoints were deleted or lost. Resuming from the older state would
leave the trajectory without a word (it did, before). A trial told by a process that did not
run it is the one legitimate exception.
"""

from __future__ import annotations

from collections.abc import Callable
import gc
from pathlib import Path
import pickle

import optuna
from optuna.samplers import TPESampler
from optuna.storages import BaseStorage
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState
import pytest

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import MissingCheckpointError
from optuna_checkpoint.stores._open import existing_store
from optuna_checkpoint.study._trials import INTERRUPTED_ATTR
from optuna_checkpoint.study._trials import TOLD_ELSEWHERE_ATTR
from tests.test_cli import cli


N_TRIALS = 6


def objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", -5.0, 5.0) ** 2


def open_study(storage: str | BaseStorage) -> optuna.Study:
    return optuna.create_study(
        study_name="s",
        storage=storage,
        load_if_exists=True,
        sampler=CheckpointingSampler(TPESampler(seed=5, n_startup_trials=2)),
    )


def delete_checkpoints_of(storage: str | BaseStorage, numbers: list[int]) -> None:
    """Delete the checkpoints of these trials, as a hand or a partial restore might."""
    study = optuna.load_study(study_name="s", storage=storage)
    store = existing_store(study._storage)
    assert store is not None
    trials = study.get_trials(deepcopy=False)
    (stream,) = store.list_streams(_uid(study))
    ids = [trials[n]._trial_id for n in numbers]
    assert store.delete_checkpoints(stream.stream_id, ids) == len(ids)


def _uid(study: optuna.Study) -> str:
    from optuna_checkpoint.study._identity import first_trial
    from optuna_checkpoint.study._identity import study_uid

    storage = study._storage
    return study_uid(study._study_id, study.study_name, first_trial(storage, study._study_id))


def run_and_stop(storage: str | BaseStorage, n_trials: int = N_TRIALS) -> None:
    study = open_study(storage)
    study.optimize(objective, n_trials=n_trials)
    del study
    gc.collect()  # the sampler is gone and its lease released, as when a process ends


STORAGES: dict[str, Callable[[Path], str | BaseStorage]] = {
    "sqlite": lambda tmp_path: f"sqlite:///{tmp_path / 'study.db'}",
    "in-memory": lambda tmp_path: InMemoryStorage(),
}


@pytest.mark.parametrize("kind", STORAGES)
def test_resume_refuses_when_the_newest_checkpoints_are_gone(kind: str, tmp_path: Path) -> None:
    storage = STORAGES[kind](tmp_path)
    run_and_stop(storage)
    delete_checkpoints_of(storage, [4, 5])
    for _ in range(2):  # the evidence stays: every run refuses, none resumes over it
        study = open_study(storage)
        with pytest.raises(MissingCheckpointError) as raised:
            study.optimize(objective, n_trials=1)
        refused = study.trials[-1]
        del study
        gc.collect()
        assert str(raised.value).startswith(
            "trials 4, 5 of stream 'main' finished after the stream's newest checkpoint "
            "(trial 3's) with no checkpoint of their own: checkpoints were lost or deleted."
        )
        assert "start_new_stream=True" in str(raised.value)
        # The trial the refused run had created is closed at once, with the true reason.
        assert refused.state == TrialState.FAIL
        assert refused.system_attrs[INTERRUPTED_ATTR] == (
            "refused: its resume failed (MissingCheckpointError)"
        )


def test_status_names_the_trials_and_says_the_resume_will_refuse(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    run_and_stop(url)
    delete_checkpoints_of(url, [5])
    shown = cli("status", "--storage", url, "--study-name", "s")
    flat = " ".join(shown.stdout.split())
    assert "trial 5 of stream 'main' finished after the stream's newest checkpoint" in flat
    assert "the next run refuses to resume the stream" in flat


def test_an_older_lost_checkpoint_is_no_reason_to_refuse(tmp_path: Path) -> None:
    # Only what comes after the newest checkpoint matters: the resume restores from it.
    url = f"sqlite:///{tmp_path / 'study.db'}"
    run_and_stop(url)
    delete_checkpoints_of(url, [2, 3])
    run_and_stop(url, n_trials=2)
    reference = optuna.create_study(sampler=TPESampler(seed=5, n_startup_trials=2))
    reference.optimize(objective, n_trials=N_TRIALS + 2)
    resumed = optuna.load_study(study_name="s", storage=url).trials
    assert [t.params["x"].hex() for t in resumed] == [
        t.params["x"].hex() for t in reference.trials
    ]


def test_a_trial_told_by_a_copy_of_the_study_is_not_taken_for_lost(tmp_path: Path) -> None:
    # The copy stands for another process (a ProcessPoolExecutor worker): it tells a trial that
    # this stream asked, and writes no checkpoint of the stream for it.
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_study(url)
    study.optimize(objective, n_trials=3)
    trial = study.ask()
    x = trial.suggest_float("x", -5.0, 5.0)
    copy = pickle.loads(pickle.dumps(study))
    copy.tell(trial.number, x**2)
    told = copy.trials[-1]
    assert told.state == TrialState.COMPLETE
    assert TOLD_ELSEWHERE_ATTR in told.system_attrs
    del study, copy, trial
    gc.collect()
    run_and_stop(url, n_trials=1)  # resumes: no error
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 5
