"""End to end through the database: a tampered checkpoint row never runs code or goes unnoticed."""

from __future__ import annotations

import gc
import json
import os
import pathlib
import pickle
import struct
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import optuna
from optuna.trial import TrialState
import pytest
import sqlalchemy as sa

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import CorruptCheckpointError
from optuna_checkpoint.state import _codec
from optuna_checkpoint.state._rows import SealedRows
from optuna_checkpoint.state._seal import SIGNING_KEY_ENV
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._open import store_for
from optuna_checkpoint.stores._sql import checkpoints
from optuna_checkpoint.stores._sql import streams
from optuna_checkpoint.study._identity import first_trial
from optuna_checkpoint.study._identity import study_uid
from optuna_checkpoint.tools._fork import fork_study
from optuna_checkpoint.tools._inspect import study_status
from optuna_checkpoint.tools._transfer import export_checkpoints
from tests.checkpoint_rows import seal_of_row
from tests.checkpoint_rows import seals


STUDY = "safe"
N_TRIALS = 4
KEY = "a-key-kept-outside-the-database"

CHILD = """
import sys

import optuna

from optuna_checkpoint import CheckpointingSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)
url, allow_pickle = sys.argv[1], sys.argv[2] == "1"
sampler = CheckpointingSampler(optuna.samplers.RandomSampler(seed=0), allow_pickle=allow_pickle)
study = optuna.load_study(study_name="safe", storage=url, sampler=sampler)
study.optimize(lambda t: t.suggest_float("x", -1.0, 1.0) ** 2, n_trials=1)
print("RESUMED")
"""


class _TouchOnUnpickle:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def malicious_payload(marker: pathlib.Path) -> bytes:
    """A well-formed checkpoint whose RNG entry is a pickle that creates ``marker`` when loaded."""
    blob = pickle.dumps(_TouchOnUnpickle(marker))
    header = json.dumps({"state": {"rng": {"$pickle": 0}}, "blobs": [[0, len(blob)]]}).encode()
    return b"OCKP\x01" + struct.pack("<I", len(header)) + header + blob


def objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", -1.0, 1.0) ** 2


def run_study(url: str, signing_key: str | None = None) -> None:
    sampler = CheckpointingSampler(optuna.samplers.RandomSampler(seed=0), signing_key=signing_key)
    study = optuna.create_study(study_name=STUDY, storage=url, sampler=sampler)
    study.optimize(objective, n_trials=N_TRIALS)
    del study, sampler
    gc.collect()  # releases the lease, so another process may resume at once


def snapshot(url: str) -> list[tuple[int, str, dict[str, Any], list[str] | None]]:
    study = optuna.load_study(study_name=STUDY, storage=url)
    return [
        (
            t.number,
            t.state.name,
            t.params,
            None if t.values is None else [v.hex() for v in t.values],
        )
        for t in study.get_trials(deepcopy=False)
    ]


def latest_checkpoint(engine: sa.Engine) -> tuple[Any, Any]:
    with engine.connect() as connection:
        row = connection.execute(
            checkpoints.select().order_by(checkpoints.c.checkpoint_id.desc()).limit(1)
        ).one()
        stream = connection.execute(
            streams.select().where(streams.c.stream_id == row.stream_id)
        ).one()
    return row, stream


def overwrite(engine: sa.Engine, checkpoint_id: int, **values: Any) -> None:
    with engine.begin() as connection:
        updated = connection.execute(
            checkpoints.update()
            .where(checkpoints.c.checkpoint_id == checkpoint_id)
            .values(**values)
        )
        assert updated.rowcount == 1


def resume_in_child(
    url: str, *, allow_pickle: bool, cwd: pathlib.Path, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != SIGNING_KEY_ENV}
    if key is not None:
        env[SIGNING_KEY_ENV] = key  # as users pass it: outside the database and the code
    return subprocess.run(
        [sys.executable, "-c", CHILD, url, "1" if allow_pickle else "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


def reseal(engine: sa.Engine, row: Any, stream: Any, key: str | None, **values: Any) -> None:
    """Overwrite a checkpoint row and give it a valid seal, as a writer holding ``key`` could."""
    seal = seal_of_row(row, stream, key=None if key is None else key.encode(), **values)
    overwrite(engine, row.checkpoint_id, checksum=seal, **values)


@pytest.fixture
def url(tmp_path: pathlib.Path) -> str:
    return f"sqlite:///{tmp_path / 's.db'}"


def test_lease_is_released_when_the_sampler_is_collected(url: str) -> None:
    run_study(url)
    engine = sa.create_engine(url)
    try:
        _, stream = latest_checkpoint(engine)
    finally:
        engine.dispose()
    assert stream.owner_token is None


def test_malicious_pickle_with_valid_checksum_is_refused_in_a_fresh_process(
    url: str, tmp_path: pathlib.Path
) -> None:
    run_study(url)
    before = snapshot(url)
    marker = tmp_path / "MARKER"
    payload = malicious_payload(marker)
    engine = sa.create_engine(url)
    try:
        row, stream = latest_checkpoint(engine)
        assert row.trial_id != -1  # the checkpoint of the last trial, the one resumed from
        # The seal matches the tampered payload: only the pickle rule stands in the way.
        reseal(engine, row, stream, None, payload=payload)
    finally:
        engine.dispose()

    result = resume_in_child(url, allow_pickle=False, cwd=tmp_path)

    assert result.returncode != 0, result.stdout
    assert "UnsafeCheckpointError" in result.stderr, result.stderr
    assert "RESUMED" not in result.stdout
    assert not marker.exists()
    after = snapshot(url)
    assert after[: len(before)] == before
    assert all(state != "COMPLETE" for _, state, _, _ in after[len(before) :])

    # Control: the row really was accepted up to decoding. Allowing pickles runs it.
    resume_in_child(url, allow_pickle=True, cwd=tmp_path)
    assert marker.exists()


def test_tampered_payload_byte_fails_the_checksum_and_leaves_trials_untouched(url: str) -> None:
    run_study(url)
    before = snapshot(url)
    engine = sa.create_engine(url)
    try:
        row, _ = latest_checkpoint(engine)
        tampered = bytearray(row.payload)
        tampered[-1] ^= 0x01  # the last byte of the RNG key: still decodes, just wrongly
        _codec.decode(bytes(tampered))
        overwrite(engine, row.checkpoint_id, payload=bytes(tampered))
    finally:
        engine.dispose()

    sampler = CheckpointingSampler(optuna.samplers.RandomSampler(seed=0))
    study = optuna.load_study(study_name=STUDY, storage=url, sampler=sampler)
    with pytest.raises(CorruptCheckpointError, match="checksum") as raised:
        study.optimize(objective, n_trials=1)

    assert "start_new_stream=True" in str(raised.value)
    after = snapshot(url)
    assert after[: len(before)] == before
    assert len(after) == len(before) + 1
    assert after[-1][1] != TrialState.COMPLETE.name and after[-1][3] is None


def test_checkpoint_copied_from_another_trial_fails_the_checksum(url: str) -> None:
    run_study(url)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            last, previous = connection.execute(
                checkpoints.select().order_by(checkpoints.c.checkpoint_id.desc()).limit(2)
            ).all()
        # A genuine payload with its genuine checksum, but from the trial before.
        overwrite(engine, last.checkpoint_id, payload=previous.payload, checksum=previous.checksum)
    finally:
        engine.dispose()

    sampler = CheckpointingSampler(optuna.samplers.RandomSampler(seed=0))
    study = optuna.load_study(study_name=STUDY, storage=url, sampler=sampler)
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        study.optimize(objective, n_trials=1)
    assert study.trials[-1].state != TrialState.COMPLETE


def test_start_new_stream_after_a_corrupt_checkpoint_in_the_same_process_continues(
    url: str,
) -> None:
    run_study(url)
    engine = sa.create_engine(url)
    try:
        row, _ = latest_checkpoint(engine)
        overwrite(engine, row.checkpoint_id, checksum="0" * 64)
    finally:
        engine.dispose()
    study = optuna.load_study(
        study_name=STUDY,
        storage=url,
        sampler=CheckpointingSampler(optuna.samplers.RandomSampler(seed=0)),
    )
    with pytest.raises(CorruptCheckpointError, match="start_new_stream=True"):
        study.optimize(objective, n_trials=1)

    study = optuna.load_study(
        study_name=STUDY,
        storage=url,
        sampler=CheckpointingSampler(optuna.samplers.RandomSampler(seed=0), start_new_stream=True),
    )
    study.optimize(objective, n_trials=1)

    assert study.trials[-1].state == TrialState.COMPLETE


@pytest.mark.parametrize(
    "allow_pickle",
    [pytest.param(False, marks=pytest.mark.soak), True],  # True: the harder case
)
def test_with_a_key_a_malicious_pickle_written_by_hand_never_runs(
    url: str, tmp_path: pathlib.Path, allow_pickle: bool
) -> None:
    run_study(url, signing_key=KEY)
    before = snapshot(url)
    marker = tmp_path / "MARKER"
    engine = sa.create_engine(url)
    try:
        row, stream = latest_checkpoint(engine)
        # Whoever can write the database can recompute a plain seal, but not sign.
        reseal(engine, row, stream, None, payload=malicious_payload(marker))
    finally:
        engine.dispose()

    result = resume_in_child(url, allow_pickle=allow_pickle, cwd=tmp_path, key=KEY)

    assert result.returncode != 0, result.stdout
    assert "SignatureError" in result.stderr and "not signed" in result.stderr, result.stderr
    assert not marker.exists()
    assert snapshot(url)[: len(before)] == before

    # Control: the same payload signed with the key (a writer who has it) reaches the pickle.
    engine = sa.create_engine(url)
    try:
        reseal(engine, row, stream, KEY, payload=malicious_payload(marker))
    finally:
        engine.dispose()
    resume_in_child(url, allow_pickle=allow_pickle, cwd=tmp_path, key=KEY)
    assert marker.exists() == allow_pickle


def test_a_signed_study_resumes_only_with_its_key(url: str, tmp_path: pathlib.Path) -> None:
    run_study(url, signing_key=KEY)
    other = resume_in_child(url, allow_pickle=False, cwd=tmp_path, key=KEY + "!")
    missing = resume_in_child(url, allow_pickle=False, cwd=tmp_path)
    right = resume_in_child(url, allow_pickle=False, cwd=tmp_path, key=KEY)

    assert other.returncode != 0 and "signed with another key" in other.stderr, other.stderr
    assert missing.returncode != 0 and SIGNING_KEY_ENV in missing.stderr, missing.stderr
    assert right.returncode == 0 and "RESUMED" in right.stdout, right.stderr
    found = seals(url)
    assert found and all(seal.startswith("hmac-sha256:") for seal in found)


def test_a_forged_trial_end_is_refused_before_it_is_stored(url: str) -> None:
    # The recorded end of a trial is trusted when a resume rolls the trial forward, so it is
    # sealed too: changing the values in the row breaks the seal.
    run_study(url)
    engine = sa.create_engine(url)
    try:
        row, _ = latest_checkpoint(engine)
        overwrite(engine, row.checkpoint_id, trial_values=json.dumps([(-1e9).hex()]))
    finally:
        engine.dispose()
    sampler = CheckpointingSampler(optuna.samplers.RandomSampler(seed=0))
    study = optuna.load_study(study_name=STUDY, storage=url, sampler=sampler)
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        study.optimize(objective, n_trials=1)
    assert all(t.values != [-1e9] for t in study.get_trials())


def move_to_trial(engine: sa.Engine, row: Any, stream: Any, trial_id: int) -> None:
    """Give a checkpoint row another trial id and a valid seal for it, as any writer could."""
    moved = SimpleNamespace(**{**row._asdict(), "trial_id": trial_id})
    overwrite(engine, row.checkpoint_id, trial_id=trial_id, checksum=seal_of_row(moved, stream))


def test_a_checkpoint_of_a_trial_the_study_lacks_is_refused_by_every_reader(url: str) -> None:
    run_study(url)
    engine = sa.create_engine(url)
    try:
        row, stream = latest_checkpoint(engine)
        move_to_trial(engine, row, stream, 9999)
    finally:
        engine.dispose()
    named = r"checkpoint of trial id 9999 \(logical trial \d+\) in stream 'main' names a trial"
    study = optuna.load_study(study_name=STUDY, storage=url)
    last = N_TRIALS - 1  # the trial whose checkpoint was moved

    with pytest.raises(CorruptCheckpointError, match=named + " the study does not have"):
        fork_study(study, optuna.samplers.RandomSampler(seed=0), at_trial=last, to_study_name="f")
    with pytest.raises(CorruptCheckpointError, match=named + " that study 'safe' does not"):
        export_checkpoints(study._storage, STUDY)
    status = study_status(study._storage, STUDY)
    assert not status.resume_exact
    assert any("names trial id 9999" in reason for reason in status.reasons), status.reasons
    resumed = optuna.load_study(
        study_name=STUDY,
        storage=url,
        sampler=CheckpointingSampler(optuna.samplers.RandomSampler(seed=0)),
    )
    with pytest.raises(CorruptCheckpointError, match=named + ".*Restore the database"):
        resumed.optimize(objective, n_trials=1)


def test_an_interruption_of_the_stream_naming_a_trial_the_study_lacks_is_refused(
    url: str,
) -> None:
    run_study(url)
    study = optuna.load_study(study_name=STUDY, storage=url)
    store = store_for(study._storage)
    uid = study_uid(study._study_id, STUDY, first_trial(study._storage, study._study_id))
    store.open_study(study._study_id, uid)
    [stream] = store.list_streams(uid)
    forged = Interruption(9999, N_TRIALS, N_TRIALS, "killed", stream.stream_id)
    SealedRows(store, uid, Sealer(None)).add_interruptions(study._study_id, [forged])

    study.sampler = CheckpointingSampler(optuna.samplers.RandomSampler(seed=0))
    with pytest.raises(CorruptCheckpointError, match=r"trial id 9999\) .*stream 'main' names"):
        study.optimize(objective, n_trials=1)
