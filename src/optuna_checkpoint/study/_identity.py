"""A study's identity across processes, read from what Optuna stores anyway.

Checkpoints are keyed by this identity rather than by the study's id: SQLite reuses the ids of
deleted studies, and a checkpoint must never be resumed into a study that merely reuses an id.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial


def study_uid(study_id: int, study_name: str, first_trial: FrozenTrial) -> str:
    """Identify a study across processes without writing anything to it.

    Derived from the study's id and name and its first trial's id and start time, so a study
    deleted and recreated under the same id and name gets another uid.
    """
    start = first_trial.datetime_start.isoformat() if first_trial.datetime_start else ""
    text = f"{study_id}\0{study_name}\0{first_trial._trial_id}\0{start}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def first_trial(storage: BaseStorage, study_id: int) -> FrozenTrial:
    """The study's trial number 0, which anchors its :func:`study_uid`.

    Raises:
        KeyError: The study has no trial yet.
    """
    return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, 0))
