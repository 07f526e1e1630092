"""trial_checkpoint with an Optuna artifact store, and files or directories saved with a state.

The database keeps a sealed reference and digest; the artifact store keeps the bulk in two
slots per logical trial, so that a save replaces the previous one atomically.
"""

from __future__ import annotations

import gc
import io
from pathlib import Path
import tarfile
from typing import Any

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.samplers import RandomSampler
from optuna.storages import BaseStorage
from optuna.storages import InMemoryStorage
import pytest
import sqlalchemy as sa

from optuna_checkpoint import CheckpointError
from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import CorruptCheckpointError
from optuna_checkpoint import trial_checkpoint
from optuna_checkpoint import uninterrupted_trials
from optuna_checkpoint.stores._sql_schema import trial_states
from optuna_checkpoint.tools._trial_checkpoint import _unpack_path


STEPS = 5
WIDTH = 1 << 17  # 1 MB of float64 weights: far over what the database row should hold


def objective_with(store: FileSystemArtifactStore, stop: int = STEPS) -> Any:
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        ckpt = trial_checkpoint(trial, artifact_store=store)
        state = ckpt.load()
        start, w = (0, np.zeros(WIDTH)) if state is None else (state["step"], state["w"])
        for step in range(start, stop):
            w = w + x * (step + 1)
            trial.report(float(w[0]), step)
            ckpt.save({"step": step + 1, "w": w})
        return float(w.sum())

    return objective


def open_study(storage: str | BaseStorage) -> optuna.Study:
    return optuna.create_study(
        study_name="t",
        storage=storage,
        load_if_exists=True,
        sampler=CheckpointingSampler(RandomSampler(seed=3)),
    )


def abandon(storage: str | BaseStorage, objective: Any) -> None:
    """Run a trial's objective and leave the trial RUNNING, as a process killed there would."""
    study = open_study(storage)
    trial = study.ask()
    objective(trial)
    del study, trial
    gc.collect()


def artifacts(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def row_payload_sizes(url: str) -> list[int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return [len(p) for (p,) in connection.execute(sa.select(trial_states.c.payload))]
    finally:
        engine.dispose()


@pytest.fixture
def store(tmp_path: Path) -> FileSystemArtifactStore:
    root = tmp_path / "artifacts"
    root.mkdir()
    return FileSystemArtifactStore(root)


def test_a_retry_continues_from_weights_kept_in_the_artifact_store(
    store: FileSystemArtifactStore, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    abandon(url, objective_with(store, stop=3))
    # The database row holds a reference, not the megabyte of weights.
    assert all(size < 1000 for size in row_payload_sizes(url))
    assert len(artifacts(store._base_path)) == 2  # saves alternate between two slots
    resumed = open_study(url)
    resumed.optimize(objective_with(store), n_trials=2)
    plain = open_study(InMemoryStorage())
    plain.optimize(objective_with(store), n_trials=2)
    trials = uninterrupted_trials(resumed)
    assert [(t.params, t.value, t.intermediate_values) for t in trials] == [
        (t.params, t.value, t.intermediate_values) for t in plain.trials
    ]
    # The first trial's slots went when the second finished (its end was stored by then); the
    # second's stay until its end is known to be stored.
    assert len([a for a in artifacts(store._base_path) if "-trial-0-" in a]) == 0


def test_the_in_memory_store_removes_the_artifacts_when_the_trial_ends(
    store: FileSystemArtifactStore,
) -> None:
    open_study(InMemoryStorage()).optimize(objective_with(store, stop=2), n_trials=2)
    assert artifacts(store._base_path) == []


def test_a_torn_upload_into_the_free_slot_leaves_the_saved_state_intact(
    store: FileSystemArtifactStore, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    abandon(url, objective_with(store, stop=2))  # the second save went to slot b
    (slot_a,) = [a for a in artifacts(store._base_path) if a.endswith("-a")]
    (store._base_path / slot_a).write_bytes(b"half an upload")  # killed while uploading
    trial = open_study(url).ask()
    assert trial_checkpoint(trial, artifact_store=store).load()["step"] == 2


@pytest.mark.parametrize("damage", ["altered", "missing"])
def test_an_altered_or_missing_artifact_is_refused(
    damage: str, store: FileSystemArtifactStore, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    abandon(url, objective_with(store, stop=2))
    (slot_b,) = [a for a in artifacts(store._base_path) if a.endswith("-b")]
    path = store._base_path / slot_b
    if damage == "altered":
        body = bytearray(path.read_bytes())
        body[-1] ^= 1
        path.write_bytes(bytes(body))
        expected = r"logical trial 0.*is not what was saved"
    else:
        path.unlink()
        expected = r"logical trial 0.*is missing from the artifact store"
    trial = open_study(url).ask()
    with pytest.raises(CorruptCheckpointError, match=expected):
        trial_checkpoint(trial, artifact_store=store).load()


def test_a_state_in_an_artifact_store_needs_the_store_to_load(
    store: FileSystemArtifactStore, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    abandon(url, objective_with(store, stop=1))
    trial = open_study(url).ask()
    with pytest.raises(CheckpointError, match="pass the same artifact_store to trial_checkpoint"):
        trial_checkpoint(trial).load()


def test_a_state_over_the_database_bound_fits_in_the_artifact_store(
    store: FileSystemArtifactStore, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    big = {"weights": b"\1" * (9 << 20)}
    study = open_study(url)
    trial = study.ask()
    trial_checkpoint(trial, artifact_store=store).save(big)
    del study, trial
    gc.collect()
    retry = open_study(url).ask()
    assert trial_checkpoint(retry, artifact_store=store).load() == big


# -- files and directories -------------------------------------------------------------------


@pytest.mark.parametrize("in_store", [False, True], ids=["in-database", "in-artifact-store"])
@pytest.mark.parametrize("kind", ["file", "directory"])
def test_a_file_or_directory_saved_with_the_state_is_put_back(
    kind: str, in_store: bool, store: FileSystemArtifactStore, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    artifact_store = store if in_store else None
    work = tmp_path / "work"
    work.mkdir()
    target = work / ("model.pt" if kind == "file" else "checkpoint-dir")
    if kind == "file":
        target.write_bytes(b"weights v1")
    else:
        (target / "sub").mkdir(parents=True)
        (target / "config.json").write_text("{}")
        (target / "sub" / "weights.bin").write_bytes(b"\0\1\2")

    study = open_study(url)
    trial = study.ask()
    trial_checkpoint(trial, artifact_store=artifact_store).save({"epoch": 3}, path=target)
    del study, trial
    gc.collect()
    # What the interrupted attempt left behind is replaced by what it saved.
    if kind == "file":
        target.write_bytes(b"written after the save")
    else:
        (target / "stale.txt").write_text("written after the save")

    retry = open_study(url).ask()
    assert trial_checkpoint(retry, artifact_store=artifact_store).load(path=target) == {"epoch": 3}
    if kind == "file":
        assert target.read_bytes() == b"weights v1"
    else:
        found = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
        assert found == ["config.json", "sub", "sub/weights.bin"]
        assert (target / "sub" / "weights.bin").read_bytes() == b"\0\1\2"
    assert artifacts(work) == [target.name]  # no staging left behind


def test_load_with_a_path_when_none_was_saved(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    target = tmp_path / "model.pt"
    study = open_study(url)
    first = study.ask()
    assert trial_checkpoint(first).load(path=target) is None  # nothing saved: untouched
    assert not target.exists()
    trial_checkpoint(first).save({"epoch": 1})
    del study, first
    gc.collect()
    retry = open_study(url).ask()
    with pytest.raises(CheckpointError, match=r"no file or directory was saved"):
        trial_checkpoint(retry).load(path=target)


def test_an_archive_reaching_outside_its_directory_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        data = b"owned"
        info = tarfile.TarInfo("../outside.txt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    with pytest.raises(tarfile.OutsideDestinationError):
        _unpack_path({"kind": "directory", "data": buffer.getvalue()}, tmp_path / "d")
    assert not (tmp_path / "outside.txt").exists()
