"""Checkpoint rows of the SQL store, as someone who writes to the database rewrites them."""

from __future__ import annotations

from dataclasses import replace
import json
from typing import Any

import sqlalchemy as sa

from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.state._seal import place
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._sql_schema import checkpoints
from optuna_checkpoint.study._trials import TOLD_ELSEWHERE_ATTR


def where_of(row: Any, stream: Any) -> str:
    """The place a checkpoint row of ``stream`` is sealed for (-1 is the initial checkpoint)."""
    trial_id = None if row.trial_id == -1 else row.trial_id
    return place(stream.study_uid, stream.name, trial_id, row.logical_number)


def seal_of_row(row: Any, stream: Any, *, key: bytes | None = None, **changes: Any) -> str:
    """The valid seal of ``row`` with ``changes`` (new ``Checkpoint`` field values) applied."""
    values = None if row.trial_values is None else json.loads(row.trial_values)
    stored = Checkpoint(
        trial_id=row.trial_id,
        logical_number=row.logical_number,
        trial_state=row.trial_state,
        trial_values=None if values is None else [float.fromhex(v) for v in values],
        adapter=row.adapter,
        payload=row.payload,
        checksum="",
        versions=None if row.versions is None else json.loads(row.versions),
    )
    return Sealer(key).seal(replace(stored, **changes), where_of(row, stream))


def count_rows(url: str, table: sa.Table = checkpoints) -> int:
    """How many rows ``table`` (by default the checkpoints) holds in the database at ``url``."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            count = sa.select(sa.func.count()).select_from(table)
            return int(connection.execute(count).scalar_one())
    finally:
        engine.dispose()


def seals(url: str) -> list[str]:
    """The seal of every checkpoint in the database at ``url``."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(sa.select(checkpoints.c.checksum)).scalars())
    finally:
        engine.dispose()


def tag_told_elsewhere(url: str, trial_id: int) -> None:
    """Tag a finished trial as told elsewhere, in Optuna's own table (Optuna's API refuses to)."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO trial_system_attributes (trial_id, key, value_json) "
                    "VALUES (:trial_id, :key, :value)"
                ),
                {"trial_id": trial_id, "key": TOLD_ELSEWHERE_ATTR, "value": '"by a test"'},
            )
    finally:
        engine.dispose()
