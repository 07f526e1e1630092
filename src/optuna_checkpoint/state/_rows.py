"""Seals of the rows kept beside the checkpoints: interruptions and claims.

An interruption row hides its trial from the wrapped sampler and from ``uninterrupted_trials``,
and has it retried; a claim row names the worker that runs a trial, so that a resume closes
only its own worker's trials. A reader obeys both, so both are sealed as checkpoints are (a
digest, or an HMAC under the signing key) over their study and every field, in the write that
stores them, and checked as they are read, before anything obeys them. A row whose seal does
not hold stops the reader with an error naming the trial; it is never skipped, since skipping
an interruption would show the sampler a trial it must not see.

Rows written by releases from before rows were sealed carry no seal. They are accepted for the
trials the store says such rows may belong to (:meth:`CheckpointStore.unsealed_rows_until`,
recorded when the store was upgraded), and refused beyond: every later row is sealed.
"""

from __future__ import annotations

from collections.abc import Collection
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING
from typing import Any

from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.state._packing import RESTORE_REMEDY
from optuna_checkpoint.stores._base import REASON_CHARS


if TYPE_CHECKING:
    from optuna_checkpoint.state._seal import Sealer
    from optuna_checkpoint.stores._base import Checkpoint
    from optuna_checkpoint.stores._base import CheckpointStore
    from optuna_checkpoint.stores._base import Claim
    from optuna_checkpoint.stores._base import Interruption
    from optuna_checkpoint.stores._base import Stream


ROW_REMEDY = (
    " Restore the study's database from a backup. If the row was sealed under another signing "
    "key, use that key (signing_key= or OPTUNA_CHECKPOINT_SIGNING_KEY), or re-sign the study "
    "under yours with optuna-checkpoint rekey."
)


def interruption_fields(study_uid: str, interruption: Interruption) -> list[Any]:
    """What an interruption's seal covers: its study and every field but the seal."""
    i = interruption
    return [
        "interruption",
        study_uid,
        i.trial_id,
        i.trial_number,
        i.logical_number,
        i.reason,
        i.stream_id,
    ]


def claim_fields(study_uid: str, trial_id: int, stream_id: int) -> list[Any]:
    """What a claim's seal covers: its study, its trial and the stream that claims it."""
    return ["claim", study_uid, trial_id, stream_id]


def describe_interruption(interruption: Interruption) -> str:
    """Name an interruption row in a message."""
    return (
        f"the record that trial {interruption.trial_number} (trial id "
        f"{interruption.trial_id}) was interrupted, which hides it from the sampler,"
    )


def describe_claim(trial_id: int, claim: Claim) -> str:
    """Name a claim row in a message."""
    return f"the claim of trial id {trial_id} for stream id {claim.stream_id}"


class SealedRows:
    """A study's interruptions and claims in its store: sealed when written, checked when read.

    Args:
        store: The study's checkpoint store (the study opened in it).
        study_uid: The study's identity, which every seal covers.
        sealer: Seals and checks the rows, with the signing key if one is configured.
    """

    def __init__(self, store: CheckpointStore, study_uid: str, sealer: Sealer) -> None:
        self.store = store
        self.study_uid = study_uid
        self.sealer = sealer

    def __repr__(self) -> str:
        return f"SealedRows({self.store!r}, {self.study_uid!r}, {self.sealer!r})"

    # -- interruptions -------------------------------------------------------------------------

    def sealed(self, interruption: Interruption) -> Interruption:
        """``interruption`` as it is stored: its reason cut to what a store keeps, and sealed."""
        cut = replace(interruption, reason=interruption.reason[:REASON_CHARS], seal=None)
        return replace(cut, seal=self.sealer.seal_row(interruption_fields(self.study_uid, cut)))

    def add_interruptions(self, study_id: int, interruptions: Sequence[Interruption]) -> None:
        """Record interrupted trials, each sealed (:meth:`CheckpointStore.add_interruptions`)."""
        if interruptions:
            sealed = [self.sealed(i) for i in interruptions]
            self.store.add_interruptions(study_id, self.study_uid, sealed)

    def interruptions(self) -> list[Interruption]:
        """The study's interrupted trials, each seal checked (trial-number order).

        Raises:
            CorruptCheckpointError: A row fails its seal, or lacks one it must have.
            SignatureError: A row is unsigned while a key is configured, or signed while none is.
        """
        return self.checked_interruptions(self.store.where_interrupted(self.study_uid))

    def resume_point(
        self, stream_id: int, *, limit: int
    ) -> tuple[list[Interruption], list[Checkpoint]]:
        """:meth:`CheckpointStore.resume_point`, the interruptions' seals checked."""
        known, latest = self.store.resume_point(self.study_uid, stream_id, limit=limit)
        return self.checked_interruptions(known), latest

    def checked_interruptions(self, interruptions: list[Interruption]) -> list[Interruption]:
        """Check each interruption's seal; return them all, or raise for the first that fails."""
        for i in interruptions:
            self.check_interruption(i)
        return interruptions

    def check_interruption(self, interruption: Interruption) -> None:
        """Check one interruption's seal (see :meth:`interruptions` for what is raised)."""
        i = interruption
        fields = interruption_fields(self.study_uid, i)
        self._check(i.seal, fields, i.trial_id, describe_interruption(i))

    # -- claims --------------------------------------------------------------------------------

    def claim_seal(self, trial_id: int, stream_id: int) -> str:
        """The seal of the claim of ``trial_id`` for ``stream_id``."""
        return self.sealer.seal_row(claim_fields(self.study_uid, trial_id, stream_id))

    def claim(self, stream: Stream, study_id: int, trial_id: int) -> bool:
        """Claim the trial for ``stream`` (:meth:`CheckpointStore.claim_trial`), sealed.

        Returns ``False`` when another stream's claim holds it: that claim's seal is checked
        before the refusal is believed.
        """
        seal = self.claim_seal(trial_id, stream.stream_id)
        if self.store.claim_trial(stream, study_id, trial_id, seal):
            return True
        self.claims([trial_id])  # raises if the claim that beat ours is not genuine
        return False

    def claim_at_creation(self, stream: Stream, study_id: int) -> None:
        """Claim for ``stream`` the trials this process creates from now on, sealed."""
        stream_id = stream.stream_id
        self.store.claim_trials_at_creation(
            stream, study_id, lambda trial_id: self.claim_seal(trial_id, stream_id)
        )

    def claims(self, trial_ids: Collection[int]) -> dict[int, int]:
        """The claiming stream of each claimed trial among ``trial_ids``, each seal checked.

        Raises:
            CorruptCheckpointError: A claim fails its seal, or lacks one it must have.
            SignatureError: A claim is unsigned while a key is configured, or signed while
                none is.
        """
        found = self.store.claims(self.study_uid, trial_ids) if trial_ids else {}
        for trial_id, claim in found.items():
            self.check_claim(trial_id, claim)
        return {trial_id: claim.stream_id for trial_id, claim in found.items()}

    def check_claim(self, trial_id: int, claim: Claim) -> None:
        """Check one claim's seal (see :meth:`claims` for what is raised)."""
        fields = claim_fields(self.study_uid, trial_id, claim.stream_id)
        self._check(claim.seal, fields, trial_id, describe_claim(trial_id, claim))

    # -- checking ------------------------------------------------------------------------------

    def check_key_fits(self, stream: Stream, *, checkpoints: bool = True) -> None:
        """Refuse this sealer's key unless it checks out on the study, before a row is written.

        A row sealed under a key the study's workers do not use (or unsigned, in a signed
        study) is one they cannot tell from a forgery, and their resumes would stop on it. So a
        process tries its key on the study's interruptions and, with ``checkpoints``, on the
        newest checkpoint of ``stream`` that a resume would read, before it writes anything.

        Raises:
            CorruptCheckpointError: A row or the checkpoint fails its seal under this key.
            SignatureError: It is unsigned while a key is configured, or signed while none is.
        """
        hidden = {i.trial_id for i in self.interruptions()}
        if not checkpoints:
            return
        newest = self.store.latest_checkpoints(stream.stream_id, excluding=hidden, limit=1)
        if newest:
            self.sealer.check_stored(newest[0], self.study_uid, stream.name, remedy=RESTORE_REMEDY)

    def _check(self, seal: str | None, fields: list[Any], trial_id: int, what: str) -> None:
        if seal is None:
            bound = self.store.unsealed_rows_until(self.study_uid)
            if trial_id <= bound:
                return  # written by an earlier release, as the store's format says
            after = "every row" if bound < 0 else f"every row of a trial after id {bound}"
            raise CorruptCheckpointError(
                f"{what} cannot be trusted: it has no seal, and {after} is sealed in this "
                "store, so it was not written by optuna-checkpoint." + ROW_REMEDY
            )
        try:
            self.sealer.check_row(seal, fields)
        except CheckpointError as e:
            raise type(e)(f"{what} cannot be trusted: {e}." + ROW_REMEDY) from e
