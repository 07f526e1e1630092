"""Large trial states in an Optuna artifact store: two slots per logical trial, and a digest.

``trial_checkpoint(trial, artifact_store=...)`` keeps the bulk of what an objective saves (model
weights, a framework's checkpoint file or directory) in an Optuna artifact store
(``FileSystemArtifactStore``, ``Boto3ArtifactStore``, ``GCSArtifactStore``); the study's database
keeps only a reference, the artifact's SHA-256 and its size, sealed with the rest of the trial
state (:mod:`optuna_checkpoint.record._trial_states`).

A save must replace the previous state atomically, but an artifact store offers no atomic
rename. Each logical trial therefore has two slots, ``...-a`` and ``...-b``: a save writes the
slot the database does not point to, then replaces the database record (one transaction), which
is the commit point. A kill during the upload leaves a partial artifact nobody points to, which
the next save overwrites; a kill after it leaves the previous record, whose slot is intact. The
digest in the sealed record catches an artifact changed or damaged behind the database's back.
Slots are removed once their trial has finished and its end is stored.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
import hashlib
import io
from typing import TYPE_CHECKING
from typing import Any

from optuna.artifacts.exceptions import ArtifactNotFound

from optuna_checkpoint._faults import crash_point
from optuna_checkpoint.exceptions import CorruptCheckpointError


if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore


_SLOTS = ("a", "b")
_ID = "id"
_SHA256 = "sha256"
_SIZE = "size"


@dataclass(frozen=True)
class ArtifactRef:
    """Where a trial state's body lies in the artifact store, and what it must hash to.

    Attributes:
        artifact_id: The slot's artifact id.
        sha256: The body's SHA-256, hex.
        size: The body's length in bytes.
    """

    artifact_id: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        """The reference as the trial state's record keeps it (codec types only)."""
        return {_ID: self.artifact_id, _SHA256: self.sha256, _SIZE: self.size}

    @classmethod
    def from_dict(cls, fields: Any) -> ArtifactRef:
        """Read a reference back.

        Raises:
            CorruptCheckpointError: ``fields`` is not one.
        """
        try:
            return cls(str(fields[_ID]), str(fields[_SHA256]), int(fields[_SIZE]))
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptCheckpointError("the artifact reference is incomplete") from e


def slot_ids(study_uid: str, logical_trial: int) -> tuple[str, str]:
    """The two artifact ids a logical trial's state alternates between."""
    stem = f"optuna-checkpoint-{study_uid}-trial-{logical_trial}"
    return (f"{stem}-{_SLOTS[0]}", f"{stem}-{_SLOTS[1]}")


def write_body(
    store: ArtifactStore,
    study_uid: str,
    logical_trial: int,
    body: bytes,
    current: ArtifactRef | None,
) -> ArtifactRef:
    """Upload ``body`` to the slot ``current`` does not use; return its reference."""
    first, second = slot_ids(study_uid, logical_trial)
    target = second if current is not None and current.artifact_id == first else first
    store.write(target, io.BytesIO(body))
    crash_point("after_artifact_upload")
    return ArtifactRef(target, hashlib.sha256(body).hexdigest(), len(body))


def read_body(store: ArtifactStore, ref: ArtifactRef) -> bytes:
    """Download the body ``ref`` points to, checking its size and digest.

    Raises:
        CorruptCheckpointError: It is missing, or not the body that was saved.
    """
    try:
        reader = store.open_reader(ref.artifact_id)
    except ArtifactNotFound as e:
        raise CorruptCheckpointError(
            f"artifact {ref.artifact_id!r} is missing from the artifact store (deleted, or "
            "another artifact store given than the one saved to?)"
        ) from e
    try:
        body = reader.read()
    finally:
        reader.close()
    if len(body) != ref.size or hashlib.sha256(body).hexdigest() != ref.sha256:
        raise CorruptCheckpointError(
            f"artifact {ref.artifact_id!r} is not what was saved: {len(body):,} bytes with "
            f"another digest, where {ref.size:,} bytes were saved"
        )
    return body


def remove_slots(store: ArtifactStore, study_uid: str, logical_trial: int) -> None:
    """Remove both slots of a logical trial; a missing one is fine."""
    for artifact_id in slot_ids(study_uid, logical_trial):
        with contextlib.suppress(ArtifactNotFound):
            store.remove(artifact_id)
