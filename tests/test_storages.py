"""Every way of handing Optuna an RDB storage, on every server, and living beside Optuna's tools.

Runs on SQLite files and on fresh PostgreSQL and MySQL/MariaDB databases (see ``tests/servers.py``
for how the servers are found and what happens when one is missing).
"""

from __future__ import annotations

from collections.abc import Callable
import json
from pathlib import Path
import subprocess
import sys
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
from optuna.samplers import TPESampler
from optuna.storages import BaseStorage
from optuna.storages import RDBStorage
import pytest
import sqlalchemy as sa

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint.stores._sql_schema import checkpoints
from optuna_checkpoint.stores._sql_schema import metadata
from optuna_checkpoint.stores._sql_schema import streams
from tests.checkpoint_rows import count_rows


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5.0, 5.0)
    k = trial.suggest_int("k", 0, 4)
    return x * x + k


def params_hex(study: optuna.Study) -> list[tuple[str, int]]:
    return [(t.params["x"].hex(), t.params["k"]) for t in study.trials]


def without_returning(url: str) -> RDBStorage:
    """An RDBStorage whose engine acts like a database without INSERT ... RETURNING.

    MySQL proper and SQLite before 3.35 have none; the checkpoint's commit then counts the
    interruptions in a statement of its own.
    """
    storage = RDBStorage(url)
    storage.engine.dialect.insert_returning = False
    return storage


STORAGE_FORMS: dict[str, Callable[[str], str | BaseStorage]] = {
    "url": lambda url: url,
    "RDBStorage": lambda url: RDBStorage(url),
    "RDBStorage-heartbeat": lambda url: RDBStorage(url, heartbeat_interval=60),
    "RDBStorage-no-RETURNING": without_returning,
}


# By default every database and every form, not every pair (the rest under -m soak); pinned:
# the statement without RETURNING on a server that has it.
@pytest.mark.fast_tier({"database_url": "postgresql", "form": "RDBStorage-no-RETURNING"})
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize("form", list(STORAGE_FORMS))
def test_every_storage_form_is_transparent_and_resumes(database_url: str, form: str) -> None:
    plain = optuna.create_study(sampler=TPESampler(seed=5))
    plain.optimize(objective, n_trials=14)

    def open_study() -> optuna.Study:
        return optuna.create_study(
            study_name="forms",
            storage=STORAGE_FORMS[form](database_url),
            load_if_exists=True,
            sampler=CheckpointingSampler(TPESampler(seed=5)),
        )

    first = open_study()
    first.optimize(objective, n_trials=8)
    del first  # a new process would start from here: a fresh sampler and study object
    resumed = open_study()
    resumed.optimize(objective, n_trials=6)

    assert params_hex(resumed) == params_hex(plain)
    assert count_rows(database_url, checkpoints) == 14 + 1


@pytest.mark.soak  # worker processes on every database: about 26 s in all
def test_tables_are_created_once_when_workers_race_to_create_them(database_url: str) -> None:
    # Several fresh processes open the same new database at the same instant.
    code = (
        "import sys, optuna\n"
        "from optuna_checkpoint import CheckpointingSampler\n"
        "optuna.logging.set_verbosity(optuna.logging.WARNING)\n"
        "s = CheckpointingSampler(optuna.samplers.RandomSampler(seed=0))\n"
        "study = optuna.create_study(study_name='race', storage=sys.argv[1],\n"
        "                            load_if_exists=True, sampler=s)\n"
        "study.optimize(lambda t: t.suggest_float('x', 0, 1), n_trials=3)\n"
    )
    optuna.create_study(study_name="race", storage=database_url)  # Optuna's own schema first
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code, database_url, str(i)], stderr=subprocess.PIPE
        )
        for i in range(4)
    ]
    errors = [w.communicate(timeout=120)[1].decode() for w in workers]
    assert [w.returncode for w in workers] == [0] * 4, "\n".join(errors)
    # A worker that finished released its slot, which a later one may have taken over.
    n_streams = count_rows(database_url, streams)
    assert 1 <= n_streams <= 4
    assert count_rows(database_url, checkpoints) == 4 * 3 + n_streams


def test_losing_the_race_for_one_table_still_creates_the_others(database_url: str) -> None:
    # The race above, made certain: a rival process creates the first table between our
    # check for it and our CREATE, leaving the other tables to us.
    first = metadata.sorted_tables[0]
    rival = sa.create_engine(database_url)
    lost: list[str] = []

    def rival_wins(target: sa.Table, connection: sa.Connection, **_: Any) -> None:
        if not lost:
            lost.append(target.name)
            target.create(rival)

    sa.event.listen(first, "before_create", rival_wins)
    try:
        optuna.create_study(
            storage=database_url, sampler=CheckpointingSampler(TPESampler(seed=5))
        ).optimize(objective, n_trials=2)
    finally:
        sa.event.remove(first, "before_create", rival_wins)
        rival.dispose()
    assert lost == [first.name]
    engine = sa.create_engine(database_url)
    try:
        assert all(sa.inspect(engine).has_table(table.name) for table in metadata.sorted_tables)
    finally:
        engine.dispose()


def test_delete_study_leaves_nothing_a_new_study_could_pick_up(database_url: str) -> None:
    sampler: Callable[[], Any] = lambda: CheckpointingSampler(TPESampler(seed=5))  # noqa: E731
    study = optuna.create_study(study_name="gone", storage=database_url, sampler=sampler())
    study.optimize(objective, n_trials=5)
    optuna.delete_study(study_name="gone", storage=database_url)  # must not trip on our tables

    # The same name again (on SQLite, even the same id): a new study, a new stream.
    again = optuna.create_study(study_name="gone", storage=database_url, sampler=sampler())
    again.optimize(objective, n_trials=5)
    plain = optuna.create_study(sampler=TPESampler(seed=5))
    plain.optimize(objective, n_trials=5)
    assert params_hex(again) == params_hex(plain)
    assert count_rows(database_url, streams) == 1  # the deleted study's rows were swept
    assert count_rows(database_url, checkpoints) == 5 + 1


def test_copy_study_works_and_the_copy_starts_its_own_stream(database_url: str) -> None:
    study = optuna.create_study(
        study_name="source",
        storage=database_url,
        sampler=CheckpointingSampler(TPESampler(seed=5)),
    )
    study.optimize(objective, n_trials=5)
    optuna.copy_study(
        from_study_name="source",
        from_storage=database_url,
        to_storage=database_url,
        to_study_name="copy",
    )
    copy = optuna.load_study(
        study_name="copy",
        storage=database_url,
        sampler=CheckpointingSampler(TPESampler(seed=5)),
    )
    copy.optimize(objective, n_trials=2)
    assert [t.params for t in copy.trials[:5]] == [t.params for t in study.trials]
    assert count_rows(database_url, streams) == 2


def test_optuna_storage_upgrade_works_beside_our_tables(database_url: str) -> None:
    study = optuna.create_study(
        study_name="s", storage=database_url, sampler=CheckpointingSampler(TPESampler(seed=5))
    )
    study.optimize(objective, n_trials=2)
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "optuna"),
            "storage",
            "upgrade",
            "--storage",
            database_url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    engine = sa.create_engine(database_url)
    try:
        names = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {t.name for t in metadata.sorted_tables} <= names
    assert len(optuna.load_study(study_name="s", storage=database_url).trials) == 2


def _get(app: Any, path: str) -> tuple[str, Any]:
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = path
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    return status[0], json.loads(body)


def test_optuna_dashboard_reads_a_database_with_our_tables(database_url: str) -> None:
    from optuna_dashboard import wsgi

    study = optuna.create_study(
        study_name="s", storage=database_url, sampler=CheckpointingSampler(TPESampler(seed=5))
    )
    study.optimize(objective, n_trials=3)
    app = wsgi(optuna.storages.get_storage(database_url))
    status, listing = _get(app, "/api/studies")
    assert status.startswith("200"), listing
    assert [s["study_name"] for s in listing["study_summaries"]] == ["s"]
    status, detail = _get(app, f"/api/studies/{study._study_id}")
    assert status.startswith("200"), detail
    assert len(detail["trials"]) == 3
