"""Planting streams step by step, resumably, for stores without transactions that span writes.

:meth:`CheckpointStore.plant_streams` for the journal and attribute stores: each stream is
created (or, left by an earlier attempt, taken over) and filled with its checkpoints, then the
rows are recorded. Every step may be repeated: creating a stream that exists finds it, saving a
checkpoint again overwrites it, recording an interruption or a claim again is a no-op. So an
import that fails midway is completed by running it again.
"""

from __future__ import annotations

from collections.abc import Sequence
import time
from typing import TYPE_CHECKING

from optuna_checkpoint._faults import crash_point
from optuna_checkpoint.exceptions import CheckpointError


if TYPE_CHECKING:
    from optuna_checkpoint.stores._base import CheckpointStore
    from optuna_checkpoint.stores._base import Owner
    from optuna_checkpoint.stores._base import PlantedStream
    from optuna_checkpoint.stores._base import RowsFor
    from optuna_checkpoint.stores._base import Stream


def plant_step_by_step(
    store: CheckpointStore,
    study_id: int,
    study_uid: str,
    planted: Sequence[PlantedStream],
    rows_for: RowsFor,
    owner: Owner,
) -> None:
    """:meth:`CheckpointStore.plant_streams`, one resumable step at a time."""
    streams: dict[str, Stream] = {}
    for spec in planted:
        stream = _created_or_resumed(store, study_id, study_uid, spec, owner)
        try:
            for checkpoint in spec.checkpoints[1:]:
                store.save(stream, checkpoint, owner.token, time.time())
                crash_point("inside_import")
        finally:
            store.release(stream.stream_id, owner.token)
        streams[spec.name] = stream
    interruptions, claims = rows_for({name: s.stream_id for name, s in streams.items()})
    store.add_interruptions(study_id, study_uid, interruptions)
    by_id = {s.stream_id: s for s in streams.values()}
    for trial_id, claim in claims.items():
        if claim.seal is None or not store.claim_trial(
            by_id[claim.stream_id], study_id, trial_id, claim.seal
        ):
            raise CheckpointError(
                f"trial id {trial_id} was claimed by another stream while the streams were "
                "planted: a worker is running on the study; stop it, and start again from a "
                "fresh copy of the study"
            )
        crash_point("inside_import")


def _created_or_resumed(
    store: CheckpointStore, study_id: int, study_uid: str, spec: PlantedStream, owner: Owner
) -> Stream:
    """The stream, created with its initial checkpoint, or taken over from an earlier attempt."""
    initial = spec.checkpoints[0]
    stream = store.create_stream(
        study_id,
        study_uid,
        spec.name,
        spec.fingerprint,
        owner,
        initial,
        first_trial_number=spec.first_trial_number,
    )
    if stream is not None:
        crash_point("inside_import")
        return stream
    found = store.find_stream(study_uid, spec.name)
    if (
        found is None
        or found.fingerprint != spec.fingerprint
        or found.first_trial_number != spec.first_trial_number
    ):
        raise CheckpointError(
            f"the study already has a checkpoint stream {spec.name!r}, which is not the one "
            "being planted; plant into a fresh copy of the study"
        )
    if not store.take_over(found, owner, time.time()):
        raise CheckpointError(
            f"another process took checkpoint stream {spec.name!r} while it was planted; stop "
            "it, and plant again"
        )
    return found
