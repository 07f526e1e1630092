"""Format versions and library versions: databases of earlier releases, newer ones, other versions.

Runs on SQLite files and on fresh PostgreSQL and MySQL/MariaDB databases where the table layout
matters; the rest on SQLite.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import pathlib
import subprocess
import sys
from typing import Any

import numpy as np
import optuna
from optuna.samplers import BaseSampler
from optuna.samplers import TPESampler
import pytest
import sqlalchemy as sa

import optuna_checkpoint
from optuna_checkpoint import CheckpointError
from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import CorruptCheckpointError
from optuna_checkpoint import VersionMismatchError
from optuna_checkpoint import uninterrupted_trials
from optuna_checkpoint._logging import ROOT_LOGGER_NAME
from optuna_checkpoint.state._versions import library_versions
from optuna_checkpoint.stores._sql_schema import TABLES_FORMAT
from optuna_checkpoint.stores._sql_schema import UNSEALED_ROWS_UNTIL
from optuna_checkpoint.stores._sql_schema import checkpoints
from optuna_checkpoint.stores._sql_schema import formats
from optuna_checkpoint.stores._sql_schema import interrupted_trials
from optuna_checkpoint.stores._sql_schema import streams
from optuna_checkpoint.stores._sql_schema import trial_claims
from tests.checkpoint_rows import count_rows
from tests.checkpoint_rows import seal_of_row
from tests.checkpoint_rows import seals
from tests.checkpoint_rows import where_of


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5.0, 5.0)
    return x * x + trial.suggest_int("k", 0, 4)


def params_hex(study: optuna.Study) -> list[tuple[str, int]]:
    return params_hex_of(study.trials)


def params_hex_of(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[str, int]]:
    return [(t.params["x"].hex(), t.params["k"]) for t in trials]


def run(url: str, n_trials: int, sampler: BaseSampler | None = None) -> optuna.Study:
    study = optuna.create_study(
        study_name="formats",
        storage=url,
        load_if_exists=True,
        sampler=CheckpointingSampler(TPESampler(seed=3) if sampler is None else sampler),
    )
    study.optimize(objective, n_trials=n_trials)
    return study


def release(study: optuna.Study) -> None:
    """Drop the study and its sampler, releasing the lease as a process that exits would."""
    del study
    gc.collect()


def tables_format(url: str) -> int | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            query = sa.select(formats.c.version).where(formats.c.component == "tables")
            found = connection.execute(query).scalar()
    finally:
        engine.dispose()
    return None if found is None else int(found)


def unsealed_bound(url: str) -> int | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            query = sa.select(formats.c.version).where(formats.c.component == UNSEALED_ROWS_UNTIL)
            found = connection.execute(query).scalar()
    finally:
        engine.dispose()
    return None if found is None else int(found)


def rewrite_checkpoints(url: str, change: Any) -> None:
    """Apply ``change(row, stream) -> dict of new column values`` to every checkpoint row."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            names = {s.stream_id: s for s in connection.execute(streams.select())}
            for row in connection.execute(checkpoints.select()).all():
                values = change(row, names[row.stream_id])
                connection.execute(
                    checkpoints.update()
                    .where(checkpoints.c.checkpoint_id == row.checkpoint_id)
                    .values(**values)
                )
    finally:
        engine.dispose()


def as_release_0_3_wrote_it(row: Any, stream: Any) -> dict[str, Any]:
    """No library versions, and the hex seal over place and payload only."""
    seal = hashlib.sha256(where_of(row, stream).encode() + b"\0" + row.payload).hexdigest()
    return {"checksum": seal, "versions": None}


def written_under(versions: dict[str, str]) -> Any:
    """A change that records other library versions with every checkpoint, sealed validly."""

    def change(row: Any, stream: Any) -> dict[str, Any]:
        recorded = {**json.loads(row.versions), **versions}
        seal = seal_of_row(row, stream, versions=recorded)
        return {"versions": json.dumps(recorded), "checksum": seal}

    return change


def test_a_fresh_database_records_the_current_tables_format(database_url: str) -> None:
    run(database_url, 1)
    assert tables_format(database_url) == TABLES_FORMAT


def test_a_database_of_release_0_3_resumes_exactly_and_is_upgraded(database_url: str) -> None:
    plain = optuna.create_study(sampler=TPESampler(seed=3))
    plain.optimize(objective, n_trials=10)
    release(run(database_url, 6))
    # Back to what 0.3 left: no format table, no versions column, hex seals.
    rewrite_checkpoints(database_url, as_release_0_3_wrote_it)
    engine = sa.create_engine(database_url)
    try:
        formats.drop(engine)
        with engine.begin() as connection:
            connection.exec_driver_sql(f"ALTER TABLE {checkpoints.name} DROP COLUMN versions")
    finally:
        engine.dispose()
    assert all(len(seal) == 64 and ":" not in seal for seal in seals(database_url))

    resumed = run(database_url, 4)

    assert params_hex(resumed) == params_hex(plain)
    assert tables_format(database_url) == TABLES_FORMAT
    assert sum(seal.startswith("sha256:") for seal in seals(database_url)) == 4


def test_unsealed_rows_of_format_3_are_read_and_the_upgrade_bounds_them(database_url: str) -> None:
    plain = optuna.create_study(sampler=TPESampler(seed=3))
    plain.optimize(objective, n_trials=10)
    release(run(database_url, 6))
    # What a release of format 3 left after two kills: trial 6 recorded as interrupted and
    # closed, and its retry, trial 7, left RUNNING; neither row has a seal.
    storage = optuna.storages.RDBStorage(database_url)  # no sampler: nothing claims trials
    study_id = storage.get_study_id_from_name("formats")
    interrupted, orphan = (storage.create_new_trial(study_id) for _ in range(2))
    storage.set_trial_state_values(interrupted, optuna.trial.TrialState.FAIL)
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as connection:
            stream = connection.execute(streams.select()).one()
            for table in (interrupted_trials, trial_claims):
                connection.exec_driver_sql(f"ALTER TABLE {table.name} DROP COLUMN seal")
            connection.execute(formats.delete().where(formats.c.component != "tables"))
            connection.execute(formats.update().values(version=3))
            # As that release wrote them: the tables had no seal column.
            connection.execute(
                interrupted_trials.insert().values(
                    study_uid=stream.study_uid,
                    trial_id=interrupted,
                    study_id=study_id,
                    trial_number=6,
                    logical_number=6,
                    reason="killed",
                    stream_id=stream.stream_id,
                )
            )
            connection.execute(
                trial_claims.insert().values(
                    study_uid=stream.study_uid,
                    trial_id=orphan,
                    study_id=study_id,
                    stream_id=stream.stream_id,
                )
            )
    finally:
        engine.dispose()

    resumed = run(database_url, 4)

    assert params_hex_of(uninterrupted_trials(resumed)) == params_hex(plain)
    assert tables_format(database_url) == TABLES_FORMAT
    assert storage.get_trial(orphan).state == optuna.trial.TrialState.FAIL
    assert unsealed_bound(database_url) == orphan
    # A row without a seal for a later trial was not written by any release: refused.
    later = resumed.trials[9]
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                interrupted_trials.insert().values(
                    study_uid=stream.study_uid,
                    trial_id=later._trial_id,
                    study_id=study_id,
                    trial_number=9,
                    logical_number=7,
                    reason="forged",
                    stream_id=stream.stream_id,
                )
            )
    finally:
        engine.dispose()
    with pytest.raises(CorruptCheckpointError, match=rf"trial 9 .*no seal.*after id {orphan}"):
        uninterrupted_trials(resumed)


def test_tables_of_a_newer_format_are_refused_with_what_to_do(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    release(run(url, 2))
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(formats.update().values(version=TABLES_FORMAT + 1))
    finally:
        engine.dispose()

    with pytest.raises(CheckpointError, match=f"format {TABLES_FORMAT + 1}.*Upgrade"):
        run(url, 1)
    assert count_rows(url) == 2 + 1


def recorded_versions(url: str) -> list[dict[str, str]]:
    """The library versions recorded with each checkpoint, oldest first."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            query = sa.select(checkpoints.c.versions).order_by(checkpoints.c.checkpoint_id)
            return [json.loads(v) for v in connection.execute(query).scalars()]
    finally:
        engine.dispose()


def test_every_checkpoint_records_the_library_versions(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    release(run(url, 3))
    recorded = recorded_versions(url)
    assert len(recorded) == 4
    assert all(v == library_versions() for v in recorded)
    versions = library_versions()
    expected = {"optuna-checkpoint", "optuna", "numpy", "python"}
    assert set(versions) - {"cmaes", "cmaes statistics"} == expected
    assert versions["numpy"] == np.__version__
    assert versions["optuna-checkpoint"] == optuna_checkpoint.__version__
    assert ("cmaes" in versions) == ("cmaes" in sys.modules)  # recorded once CMA-ES loads it


def test_cmaes_is_recorded_once_a_cma_es_sampler_has_loaded_it(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'cma.db'}"
    release(run(url, 2, optuna.samplers.CmaEsSampler(seed=1)))
    assert recorded_versions(url)[-1]["cmaes"] == sys.modules["cmaes"].__version__
    # SciPy is among the test extras, and cmaes reads it through the attribute we look at.
    assert recorded_versions(url)[-1]["cmaes statistics"] == "scipy"


# A fresh interpreter: whether constructing a sampler imports cmaes.
IMPORTS_CMAES = """
import sys
import optuna
from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import CorruptCheckpointError
sampler = optuna.samplers.CmaEsSampler(seed=1)
if sys.argv[1] == "wrapped":
    CheckpointingSampler(sampler)
print("cmaes" in sys.modules)
"""


@pytest.mark.parametrize(("how", "imported"), [("wrapped", "True"), ("bare", "False")])
def test_wrapping_a_cma_es_sampler_imports_cmaes_before_the_study_runs(
    how: str, imported: str
) -> None:
    # Optuna imports cmaes at the first CMA proposal, mid-study, where a Ctrl-C in SciPy's
    # initialization makes cmaes fall back silently; the bare sampler is the control.
    command = [sys.executable, "-c", IMPORTS_CMAES, how]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == imported


# A process whose cmaes could not import SciPy's statistics although SciPy is installed, as
# after a Ctrl-C in SciPy's initialization (pybind11 turns it into this ImportError); Optuna's
# default logging, as a user runs it.
FELL_BACK = """
import sys
import optuna
from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import CorruptCheckpointError


class InterruptedInitialization:
    def find_spec(self, name, path=None, target=None):
        if name == "scipy.stats":
            raise ImportError("initialization failed")


sys.meta_path.insert(0, InterruptedInitialization())
sampler = CheckpointingSampler(optuna.samplers.CmaEsSampler(seed=1, with_margin=True))
study = optuna.create_study(study_name="margin", storage=sys.argv[1], sampler=sampler)
study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_int("k", 0, 3), n_trials=3)
"""


def test_a_process_whose_cmaes_fell_back_says_so_and_its_resume_warns(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'margin.db'}"
    command = [sys.executable, "-c", FELL_BACK, url]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "cmaes is computing with its own statistics although SciPy is installed" in (
        result.stderr
    )
    assert recorded_versions(url)[-1]["cmaes statistics"] == "built-in"

    # Resumed here, where cmaes has SciPy: the difference is named, not passed over.
    study = optuna.load_study(
        study_name="margin",
        storage=url,
        sampler=CheckpointingSampler(optuna.samplers.CmaEsSampler(seed=1, with_margin=True)),
    )
    with caplog.at_level(logging.WARNING, logger=ROOT_LOGGER_NAME):
        study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_int("k", 0, 3), 1)
    release(study)
    assert "cmaes statistics built-in -> scipy" in caplog.text
    assert "computing with its own statistics" not in caplog.text  # this process has SciPy


def test_a_resume_under_other_versions_warns_naming_each_change(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    plain = optuna.create_study(sampler=TPESampler(seed=3))
    plain.optimize(objective, n_trials=6)
    release(run(url, 3))
    with caplog.at_level(logging.WARNING, logger=ROOT_LOGGER_NAME):
        release(run(url, 1))  # control: same versions, no warning
    assert "library versions" not in caplog.text

    rewrite_checkpoints(url, written_under({"optuna": "4.9.0", "numpy": "1.26.4"}))
    with caplog.at_level(logging.WARNING, logger=ROOT_LOGGER_NAME):
        resumed = run(url, 2)

    assert f"optuna 4.9.0 -> {optuna.__version__}" in caplog.text
    assert f"numpy 1.26.4 -> {np.__version__}" in caplog.text
    assert "cmaes" not in caplog.text and "python" not in caplog.text
    assert params_hex(resumed) == params_hex(plain)  # a warning, not a change of trajectory


class Walk(BaseSampler):
    """A sampler without a state adapter: checkpointed by pickling, when allowed."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.RandomState(seed)

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        return distribution.to_external_repr(
            self._rng.uniform(distribution.low, distribution.high)
            if isinstance(distribution, optuna.distributions.FloatDistribution)
            else self._rng.randint(distribution.low, distribution.high + 1)
        )


def run_walk(url: str, n_trials: int) -> optuna.Study:
    study = optuna.create_study(
        study_name="walk",
        storage=url,
        load_if_exists=True,
        sampler=CheckpointingSampler(Walk(5), allow_pickle=True),
    )
    study.optimize(objective, n_trials=n_trials)
    return study


def test_pickled_state_from_another_python_is_refused(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    release(run_walk(url, 2))
    this_python = library_versions()["python"]
    rewrite_checkpoints(url, written_under({"python": this_python + "1"}))  # same minor
    release(run_walk(url, 1))  # control: a patch release of Python is fine

    rewrite_checkpoints(url, written_under({"python": "3.1.0"}))
    with pytest.raises(VersionMismatchError, match=r"Python 3\.1\.0.*start_new_stream=True"):
        run_walk(url, 1)
