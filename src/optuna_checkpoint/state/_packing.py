"""From live state to a sealed checkpoint, and back.

Packing: state dict (sampler and pruner) -> encode -> seal. Unpacking checks in the opposite
order, each before anything of the checkpoint is used: seal -> adapter -> library versions ->
decode -> restore.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.state import _codec
from optuna_checkpoint.state._seal import describe
from optuna_checkpoint.state._seal import place
from optuna_checkpoint.state._versions import check_versions
from optuna_checkpoint.state._versions import library_versions
from optuna_checkpoint.stores._base import Checkpoint


if TYPE_CHECKING:
    from optuna.trial import TrialState

    from optuna_checkpoint.state._composite import CheckpointState
    from optuna_checkpoint.state._seal import Sealer


RESTORE_REMEDY = (
    " Restore the database from a backup to resume exactly, or pass start_new_stream=True to "
    "CheckpointingSampler to continue from the sampler as constructed (the trajectory will then "
    "differ from the uninterrupted run)."
)


def no_such_trial(checkpoint: Checkpoint, stream_name: str, remedy: str) -> CorruptCheckpointError:
    """The error for a checkpoint row whose trial is not a trial of the study it is stored in.

    Its seal may hold (without a key anyone can reseal a row), but no trial of the study ran
    it: the row was altered, or copied from another study.
    """
    return CorruptCheckpointError(
        f"{describe(checkpoint)} (logical trial {checkpoint.logical_number}) in stream "
        f"{stream_name!r} names a trial the study does not have: the row was altered, or "
        "copied from another study." + remedy
    )


class CheckpointPacker:
    """Packs a :class:`CheckpointState` into sealed checkpoints, and restores it from them.

    Args:
        state: What a checkpoint holds: the wrapped sampler's and the study's pruner's state.
        sealer: Seals and checks checkpoints (signs them when it has a key).
        allow_pickle: Whether payloads may hold cloudpickle (the user's opt-in).
    """

    def __init__(self, state: CheckpointState, sealer: Sealer, *, allow_pickle: bool) -> None:
        self.state = state
        self.sealer = sealer
        self.allow_pickle = allow_pickle

    def pack(
        self,
        study_uid: str,
        stream_name: str,
        trial_id: int | None,
        logical_number: int,
        state: TrialState | None = None,
        values: list[float] | None = None,
    ) -> Checkpoint:
        """The current state as the sealed checkpoint of ``trial_id`` (``None``: initial)."""
        payload = _codec.encode(self.state.state_dict(), allow_pickle=self.allow_pickle)
        unsealed = Checkpoint(
            trial_id=trial_id,
            logical_number=logical_number,
            trial_state=None if state is None else state.name,
            trial_values=values,
            adapter=self.state.adapter.name,
            payload=payload,
            checksum="",
            versions=library_versions(),
        )
        where = place(study_uid, stream_name, trial_id, logical_number)
        return replace(unsealed, checksum=self.sealer.seal(unsealed, where))

    def check_seal(self, checkpoint: Checkpoint, study_uid: str, stream_name: str) -> None:
        """Refuse a checkpoint whose seal does not hold, before anything of it is used."""
        self.sealer.check_stored(checkpoint, study_uid, stream_name, remedy=RESTORE_REMEDY)

    def unpack(self, checkpoint: Checkpoint, study_uid: str, stream_name: str) -> None:
        """Restore the state from ``checkpoint``, after checking everything it rests on.

        Raises:
            CorruptCheckpointError: The seal, the adapter or the payload does not hold.
            SignatureError: The checkpoint is unsigned, or signed with another key.
            VersionMismatchError: A library that wrote it changed in a way that matters.
            ConfigMismatchError: The pruner's part was saved by another pruner.
        """
        self.check_seal(checkpoint, study_uid, stream_name)
        where = f"{describe(checkpoint)} in stream {stream_name!r}"
        adapter_name = self.state.adapter.name
        if checkpoint.adapter != adapter_name:
            raise CorruptCheckpointError(
                f"{where} was written by the {checkpoint.adapter} adapter, but this sampler uses "
                f"{adapter_name}." + RESTORE_REMEDY
            )
        try:
            info = _codec.inspect_payload(checkpoint.payload)
            check_versions(checkpoint.versions or {}, where=where, pickled=info.pickled)
            decoded = _codec.decode(checkpoint.payload, allow_pickle=self.allow_pickle)
            self.state.load_state_dict(decoded)
        except CorruptCheckpointError as e:
            message = f"{where} cannot be loaded: {e}."
            raise CorruptCheckpointError(message + RESTORE_REMEDY) from e
