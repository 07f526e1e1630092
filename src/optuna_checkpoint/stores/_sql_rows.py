"""How streams, owners and checkpoints map to the columns of the SQL store's side tables."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from optuna_checkpoint.stores._base import REASON_CHARS
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._base import Owner
from optuna_checkpoint.stores._base import Stream


INITIAL_TRIAL_ID = -1
"""The ``trial_id`` of the row holding the state from before the stream's first trial."""


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _values_to_text(values: list[float] | None) -> str | None:
    return None if values is None else json.dumps([float(v).hex() for v in values])


def _values_from_text(text: str | None) -> list[float] | None:
    return None if text is None else [float.fromhex(v) for v in json.loads(text)]


def fingerprint_text(fingerprint: Any) -> str:
    """The ``fingerprint`` column of a stream: canonical JSON, so equal ones compare equal."""
    return json.dumps(fingerprint, sort_keys=True)


def owner_columns(owner: Owner | None) -> dict[str, Any]:
    """The owner columns of a stream; all ``NULL`` for a stream nobody holds."""
    if owner is None:
        return dict.fromkeys(
            ("owner_token", "owner_host", "owner_boot_id", "owner_pid", "owner_pid_start")
        )
    return {
        "owner_token": owner.token,
        "owner_host": owner.host,
        "owner_boot_id": owner.boot_id,
        "owner_pid": owner.pid,
        "owner_pid_start": owner.pid_start,
    }


def interruption_row(study_id: int, study_uid: str, interruption: Interruption) -> dict[str, Any]:
    """The interrupted trials row of ``interruption`` (its reason cut to the column's width)."""
    i = interruption
    return {
        "trial_id": i.trial_id,
        "study_uid": study_uid,
        "study_id": study_id,
        "trial_number": i.trial_number,
        "logical_number": i.logical_number,
        "reason": i.reason[:REASON_CHARS],
        "stream_id": i.stream_id,
        "seal": i.seal,
    }


def checkpoint_row(stream_id: int, checkpoint: Checkpoint) -> dict[str, Any]:
    """The checkpoints row of ``checkpoint`` in stream ``stream_id``, but for its key."""
    return {
        "stream_id": stream_id,
        "trial_id": INITIAL_TRIAL_ID if checkpoint.trial_id is None else checkpoint.trial_id,
        "logical_number": checkpoint.logical_number,
        "trial_state": checkpoint.trial_state,
        "trial_values": _values_to_text(checkpoint.trial_values),
        "adapter": checkpoint.adapter,
        "payload": checkpoint.payload,
        "checksum": checkpoint.checksum,
        "versions": None if checkpoint.versions is None else _compact_json(checkpoint.versions),
    }


def checkpoint_from_row(row: sa.Row[Any]) -> Checkpoint:
    """The checkpoint a checkpoints row holds."""
    return Checkpoint(
        trial_id=None if row.trial_id == INITIAL_TRIAL_ID else row.trial_id,
        logical_number=row.logical_number,
        trial_state=row.trial_state,
        trial_values=_values_from_text(row.trial_values),
        adapter=row.adapter,
        payload=bytes(row.payload),
        checksum=row.checksum,
        versions=None if row.versions is None else json.loads(row.versions),
    )


def stream_from_row(row: sa.Row[Any]) -> Stream:
    """The stream a streams row holds."""
    owner = None
    if row.owner_token is not None:
        owner = Owner(
            token=row.owner_token,
            host=row.owner_host,
            boot_id=row.owner_boot_id,
            pid=row.owner_pid,
            pid_start=row.owner_pid_start,
        )
    return Stream(
        stream_id=row.stream_id,
        study_uid=row.study_uid,
        name=row.name,
        fingerprint=json.loads(row.fingerprint),
        owner=owner,
        heartbeat_at=row.heartbeat_at,
        first_trial_number=row.first_trial_number,
    )
