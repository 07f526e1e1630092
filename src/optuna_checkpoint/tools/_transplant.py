"""Move checkpoint streams between studies, outside a running sampler (fork, export, import).

A checkpoint's seal binds it to its place (study, stream, trial), so a checkpoint cannot simply
be copied: it is checked where it is, and sealed again where it goes. Both ends use the same
:class:`~optuna_checkpoint.state._seal.Sealer`, so with a signing key nothing unsigned or forged is
ever re-signed.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import replace
from typing import TYPE_CHECKING
from typing import Any

from optuna_checkpoint.attach._lease import current_owner
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.state._seal import place
from optuna_checkpoint.stores._base import PlantedStream
from optuna_checkpoint.stores._open import existing_store
from optuna_checkpoint.stores._open import store_for
from optuna_checkpoint.study._identity import first_trial
from optuna_checkpoint.study._identity import study_uid


if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from optuna_checkpoint.stores._base import Checkpoint
    from optuna_checkpoint.stores._base import CheckpointStore
    from optuna_checkpoint.stores._base import Claim
    from optuna_checkpoint.stores._base import Interruption
    from optuna_checkpoint.stores._base import Stream


@dataclass(frozen=True)
class StudyRef:
    """A study in a storage, with the identity its checkpoints are bound to."""

    storage: BaseStorage
    study_id: int
    study_name: str
    uid: str

    @classmethod
    def of(cls, storage: BaseStorage, study_name: str) -> StudyRef:
        """Find ``study_name`` in ``storage``; it must have a trial numbered 0.

        Raises:
            CheckpointError: The study has no trials, so no checkpoint can belong to it.
        """
        study_id = storage.get_study_id_from_name(study_name)
        try:
            first = first_trial(storage, study_id)
        except KeyError:
            raise CheckpointError(
                f"study {study_name!r} has no trials, so it has no checkpoints to carry"
            ) from None
        return cls(storage, study_id, study_name, study_uid(study_id, study_name, first))

    def existing_store(self) -> CheckpointStore | None:
        """The study's checkpoint store, opened for it; ``None`` if the storage has none.

        Unlike :func:`store_of`, this creates no tables or side record: for tools that read.
        """
        store = existing_store(self.storage)
        if store is not None:
            store.open_study(self.study_id, self.uid)
        return store


def plant_stream(
    study: StudyRef,
    *,
    name: str,
    fingerprint: Any,
    first_trial_number: int,
    checkpoints: Sequence[Checkpoint],
    sealer: Sealer,
) -> Stream:
    """Create stream ``name`` in ``study`` holding ``checkpoints``, sealed for their new place.

    Args:
        study: The study that receives the stream.
        name: The stream's name: the worker id whose process will resume it.
        fingerprint: The configuration fingerprint of the sampler that wrote the checkpoints.
        first_trial_number: The first trial of ``study`` that the stream runs.
        checkpoints: The initial checkpoint (``trial_id=None``) first, then trial checkpoints
            whose ``trial_id`` are ids of ``study``'s trials; their seals are replaced.
        sealer: Seals the checkpoints for ``study``.

    Raises:
        CheckpointError: The study already has a stream of that name.
    """
    if not checkpoints or checkpoints[0].trial_id is not None:
        raise ValueError("a stream starts with its initial checkpoint")
    store = store_of(study)
    if store.find_stream(study.uid, name) is not None:
        raise CheckpointError(
            f"study {study.study_name!r} already has a checkpoint stream {name!r}; choose a new "
            "study name, or delete that study first"
        )

    def sealed(checkpoint: Checkpoint) -> Checkpoint:
        where = place(study.uid, name, checkpoint.trial_id, checkpoint.logical_number)
        return replace(checkpoint, checksum=sealer.seal(checkpoint, where))

    planted = PlantedStream(
        name, fingerprint, first_trial_number, [sealed(c) for c in checkpoints]
    )
    store.plant_streams(study.study_id, study.uid, [planted], _no_rows, current_owner())
    stream = store.find_stream(study.uid, name)
    assert stream is not None
    return stream


def _no_rows(stream_ids: Mapping[str, int]) -> tuple[list[Interruption], dict[int, Claim]]:
    return [], {}


def store_of(study: StudyRef) -> CheckpointStore:
    """The checkpoint store of ``study``'s storage, opened for the study."""
    store = store_for(study.storage)
    store.open_study(study.study_id, study.uid)
    return store
