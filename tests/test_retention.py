"""Retention: which checkpoints are deleted, and that a pruned study still resumes bit for bit."""

from __future__ import annotations

from collections.abc import Callable
import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import TPESampler
from optuna.storages import JournalStorage
from optuna.storages import RDBStorage
from optuna.storages.journal import JournalFileBackend
import pytest

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import MissingCheckpointError
from optuna_checkpoint import Retention
from optuna_checkpoint import uninterrupted_trials
from optuna_checkpoint._logging import ROOT_LOGGER_NAME
from optuna_checkpoint.record._retention import checkpoints_to_delete
from optuna_checkpoint.record._retention import prune_stream
from optuna_checkpoint.resume._resumer import RESUME_LOOKBACK
from optuna_checkpoint.state._rows import SealedRows
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._base import Stream
from optuna_checkpoint.stores._sql import SQLCheckpointStore
from optuna_checkpoint.study._identity import first_trial
from optuna_checkpoint.study._identity import study_uid
from tests.checkpoint_rows import count_rows


class GenuineFailure(Exception):
    pass


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5.0, 5.0)
    k = trial.suggest_int("k", 0, 4)
    if x > 3.0:  # with TPESampler(seed=5), trial 7 is the first to fail
        raise GenuineFailure(x)
    return x * x + k


def params_hex(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[str, int]]:
    return [(t.params["x"].hex(), t.params["k"]) for t in trials]


def plain_run(n_trials: int) -> list[tuple[str, int]]:
    plain = optuna.create_study(sampler=TPESampler(seed=5))
    plain.optimize(objective, n_trials=n_trials, catch=(GenuineFailure,))
    return params_hex(plain.trials)


def opener(url: str, **kwargs: object) -> Callable[[], optuna.Study]:
    def open_study() -> optuna.Study:
        return optuna.create_study(
            study_name="s",
            storage=url,
            load_if_exists=True,
            sampler=CheckpointingSampler(TPESampler(seed=5), **kwargs),
        )

    return open_study


def the_stream(url: str) -> tuple[SQLCheckpointStore, Stream]:
    storage = RDBStorage(url)
    study_id = storage.get_study_id_from_name("s")
    uid = study_uid(study_id, "s", first_trial(storage, study_id))
    store = SQLCheckpointStore.for_storage(storage)
    store.open_study(study_id, uid)
    (stream,) = store.list_streams(uid)
    return store, stream


def ckpt(trial_id: int | None, logical_number: int | None = None) -> Checkpoint:
    logical = (-1 if trial_id is None else trial_id) if logical_number is None else logical_number
    return Checkpoint(trial_id, logical, None, None, "random", b"", "")


# -- the rule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs keep_last, keep_every or both"),
        ({"keep_last": 1}, "keep_last must be at least 2.*restores the checkpoint before it"),
        ({"keep_last": 0, "keep_every": 10}, "keep_last must be at least 2"),
        ({"keep_every": 0}, "keep_every must be at least 1"),
        ({"keep_last": 2.5}, "keep_last must be an integer"),
        ({"keep_every": True}, "keep_every must be an integer"),
    ],
)
def test_retention_refuses_what_would_break_a_resume(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Retention(**kwargs)


def test_retention_keeps_at_least_what_a_resume_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A spy on the store (the database stays real): how far back does a resume read?
    limits: list[int] = []
    resume_point = SQLCheckpointStore.resume_point

    def spy(self: SQLCheckpointStore, uid: str, stream_id: int, *, limit: int) -> Any:
        limits.append(limit)
        return resume_point(self, uid, stream_id, limit=limit)

    monkeypatch.setattr(SQLCheckpointStore, "resume_point", spy)
    opener(f"sqlite:///{tmp_path / 'db.sqlite3'}")().optimize(objective, n_trials=1)
    assert limits == [RESUME_LOOKBACK]

    assert Retention(keep_last=2).newest_kept == 2
    assert Retention(keep_every=50).newest_kept == RESUME_LOOKBACK
    assert Retention(keep_last=100, keep_every=7).newest_kept == 100
    assert Retention(keep_last=3).prune_interval == 8
    assert Retention(keep_last=100).prune_interval == 50


def test_checkpoints_to_delete() -> None:
    stream = [ckpt(t) for t in range(9, -1, -1)] + [ckpt(None)]  # newest first, as listed
    assert checkpoints_to_delete(stream, Retention(keep_last=3)) == [6, 5, 4, 3, 2, 1, 0]
    # keep_every alone still keeps the newest two, which a resume may need.
    assert checkpoints_to_delete(stream, Retention(keep_every=4)) == [7, 6, 5, 3, 2, 1]
    assert checkpoints_to_delete(stream, Retention(keep_last=3, keep_every=5)) == [6, 4, 3, 2, 1]
    assert checkpoints_to_delete(stream, Retention(keep_last=20)) == []
    # keep_every goes by logical number, not by trial id.
    renumbered = [ckpt(20, 9), ckpt(19, 8), ckpt(17, 7), ckpt(16, 6), ckpt(None)]
    assert checkpoints_to_delete(renumbered, Retention(keep_every=3)) == [17]
    # A prefix of the listing never deletes what the whole listing keeps.
    retention = Retention(keep_last=3, keep_every=4)
    whole = set(checkpoints_to_delete(stream, retention))
    for n in range(len(stream) + 1):
        assert set(checkpoints_to_delete(stream[:n], retention)) <= whole


def test_prune_stream_on_a_real_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    study = opener(url)()
    study.optimize(objective, n_trials=12, catch=(GenuineFailure,))
    store, stream = the_stream(url)
    ids = [t._trial_id for t in study.trials]
    # A hidden trial's checkpoint is not counted among the newest, nor deleted.
    rows = SealedRows(store, stream.study_uid, Sealer(None))
    rows.add_interruptions(study._study_id, [Interruption(ids[2], 2, 2, "test", stream.stream_id)])
    assert prune_stream(rows, stream, Retention(keep_last=3), dry_run=True) == 8
    assert count_rows(url) == 13
    assert prune_stream(rows, stream, Retention(keep_last=3)) == 8
    assert prune_stream(rows, stream, Retention(keep_last=3)) == 0
    listed = store.latest_checkpoints(stream.stream_id, excluding=(), limit=100)
    assert [c.trial_id for c in listed] == [ids[11], ids[10], ids[9], ids[2], None]


# -- in the sampler --------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_sampler_with_retention_is_transparent_bounded_and_resumes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    retention = Retention(keep_last=3)
    bound = retention.keep_last + retention.prune_interval + 1  # + 1: the initial checkpoint
    open_study = opener(url, retention=retention)

    first = open_study()
    first.optimize(objective, n_trials=24, catch=(GenuineFailure,))
    assert count_rows(url) <= bound < 24 + 1
    del first  # a new process would start from here: a fresh sampler and study object
    resumed = open_study()
    resumed.optimize(objective, n_trials=16, catch=(GenuineFailure,))

    assert params_hex(resumed.trials) == plain_run(40)
    assert count_rows(url) <= bound
    store, stream = the_stream(url)
    summary = store.stream_summary(stream.stream_id)
    assert summary.newest_trial_id == resumed.trials[-1]._trial_id
    assert summary.checkpoints >= retention.keep_last + 1


def test_sampler_keeps_every_mth_checkpoint(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    retention = Retention(keep_every=5)
    study = opener(url, retention=retention)()
    study.optimize(objective, n_trials=40, catch=(GenuineFailure,))
    store, stream = the_stream(url)
    kept = [
        c.logical_number
        for c in store.latest_checkpoints(stream.stream_id, excluding=(), limit=100)
    ]
    every = [n for n in kept if n % 5 == 0]
    assert every == [35, 30, 25, 20, 15, 10, 5, 0]
    # Besides those and the initial one, only the checkpoints since the last pruning.
    others = [n for n in kept if n % 5 and n >= 0]
    assert others == sorted(others, reverse=True)
    assert 0 < len(others) <= retention.newest_kept + retention.prune_interval
    assert kept[-1] == -1


def test_keep_last_two_is_enough_after_a_failed_last_trial_and_is_needed(
    tmp_path: Path,
) -> None:
    """The newest checkpoint is a FAIL trial's; a resume falls back to the one before it."""
    expected = plain_run(16)

    def resumed_after(damage: Callable[[SQLCheckpointStore, Stream], None], name: str) -> list:
        url = f"sqlite:///{tmp_path / name}"
        first = opener(url)()
        first.optimize(objective, n_trials=8, catch=(GenuineFailure,))
        assert first.trials[-1].state == optuna.trial.TrialState.FAIL
        del first
        damage(*the_stream(url))  # what `optuna-checkpoint prune` may do between two runs
        resumed = opener(url)()
        resumed.optimize(objective, n_trials=9, catch=(GenuineFailure,))  # 1 retry + 8 more
        return params_hex(uninterrupted_trials(resumed))

    def prune(store: SQLCheckpointStore, stream: Stream) -> None:
        rows = SealedRows(store, stream.study_uid, Sealer(None))
        assert prune_stream(rows, stream, Retention(keep_last=2)) == 6

    def drop_the_one_before_the_newest(store: SQLCheckpointStore, stream: Stream) -> None:
        _, before = store.latest_checkpoints(stream.stream_id, excluding=(), limit=2)
        assert before.trial_id is not None
        assert store.delete_checkpoints(stream.stream_id, [before.trial_id]) == 1

    assert resumed_after(prune, "kept.sqlite3") == expected
    # Control: without the checkpoint before the failed trial, the resume would restore an
    # older state; the trial that checkpoint belonged to is evidence, so it refuses instead.
    with pytest.raises(MissingCheckpointError, match=r"trial 6 of stream 'main'"):
        resumed_after(drop_the_one_before_the_newest, "dropped.sqlite3")


def test_retention_is_ignored_with_a_warning_on_a_journal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    sampler = CheckpointingSampler(TPESampler(seed=5), retention=Retention(keep_last=2))
    study = optuna.create_study(storage=storage, sampler=sampler)
    with caplog.at_level(logging.WARNING, logger=ROOT_LOGGER_NAME):
        study.optimize(objective, n_trials=10, catch=(GenuineFailure,))
    warnings = [r.getMessage() for r in caplog.records if "retention is ignored" in r.getMessage()]
    assert len(warnings) == 1 and "not supported for JournalStorage" in warnings[0]
    assert params_hex(study.trials) == plain_run(10)


def test_retention_in_memory() -> None:
    # The attribute store (in memory, and behind the gRPC proxy) keeps its newest four anyway.
    sampler = CheckpointingSampler(TPESampler(seed=5), retention=Retention(keep_last=2))
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=16, catch=(GenuineFailure,))
    assert params_hex(study.trials) == plain_run(16)
    attachment = sampler._attachment
    assert attachment is not None
    listed = attachment.store.latest_checkpoints(
        attachment.stream.stream_id, excluding=(), limit=100
    )
    # Pruned before trial 15 (the 16th hook) down to trials 14 and 13, then trial 15 saved;
    # without retention, the store would hold trial 12's too.
    assert [c.logical_number for c in listed] == [15, 14, 13, -1]
