"""The data behind ``optuna-checkpoint``: studies, streams, and whether a resume is exact."""

from __future__ import annotations

import datetime
import gc
from pathlib import Path
import time

import optuna
from optuna.samplers import RandomSampler
from optuna.samplers import TPESampler
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
import pytest
import sqlalchemy as sa

from optuna_checkpoint import CheckpointError
from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import Retention
from optuna_checkpoint.attach._attacher import CLAIM_WINDOW
from optuna_checkpoint.exceptions import StudyNotFoundError
from optuna_checkpoint.stores._open import existing_store
from optuna_checkpoint.tools._inspect import list_studies
from optuna_checkpoint.tools._inspect import open_storage
from optuna_checkpoint.tools._inspect import prune_study
from optuna_checkpoint.tools._inspect import study_status
from optuna_checkpoint.tools._retries import retries_due
from tests.checkpoint_rows import tag_told_elsewhere


pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", -5.0, 5.0) ** 2


def wrapped(url: str, name: str = "s", **kwargs: object) -> optuna.Study:
    return optuna.create_study(
        study_name=name,
        storage=url,
        load_if_exists=True,
        sampler=CheckpointingSampler(TPESampler(seed=5), **kwargs),
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'db.sqlite3'}"


def test_an_exact_study(url: str) -> None:
    study = wrapped(url)
    study.optimize(objective, n_trials=6)
    status = study_status(open_storage(url), "s")
    (stream,) = status.streams
    assert (status.trials, status.resume_exact, status.reasons, status.interrupted) == (
        6,
        True,
        [],
        [],
    )
    assert (stream.name, stream.first_trial_number, stream.checkpoints) == ("main", 0, 7)
    assert (stream.newest_trial_number, stream.newest_logical_number) == (5, 5)
    assert stream.payload_bytes > 6 * 1000
    # This process holds the lease while the sampler lives; released once it is gone.
    assert stream.lease_alive and stream.owner_pid is not None
    del study  # as at the end of a process: the lease is released
    gc.collect()
    (stream,) = study_status(open_storage(url), "s").streams
    assert not stream.lease_alive and stream.owner_host is None


def test_several_workers_are_not_one_trajectory(url: str) -> None:
    for worker in ("a", "b"):
        study = wrapped(url, worker_id=worker)
        study.optimize(objective, n_trials=2)
        del study
        gc.collect()
    status = study_status(open_storage(url), "s")
    assert [s.name for s in status.streams] == ["a", "b"]
    assert not status.resume_exact
    assert status.reasons == [
        "2 checkpoint streams (a, b): each worker resumes its own exactly, but which worker ran "
        "which trial depended on timing, so the study as a whole has no single trajectory to "
        "reproduce"
    ]


def test_trials_run_without_the_wrapper(url: str) -> None:
    study = wrapped(url)
    study.optimize(objective, n_trials=3)
    del study
    gc.collect()
    plain = optuna.load_study(study_name="s", storage=url, sampler=RandomSampler(seed=1))
    plain.optimize(objective, n_trials=2)
    status = study_status(open_storage(url), "s")
    assert not status.resume_exact
    (reason,) = status.reasons
    assert reason.startswith("trials 3, 4 finished without being claimed by any checkpoint")


def test_a_finished_trial_without_its_checkpoint(url: str) -> None:
    study = wrapped(url)
    study.optimize(objective, n_trials=4)
    del study
    gc.collect()
    storage = open_storage(url)
    store = existing_store(storage)
    assert store is not None
    stream = study_status(storage, "s").streams[0]
    assert stream.newest_trial_number == 3
    (s,) = store.list_streams(_uid(storage))
    last = optuna.load_study(study_name="s", storage=url).trials[-1]
    assert store.delete_checkpoints(s.stream_id, [last._trial_id]) == 1
    status = study_status(storage, "s")
    assert not status.resume_exact
    (reason,) = status.reasons
    assert reason == (
        "trial 3 of stream 'main' finished after the stream's newest checkpoint (trial 2's) "
        "with no checkpoint of its own: checkpoints were lost or deleted; the next run "
        "refuses to resume the stream"
    )

    # A trial told by a process not attached to its stream says so: no evidence of loss.
    tag_told_elsewhere(url, last._trial_id)
    assert study_status(open_storage(url), "s").reasons == []


def _uid(storage: optuna.storages.BaseStorage) -> str:
    from optuna_checkpoint.study._identity import first_trial
    from optuna_checkpoint.study._identity import study_uid

    study_id = storage.get_study_id_from_name("s")
    return study_uid(study_id, "s", first_trial(storage, study_id))


def test_trials_of_one_stream_at_the_same_time(url: str) -> None:
    def slow(trial: optuna.Trial) -> float:
        time.sleep(0.05)
        return objective(trial)

    study = wrapped(url)
    study.optimize(slow, n_trials=4, n_jobs=2)
    del study
    gc.collect()
    status = study_status(open_storage(url), "s")
    assert status.reasons == [
        "trials of stream 'main' ran at the same time (n_jobs > 1, or several asks before a "
        "tell): their interleaving differs from run to run"
    ]


def test_interrupted_trials_are_listed_and_the_resume_stays_exact(url: str) -> None:
    study = wrapped(url)
    study.optimize(objective, n_trials=2)
    study.ask().suggest_float("x", -5.0, 5.0)  # left RUNNING, as by a killed process
    del study
    gc.collect()
    resumed = wrapped(url)
    resumed.optimize(objective, n_trials=2)
    del resumed
    gc.collect()
    status = study_status(open_storage(url), "s")
    (interrupted,) = status.interrupted
    assert (interrupted.number, interrupted.logical_number, interrupted.stream) == (2, 2, "main")
    assert status.resume_exact, status.reasons
    assert status.streams[0].newest_trial_number == 4
    assert status.streams[0].newest_logical_number == 3


def test_an_unclaimed_running_trial_is_due_for_a_retry_once_its_claim_window_is_over(
    url: str,
) -> None:
    for worker in ("a", "b"):
        study = wrapped(url, worker_id=worker)
        study.optimize(objective, n_trials=2)
        del study
        gc.collect()
    # A process that died before the sampler's first hook: its trial 4 is claimed by no stream.
    optuna.load_study(study_name="s", storage=url, sampler=RandomSampler()).ask()
    storage = open_storage(url)
    store = existing_store(storage)
    assert store is not None
    uid = _uid(storage)
    a, b = store.list_streams(uid)
    trials = storage.get_all_trials(storage.get_study_id_from_name("s"))
    both_idle = {a.stream_id: "the lease was released", b.stream_id: "the lease was released"}
    now = datetime.datetime.now()
    later = now + datetime.timedelta(seconds=CLAIM_WINDOW + 1)

    # Young, it may be a trial a live process is just starting: a resume would wait for it.
    assert retries_due(store, uid, trials, [a, b], both_idle, [], now) == []
    (due,) = retries_due(store, uid, trials, [a, b], both_idle, [], later)
    assert (due.trial_number, due.logical_number, due.stream_id) == (4, 4, None)
    assert due.reason == (
        "its process died while the trial ran; no stream claimed it within the 5 s claim window"
    )
    # With one idle stream, that stream's next resume adopts it.
    (due,) = retries_due(store, uid, trials, [a, b], {a.stream_id: "gone"}, [], later)
    assert due.stream_id == a.stream_id


def test_list_studies_and_a_database_without_checkpoints(url: str) -> None:
    optuna.create_study(study_name="plain", storage=url).optimize(objective, n_trials=2)
    storage = open_storage(url)
    assert existing_store(storage) is None
    status = study_status(storage, "plain")
    assert (status.streams, status.resume_exact) == ([], False)
    assert status.reasons[0].startswith("the study has trials but no checkpoint stream")
    assert [(s.study_name, s.trials, s.streams, s.checkpoints) for s in list_studies(storage)] == [
        ("plain", 2, 0, 0)
    ]
    engine = sa.create_engine(url)
    try:  # looking created none of optuna-checkpoint's tables
        assert not [t for t in sa.inspect(engine).get_table_names() if "checkpoint" in t]
    finally:
        engine.dispose()

    study = wrapped(url)
    study.optimize(objective, n_trials=3)
    optuna.create_study(study_name="empty", storage=url)
    rows = [(s.study_name, s.trials, s.streams, s.checkpoints) for s in list_studies(storage)]
    assert rows == [("plain", 2, 0, 0), ("s", 3, 1, 4), ("empty", 0, 0, 0)]
    assert study_status(storage, "empty").resume_exact  # nothing ran: a first run is exact
    with pytest.raises(
        StudyNotFoundError, match="no study named 'nope'; its studies are: 'empty'"
    ):
        study_status(storage, "nope")


def test_open_storage(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(ValueError, match="there is no SQLite database"):
        open_storage(f"sqlite:///{missing}")
    assert not missing.exists()  # and none was created
    with pytest.raises(ValueError, match="neither a database URL"):
        open_storage(str(missing))
    database = tmp_path / "db.sqlite3"
    optuna.create_study(storage=f"sqlite:///{database}")
    with pytest.raises(ValueError, match="is an SQLite database, not a journal file"):
        open_storage(str(database))
    journal = tmp_path / "journal.log"
    JournalStorage(JournalFileBackend(str(journal))).create_new_study([], "j")
    assert isinstance(open_storage(str(journal)), JournalStorage)

    # A destination (fork's --to-storage) is created, in a directory that exists.
    with pytest.raises(ValueError, match=r"there is no directory .*; create it first"):
        open_storage(f"sqlite:///{tmp_path / 'nowhere' / 'new.db'}", create=True)
    open_storage(f"sqlite:///{tmp_path / 'new.db'}", create=True)
    assert (tmp_path / "new.db").exists()


def test_prune_study_refuses_a_journal(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.log")
    storage = JournalStorage(JournalFileBackend(path))
    study = optuna.create_study(
        study_name="j", storage=storage, sampler=CheckpointingSampler(TPESampler(seed=5))
    )
    study.optimize(objective, n_trials=3)
    with pytest.raises(CheckpointError, match="not supported for JournalStorage"):
        prune_study(open_storage(path), "j", Retention(keep_last=2))
    assert study_status(open_storage(path), "j").streams[0].checkpoints == 4
