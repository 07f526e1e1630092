"""Several workers on one study: identities, per-worker random streams, whose trials are whose."""

from __future__ import annotations

import datetime
import pathlib
import signal
import subprocess
import sys
import time

import optuna
from optuna.samplers import RandomSampler
from optuna.samplers import TPESampler
from optuna.trial import TrialState
import pytest

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import StreamOwnedError
from optuna_checkpoint.attach._worker import slot_names
from optuna_checkpoint.attach._worker import worker_id_from_environment
from optuna_checkpoint.resume._interruptions import adoptable_trials
from optuna_checkpoint.stores._sql import SQLCheckpointStore
from optuna_checkpoint.stores._sql import resolve_rdb_storage
from optuna_checkpoint.study._trials import INTERRUPTED_ATTR


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5.0, 5.0)
    y = trial.suggest_float("y", -5.0, 5.0)
    return x * x + y * y


def params_hex(study: optuna.Study) -> list[tuple[str, str]]:
    return [(t.params["x"].hex(), t.params["y"].hex()) for t in study.trials]


# -- identity ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"OPTUNA_CHECKPOINT_WORKER_ID": "gpu-a"}, "gpu-a"),
        ({"OPTUNA_CHECKPOINT_WORKER_ID": "gpu-a", "RANK": "3", "WORLD_SIZE": "4"}, "gpu-a"),
        ({"RANK": "3", "WORLD_SIZE": "4"}, "rank-3"),
        ({"RANK": "0", "WORLD_SIZE": "1"}, None),  # a world of one: nothing to tell apart
        ({"PMI_RANK": "2", "PMI_SIZE": "8"}, "rank-2"),
        ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}, "rank-1"),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, None),  # each sbatch job alone: use slots
        ({"SLURM_PROCID": "5", "SLURM_NTASKS": "16"}, "rank-5"),
        ({"JOB_COMPLETION_INDEX": "7"}, "rank-7"),
        ({"RANK": "x", "WORLD_SIZE": "4"}, None),
    ],
)
def test_worker_id_from_environment(environ: dict[str, str], expected: str | None) -> None:
    assert worker_id_from_environment(environ) == expected


@pytest.mark.parametrize("bad", ["", "  ", "a\nb", "x" * 129])
def test_unusable_worker_id_is_refused_at_construction(bad: str) -> None:
    with pytest.raises(ValueError, match="worker_id"):
        CheckpointingSampler(RandomSampler(seed=0), worker_id=bad)


def test_slots_are_main_then_numbered_workers() -> None:
    names = slot_names()
    assert [next(names) for _ in range(3)] == ["main", "worker-1", "worker-2"]


# -- per-worker random streams -------------------------------------------------------------------


def run_worker(url: str, worker_id: str, n_trials: int, seed: int = 7) -> optuna.Study:
    study = optuna.create_study(
        study_name=f"w-{worker_id}",
        storage=url,
        load_if_exists=True,
        sampler=CheckpointingSampler(TPESampler(seed=seed), worker_id=worker_id),
    )
    study.optimize(objective, n_trials=n_trials)
    return study


def test_main_worker_is_the_sampler_as_given_and_others_are_distinct_and_reproducible(
    tmp_path: pathlib.Path,
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    plain = optuna.create_study(sampler=TPESampler(seed=7))
    plain.optimize(objective, n_trials=12)

    main = run_worker(url, "main", 12)
    assert params_hex(main) == params_hex(plain)  # transparent for the main worker

    first = run_worker(url, "worker-1", 12)
    again = run_worker(f"sqlite:///{tmp_path / 'again.db'}", "worker-1", 12)
    other = run_worker(url, "rank-2", 12)
    assert params_hex(first) == params_hex(again)  # reproducible from the seed and the id
    proposals = [set(params_hex(s)) for s in (main, first, other)]
    assert not proposals[0] & proposals[1] and not proposals[0] & proposals[2]
    assert not proposals[1] & proposals[2]


def test_seeded_workers_on_one_study_propose_no_duplicate_points(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="shared", storage=url)
    for worker in ("a", "b", "c"):  # each worker in turn, as if interleaved by a scheduler
        for _ in range(2):
            study = optuna.load_study(
                study_name="shared",
                storage=url,
                sampler=CheckpointingSampler(RandomSampler(seed=1), worker_id=worker),
            )
            study.optimize(objective, n_trials=3)
            del study
    points = params_hex(optuna.load_study(study_name="shared", storage=url))
    assert len(points) == 18 and len(set(points)) == 18


# -- whose trials are whose ----------------------------------------------------------------------

CHILD = """
import sys, time
import optuna
from optuna_checkpoint import CheckpointingSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)
url, worker = sys.argv[1], sys.argv[2]
sampler = CheckpointingSampler(optuna.samplers.RandomSampler(seed=3), worker_id=worker)
study = optuna.load_study(study_name="shared", storage=url, sampler=sampler)


def objective(trial):
    x = trial.suggest_float("x", -5.0, 5.0)
    y = trial.suggest_float("y", -5.0, 5.0)
    if trial.number >= 2:
        print("RUNNING", trial.number, flush=True)
        time.sleep(60)
    return x * x + y * y


study.optimize(objective, n_trials=3)
"""


def load_as(url: str, worker: str | None) -> optuna.Study:
    sampler = CheckpointingSampler(RandomSampler(seed=3), worker_id=worker)
    return optuna.load_study(study_name="shared", storage=url, sampler=sampler)


def start_child(url: str, worker: str) -> tuple[subprocess.Popen[str], int]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, worker],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline().split()
    if not line:
        child.kill()
        raise AssertionError(child.communicate()[1])
    assert line[0] == "RUNNING"
    return child, int(line[1])


def test_a_resuming_worker_never_touches_another_workers_trials(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="shared", storage=url)
    live, live_trial = start_child(url, "live")
    dead, dead_trial = start_child(url, "dead")
    dead.send_signal(signal.SIGKILL)
    dead.communicate()
    try:
        # Worker "me" starts: one trial of "live" is running, one of "dead" was left behind.
        me = load_as(url, "me")
        me.optimize(objective, n_trials=2)
        by_number = {t.number: t for t in me.trials}
        assert by_number[live_trial].state == TrialState.RUNNING
        assert by_number[dead_trial].state == TrialState.RUNNING  # not ours to close
        assert live.poll() is None

        # The dead worker's own restart closes its trial and retries it; "live" still runs.
        restarted = load_as(url, "dead")
        restarted.optimize(objective, n_trials=1)
        by_number = {t.number: t for t in restarted.trials}
        assert by_number[dead_trial].state == TrialState.FAIL
        assert "died" in by_number[dead_trial].system_attrs[INTERRUPTED_ATTR]
        retry = restarted.trials[-1]
        assert retry.system_attrs["failed_trial"] == dead_trial
        assert retry.params == by_number[dead_trial].params  # the same draw, retried
        assert by_number[live_trial].state == TrialState.RUNNING
        assert live.poll() is None
    finally:
        live.kill()
        live.communicate()


def test_two_live_processes_with_one_worker_id_are_refused(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="shared", storage=url)
    live, _ = start_child(url, "w")
    try:
        study = load_as(url, "w")
        with pytest.raises(StreamOwnedError, match=r"worker id 'w' .* is in use"):
            study.optimize(objective, n_trials=1)
    finally:
        live.kill()
        live.communicate()


def test_a_worker_without_id_takes_the_first_free_slot(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="shared", storage=url)
    live, _ = start_child(url, "main")
    try:
        study = load_as(url, None)
        study.optimize(objective, n_trials=2)
        store = SQLCheckpointStore.for_storage(resolve_rdb_storage(study._storage))  # type: ignore[arg-type]
        sampler = study.sampler
        assert isinstance(sampler, CheckpointingSampler)
        assert sampler._attachment is not None
        assert sampler._attachment.stream.name == "worker-1"
        uid = sampler._attachment.study_uid
        assert [s.name for s in store.list_streams(uid)] == ["main", "worker-1"]
    finally:
        live.kill()
        live.communicate()


# -- trials no stream claimed ---------------------------------------------------------------


def test_unclaimed_trial_is_adopted_only_after_the_claim_window(tmp_path: pathlib.Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    storage = study._storage
    young = storage.get_trial(storage.create_new_trial(study._study_id))
    claimed_later = {young._trial_id: 1}

    started = time.monotonic()
    # Claimed by its process while we wait: not adoptable.
    assert adoptable_trials([young], lambda ids: claimed_later, 0.5) == []
    assert time.monotonic() - started < 0.5

    # Never claimed: adoptable once old enough, and not before.
    started = time.monotonic()
    assert adoptable_trials([young], lambda ids: {}, 1.0) == [young]
    age = datetime.datetime.now() - young.datetime_start  # type: ignore[operator]
    assert age >= datetime.timedelta(seconds=1.0)
    assert time.monotonic() - started < 2.0


# -- threads (n_jobs > 1) ------------------------------------------------------------------------


def rng_key(sampler: CheckpointingSampler) -> str:
    return str(sampler._state.adapter.state_dict())


def test_reseeding_is_reproducible_and_not_from_os_entropy() -> None:
    first, second = (CheckpointingSampler(TPESampler(seed=4)) for _ in range(2))
    before = rng_key(first)
    first.reseed_rng()
    second.reseed_rng()
    assert rng_key(first) == rng_key(second) != before
    first.reseed_rng()
    assert rng_key(first) != rng_key(second)  # each reseed moves on


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_threads_share_one_stream_and_every_trial_is_checkpointed(
    tmp_path: pathlib.Path,
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(
        study_name="threads", storage=url, sampler=CheckpointingSampler(TPESampler(seed=4))
    )
    study.optimize(objective, n_trials=24, n_jobs=4)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    store = SQLCheckpointStore.for_storage(resolve_rdb_storage(study._storage))  # type: ignore[arg-type]
    sampler = study.sampler
    assert isinstance(sampler, CheckpointingSampler) and sampler._attachment is not None
    stream = sampler._attachment.stream
    assert [s.name for s in store.list_streams(stream.study_uid)] == ["main"]
    ids = [t._trial_id for t in study.trials]
    assert {c.stream_id for c in store.claims(stream.study_uid, ids).values()} == {
        stream.stream_id
    }
    assert len(store.latest_checkpoints(stream.stream_id, excluding=(), limit=100)) == 24 + 1

    # A fresh process resumes from the newest of them.
    del study, sampler
    resumed = optuna.load_study(
        study_name="threads", storage=url, sampler=CheckpointingSampler(TPESampler(seed=4))
    )
    resumed.optimize(objective, n_trials=2)
    assert len(resumed.trials) == 26
