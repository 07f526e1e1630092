"""trial_checkpoint: the objective's own state, per logical trial, across the attempts of a trial.

A trial is interrupted here as the other unit tests do it: started with ``study.ask()``, run for
some steps, then left RUNNING while its sampler is collected (its lease released, as when a
process dies); a new sampler on the same storage then resumes and retries it. Real kills are in
``tests/kill_fuzz/test_trial_checkpoint_kill_fuzz.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
import gc
import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.samplers import RandomSampler
from optuna.storages import BaseStorage
from optuna.storages import InMemoryStorage
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import pytest
import sqlalchemy as sa

from optuna_checkpoint import CheckpointError
from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import CorruptCheckpointError
from optuna_checkpoint import SignatureError
from optuna_checkpoint import trial_checkpoint
from optuna_checkpoint import uninterrupted_trials
from optuna_checkpoint.record._trial_states import logical_trial_of
from optuna_checkpoint.state._rows import claim_fields
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.stores._sql_schema import TABLES_FORMAT
from optuna_checkpoint.stores._sql_schema import formats
from optuna_checkpoint.stores._sql_schema import trial_claims
from optuna_checkpoint.stores._sql_schema import trial_states
from optuna_checkpoint.study._positions import POSITION_ATTR
from tests.test_cli import cli
from tests.test_cli import rows


SEED = 5
STEPS = 6
KEY_A = "a" * 32
KEY_B = "b" * 32


def value_at(x: float, step: int) -> float:
    return (x - 0.3) ** 2 + 1.0 / (step + 1)


def run_steps(trial: optuna.Trial, stop: int = STEPS) -> float:
    """The objective: load, then report and save each step from where the state says."""
    x = trial.suggest_float("x", 0.0, 1.0)
    ckpt = trial_checkpoint(trial)
    state = ckpt.load()
    start, w = (0, np.zeros(3)) if state is None else (state["step"], state["w"])
    for step in range(start, stop):
        w = w + x * (step + 1)
        trial.report(value_at(x, step), step)
        ckpt.save({"step": step + 1, "w": w})
    return float(w.sum())


def open_study(storage: str | BaseStorage, **options: Any) -> optuna.Study:
    return optuna.create_study(
        study_name="t",
        storage=storage,
        load_if_exists=True,
        sampler=CheckpointingSampler(RandomSampler(seed=SEED), **options),
    )


def abandon(storage: str | BaseStorage, steps: int, **options: Any) -> None:
    """Run ``steps`` steps of a trial and leave it RUNNING, as a process killed there would."""
    study = open_study(storage, **options)
    trial = study.ask()
    run_steps(trial, stop=steps)
    del study, trial
    gc.collect()


def reseal_claims(url: str, key: str | None) -> None:
    """Seal every claim of the database at ``url`` under ``key``, as a re-keying would."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            for row in connection.execute(trial_claims.select()).all():
                fields = claim_fields(row.study_uid, row.trial_id, row.stream_id)
                seal = Sealer(None if key is None else key.encode()).seal_row(fields)
                connection.execute(
                    trial_claims.update()
                    .where(
                        trial_claims.c.study_uid == row.study_uid,
                        trial_claims.c.trial_id == row.trial_id,
                    )
                    .values(seal=seal)
                )
    finally:
        engine.dispose()


def state_rows(url: str) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(trial_states.select()).all())
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | BaseStorage]:
    """A SQLite file (the SQL store) or an in-memory storage (the attribute store)."""
    yield f"sqlite:///{tmp_path / 's.db'}" if request.param == "sqlite" else InMemoryStorage()


# -- the API ---------------------------------------------------------------------------------


def test_retry_continues_from_the_newest_save_with_the_intermediate_values_so_far(
    storage: str | BaseStorage,
) -> None:
    abandon(storage, steps=4)
    resumed = open_study(storage)
    loaded: list[Any] = []

    def objective(trial: optuna.Trial) -> float:
        loaded.append(trial_checkpoint(trial).load())
        return run_steps(trial)

    resumed.optimize(objective, n_trials=1)
    plain = open_study(InMemoryStorage())  # uninterrupted
    plain.optimize(run_steps, n_trials=1)

    assert loaded[0]["step"] == 4
    [retry] = uninterrupted_trials(resumed)
    [expected] = plain.trials
    assert retry.params == expected.params
    assert retry.value == expected.value
    assert retry.intermediate_values == expected.intermediate_values


def test_first_attempt_loads_none_and_load_repeats_itself_as_fresh_copies(
    storage: str | BaseStorage,
) -> None:
    abandon(storage, steps=2)
    study = open_study(storage)
    trial = study.ask()
    first, again = trial_checkpoint(trial).load(), trial_checkpoint(trial).load()
    first["w"][0] = 99.0
    assert again["step"] == 2 and again["w"][0] != 99.0
    assert trial_checkpoint(trial).load()["w"][0] != 99.0
    fresh = study.ask()  # a new logical trial
    assert trial_checkpoint(fresh).load() is None


def test_load_after_the_attempts_own_save_returns_none(storage: str | BaseStorage) -> None:
    abandon(storage, steps=2)
    trial = open_study(storage).ask()
    trial_checkpoint(trial).save({"step": 0})
    assert trial_checkpoint(trial).load() is None


def test_a_second_retry_loads_what_the_first_retry_saved(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    abandon(url, steps=2)
    abandon(url, steps=4)  # the first retry, interrupted again after two more steps
    study = open_study(url)
    trial = study.ask()
    assert trial_checkpoint(trial).load()["step"] == 4
    frozen = study._storage.get_trial(trial._trial_id)
    assert frozen.system_attrs["failed_trial"] == 0
    x = study.trials[0].params["x"]
    assert frozen.intermediate_values == {s: value_at(x, s) for s in range(4)}


def test_floats_ints_and_bytes_round_trip_exactly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    state = {
        "f": [0.1, -0.0, float("inf"), 5e-324],
        "i": 2**100,
        "b": b"\x00\xff",
        "t": (1, "two", None, True),
        "a": np.arange(4, dtype=np.int64),
    }
    study = open_study(url)
    trial_checkpoint(study.ask()).save(state)
    del study
    gc.collect()
    loaded = trial_checkpoint(open_study(url).ask()).load()
    assert [v.hex() for v in loaded["f"]] == [v.hex() for v in state["f"]]
    assert (loaded["i"], loaded["b"], loaded["t"]) == (state["i"], state["b"], state["t"])
    assert loaded["a"].dtype == np.int64 and list(loaded["a"]) == [0, 1, 2, 3]


def test_an_unwrapped_sampler_is_refused_with_the_advice_to_wrap_it() -> None:
    study = optuna.create_study(sampler=RandomSampler(seed=SEED))
    with pytest.raises(CheckpointError, match=r"wrap it.*CheckpointingSampler\(RandomSampler"):
        trial_checkpoint(study.ask())


def test_journal_storage_is_refused_naming_what_to_use(tmp_path: Path) -> None:
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    trial = open_study(storage).ask()
    with pytest.raises(CheckpointError, match=r"not supported on JournalStorage.*sqlite:///"):
        trial_checkpoint(trial)


# -- identity --------------------------------------------------------------------------------


def frozen(number: int, **system_attrs: Any) -> FrozenTrial:
    return FrozenTrial(
        number=number,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=None,
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={},
        system_attrs=system_attrs,
        intermediate_values={},
        trial_id=100 + number,
    )


def test_logical_trial_is_the_first_attempt_repeated_else_the_trials_own_number() -> None:
    assert logical_trial_of(frozen(7), deterministic=False) == 7
    retry = frozen(9, failed_trial=7, retry_history=[7, 8])
    assert logical_trial_of(retry, deterministic=False) == 7


def test_logical_trial_is_the_position_in_deterministic_mode() -> None:
    assert logical_trial_of(frozen(9, **{POSITION_ATTR: 4}), deterministic=True) == 4
    assert logical_trial_of(frozen(9, failed_trial=2), deterministic=True) == 9


# -- atomic replace and retention ------------------------------------------------------------


def test_save_replaces_the_state_in_one_row(database_url: str) -> None:
    study = open_study(database_url)
    trial = study.ask()
    run_steps(trial, stop=3)
    [row] = state_rows(database_url)
    assert (row.logical_trial, row.trial_id) == (0, trial._trial_id)
    study.tell(trial, 1.0)
    assert state_rows(database_url) == []


@pytest.mark.parametrize("outcome", [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL])
def test_the_state_is_deleted_when_the_trial_finishes(outcome: TrialState, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = open_study(url)

    def objective(trial: optuna.Trial) -> float:
        run_steps(trial, stop=2)
        assert len(state_rows(url)) == 1
        if outcome == TrialState.PRUNED:
            raise optuna.TrialPruned()
        if outcome == TrialState.FAIL:
            raise ValueError("a genuine failure")
        return 1.0

    study.optimize(objective, n_trials=1, catch=(ValueError,))
    assert study.trials[0].state == outcome
    assert state_rows(url) == []


def test_keep_trial_checkpoints_keeps_the_state_of_a_finished_trial(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    open_study(url, keep_trial_checkpoints=True).optimize(run_steps, n_trials=2)
    assert sorted(r.logical_trial for r in state_rows(url)) == [0, 1]


def test_the_state_of_a_trial_cut_off_by_ctrl_c_is_kept_for_its_retry(
    storage: str | BaseStorage,
) -> None:
    def interrupted(trial: optuna.Trial) -> float:
        run_steps(trial, stop=3)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        open_study(storage).optimize(interrupted, n_trials=1)
    gc.collect()
    resumed = open_study(storage)
    trial = resumed.ask()
    assert trial_checkpoint(trial).load()["step"] == 3


# -- seals and size --------------------------------------------------------------------------


def tamper(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            payload = connection.execute(sa.select(trial_states.c.payload)).scalar_one()
            changed = payload.replace(b'"step"', b'"stop"')
            connection.execute(trial_states.update().values(payload=changed))
    finally:
        engine.dispose()


def test_an_altered_state_is_refused_by_its_seal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    abandon(url, steps=2)
    tamper(url)
    trial = open_study(url).ask()
    with pytest.raises(CorruptCheckpointError, match=r"logical trial 0.*fails its checksum"):
        trial_checkpoint(trial).load()


@pytest.mark.parametrize(
    ("saved_with", "loaded_with", "error"),
    [
        (None, KEY_A, SignatureError),
        (KEY_A, None, SignatureError),
        (KEY_A, KEY_B, CorruptCheckpointError),
    ],
    ids=["unsigned-under-a-key", "signed-without-a-key", "another-key"],
)
def test_the_signing_key_is_honoured(
    saved_with: str | None, loaded_with: str | None, error: type[Exception], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    abandon(url, steps=2, signing_key=saved_with, start_new_stream=True)
    # The abandoned trial's claim is sealed too, and would be refused first: the rows are
    # sealed for the new key here, so that the state's own seal is what is tried.
    reseal_claims(url, loaded_with)
    trial = open_study(url, signing_key=loaded_with, start_new_stream=True).ask()
    with pytest.raises(error, match="logical trial 0"):
        trial_checkpoint(trial).load()


def test_a_signed_state_loads_under_its_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    abandon(url, steps=2, signing_key=KEY_A)
    trial = open_study(url, signing_key=KEY_A).ask()
    assert trial_checkpoint(trial).load()["step"] == 2


def test_a_state_over_the_size_bound_is_refused_naming_both_sizes(tmp_path: Path) -> None:
    trial = open_study(f"sqlite:///{tmp_path / 's.db'}").ask()
    with pytest.raises(CheckpointError, match=r"8,\d{3},\d{3} bytes.*8,388,608 bytes.*artifact"):
        trial_checkpoint(trial).save({"weights": b"\0" * (8 << 20)})


# -- tables ----------------------------------------------------------------------------------


def test_tables_of_format_2_are_upgraded_with_the_trial_states_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    open_study(url).optimize(run_steps, n_trials=1)
    gc.collect()
    engine = sa.create_engine(url)
    try:
        trial_states.drop(engine)
        with engine.begin() as connection:
            connection.execute(
                formats.update().where(formats.c.component == "tables").values(version=2)
            )
    finally:
        engine.dispose()

    abandon(url, steps=2)

    assert len(state_rows(url)) == 1
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            query = sa.select(formats.c.version).where(formats.c.component == "tables")
            assert connection.execute(query).scalar_one() == TABLES_FORMAT
    finally:
        engine.dispose()


# -- status ----------------------------------------------------------------------------------


def test_status_lists_the_saved_states_and_why_they_are_kept(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    open_study(url, keep_trial_checkpoints=True).optimize(run_steps, n_trials=1)
    gc.collect()
    abandon(url, steps=3, keep_trial_checkpoints=True)  # trial 1, cut off after its third save
    shown = cli("status", "--storage", url, "--study-name", "t")
    assert shown.returncode == 0, shown.stderr
    table = shown.stdout[shown.stdout.index("Trial states saved with trial_checkpoint (2, ") :]
    assert [row[:2] + row[3:] for row in rows(table)][:2] == [
        ["0", "0", "kept (keep_trial_checkpoints)"],
        ["1", "1", "the retry of its trial loads it"],
    ]
    report = json.loads(cli("status", "--storage", url, "--study-name", "t", "--json").stdout)
    assert [(s["logical_trial"], s["kept_for"]) for s in report["trial_states"]] == [
        (0, "kept"),
        (1, "retry"),
    ]
    assert all(s["payload_bytes"] > 0 for s in report["trial_states"])


def test_every_store_lists_its_trial_states_without_their_payloads(
    storage: str | BaseStorage,
) -> None:
    study = open_study(storage, keep_trial_checkpoints=True)
    study.optimize(run_steps, n_trials=2)
    attachment = study.sampler._attachment  # type: ignore[attr-defined]
    listed = attachment.store.list_trial_states(attachment.study_uid)
    assert [(s.logical_trial, s.trial_id) for s in listed] == [
        (t.number, t._trial_id) for t in study.trials
    ]
    found = [
        attachment.store.find_trial_state(attachment.study_uid, s.logical_trial) for s in listed
    ]
    assert [s.payload_bytes for s in listed] == [len(r.payload) for r in found if r is not None]
