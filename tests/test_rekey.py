"""Re-keying a study: every record re-signed under the new key after a check under the old one.

The study of these tests has every kind of sealed record: checkpoints, an interrupted trial, a
claim per trial, and the state a trial that a "kill" left RUNNING saved (``trial_checkpoint``).
A copy of its file continued under the old key is the reference the re-keyed study, continued
under the new key, must match.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
from typing import Any

import optuna
import pytest
import sqlalchemy as sa

from optuna_checkpoint import CheckpointError
from optuna_checkpoint import CorruptCheckpointError
from optuna_checkpoint import RekeyReport
from optuna_checkpoint import SignatureError
from optuna_checkpoint import rekey_study
from optuna_checkpoint._faults import _ENV as CRASH_ENV
from optuna_checkpoint.cli._main import main
from optuna_checkpoint.state._rows import SealedRows
from optuna_checkpoint.state._seal import SIGNING_KEY_ENV
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._open import store_for
from optuna_checkpoint.stores._sql import checkpoints
from optuna_checkpoint.stores._sql import interrupted_trials
from optuna_checkpoint.stores._sql import trial_claims
from optuna_checkpoint.stores._sql import trial_states
from optuna_checkpoint.study._identity import first_trial
from optuna_checkpoint.study._identity import study_uid
from optuna_checkpoint.tools._rekey import NEW_KEY_ENV
from tests.in_process import run_command
from tests.test_trial_checkpoint import abandon
from tests.test_trial_checkpoint import open_study
from tests.test_trial_checkpoint import run_steps


KEY_A = "a" * 32
KEY_B = "b" * 32


def build(url: str, key: str | None) -> None:
    """Checkpoints, an interruption, claims and a saved trial state, all sealed under ``key``."""
    study = open_study(url, signing_key=key)
    study.optimize(run_steps, n_trials=3)
    del study
    gc.collect()
    abandon(url, steps=2, signing_key=key)  # trial 3, interrupted: retried by the next run
    study = open_study(url, signing_key=key)
    study.optimize(run_steps, n_trials=2)
    del study
    gc.collect()
    abandon(url, steps=1, signing_key=key)  # trial 6: RUNNING, with its saved state


def continued(url: str, key: str | None) -> list[tuple[Any, ...]]:
    """Three more trials under ``key``: params, values and intermediate values, bit for bit."""
    study = open_study(url, signing_key=key)
    before = len(study.trials)
    study.optimize(run_steps, n_trials=3)
    found = [
        (
            t.number,
            t.state.name,
            t.params["x"].hex(),
            None if t.value is None else t.value.hex(),
            sorted((s, v.hex()) for s, v in t.intermediate_values.items()),
        )
        for t in study.trials[before:]
    ]
    del study
    gc.collect()
    return found


def seals(url: str) -> dict[str, list[str | None]]:
    """Every seal in the database, by table."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return {
                table.name: sorted(connection.execute(sa.select(table.c[column])).scalars())
                for table, column in (
                    (checkpoints, "checksum"),
                    (interrupted_trials, "seal"),
                    (trial_claims, "seal"),
                    (trial_states, "checksum"),
                )
            }
    finally:
        engine.dispose()


def schemes(url: str) -> set[str]:
    return {(seal or "").partition(":")[0] for found in seals(url).values() for seal in found}


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param(None, KEY_A, id="signing-on", marks=pytest.mark.soak),
        pytest.param(KEY_A, KEY_B, id="rotation"),
        pytest.param(KEY_A, None, id="signing-off", marks=pytest.mark.soak),
    ],
)
def test_a_rekeyed_study_resumes_exactly_under_the_new_key_only(
    tmp_path: Path, old: str | None, new: str | None
) -> None:
    url, probe = f"sqlite:///{tmp_path / 's.db'}", f"sqlite:///{tmp_path / 'probe.db'}"
    build(url, old)
    shutil.copy(tmp_path / "s.db", tmp_path / "probe.db")
    reference = continued(probe, old)

    report = rekey_study(optuna.storages.get_storage(url), "t", old_key=old, new_key=new)

    assert report == RekeyReport(
        "t", checkpoints=6, interruptions=1, claims=7, trial_states=1, signed=new is not None
    )
    assert schemes(url) == {"hmac-sha256" if new else "sha256"}
    shutil.copy(tmp_path / "s.db", tmp_path / "old.db")
    with pytest.raises((SignatureError, CorruptCheckpointError)):
        continued(f"sqlite:///{tmp_path / 'old.db'}", old)  # the old key no longer fits
    assert continued(url, new) == reference


def test_a_record_that_fails_under_the_old_key_stops_the_rekey_before_any_write(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    build(url, KEY_A)
    # A forger without the key records a COMPLETE trial as interrupted, with a plain digest.
    storage = optuna.storages.get_storage(url)
    study_id = storage.get_study_id_from_name("t")
    uid = study_uid(study_id, "t", first_trial(storage, study_id))
    store = store_for(storage)
    store.open_study(study_id, uid)
    [stream] = store.list_streams(uid)
    trial = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, 1))
    forged = Interruption(trial._trial_id, 1, 1, "forged", stream.stream_id)
    SealedRows(store, uid, Sealer(None)).add_interruptions(study_id, [forged])
    before = seals(url)

    with pytest.raises(SignatureError, match=r"trial 1 .*Nothing was re-signed"):
        rekey_study(storage, "t", old_key=KEY_A, new_key=KEY_B)
    assert seals(url) == before
    # Nor does a wrong old key re-sign anything.
    with pytest.raises(CorruptCheckpointError, match=r"another key.*Nothing was re-signed"):
        rekey_study(storage, "t", old_key=KEY_B, new_key=KEY_A)
    assert seals(url) == before


def test_rekey_refuses_a_study_a_live_worker_holds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = open_study(url, signing_key=KEY_A)
    study.optimize(run_steps, n_trials=1)  # the sampler lives on, holding the lease
    with pytest.raises(CheckpointError, match=r"held by a live process .*stop the study's"):
        rekey_study(study._storage, "t", old_key=KEY_A, new_key=KEY_B)
    assert schemes(url) == {"hmac-sha256"}


def test_rekey_is_refused_on_a_journal(tmp_path: Path) -> None:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log"))
    )
    open_study(storage).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    gc.collect()
    with pytest.raises(CheckpointError, match=r"not supported for JournalStorage.*RDB storage"):
        rekey_study(storage, "t", old_key=None, new_key=KEY_A)


def rekey_command(url: str, env: dict[str, str | None], *args: str) -> Any:
    return run_command(
        main,
        ["rekey", "--storage", url, "--study-name", "t", *args],
        prog_name="optuna-checkpoint",
        env=env,
    )


def test_the_command_reads_both_keys_from_the_environment_and_is_atomic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    build(url, KEY_A)
    before = seals(url)
    done = rekey_command(url, {SIGNING_KEY_ENV: KEY_A, NEW_KEY_ENV: None})
    assert done.returncode == 1
    assert f"set {NEW_KEY_ENV} to the new key" in done.stderr
    done = rekey_command(url, {SIGNING_KEY_ENV: KEY_A, NEW_KEY_ENV: KEY_B}, "--unsigned")
    assert done.returncode == 1 and "choose one" in done.stderr
    # Killed in the middle of writing the new seals: the transaction never committed.
    command = ["rekey", "--storage", url, "--study-name", "t"]
    killed = subprocess.run(
        [sys.executable, "-m", "optuna_checkpoint.cli", *command],
        env={
            **os.environ,
            SIGNING_KEY_ENV: KEY_A,
            NEW_KEY_ENV: KEY_B,
            CRASH_ENV: "inside_reseal:2",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert seals(url) == before

    done = rekey_command(url, {SIGNING_KEY_ENV: KEY_A, NEW_KEY_ENV: KEY_B})
    assert done.returncode == 0, done.stderr
    assert "Re-signed study 't' under the new key: 6 checkpoint(s), 1 interrupted" in done.stdout
    assert seals(url) != before and schemes(url) == {"hmac-sha256"}
    assert KEY_A not in done.stdout + done.stderr and KEY_B not in done.stdout + done.stderr
