"""Re-sign a study under a new signing key, after checking every record under the old one.

Every sealed record of the study is read and checked under the old key: each stream's
checkpoints, the records of interrupted and claimed trials, and the states objectives saved
for their logical trials. If one fails, nothing is written. Then each gets a new seal under the
new key, and the store writes the new seals (and nothing else): in one transaction on SQL
storages. The records themselves do not change, so the study resumes exactly as before, under
the new key only.

Either key may be absent: from none to one turns signing on for a study whose records are
unsigned, from one to none turns it off. Records of releases from before rows were sealed,
which a resume accepts as their store's format says, are sealed too.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import replace
from functools import partial
import time
from typing import TYPE_CHECKING

from optuna_checkpoint.attach._lease import current_owner
from optuna_checkpoint.attach._lease import judge_lease
from optuna_checkpoint.attach._lease import lease_timing
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import StudyNotFoundError
from optuna_checkpoint.record._trial_states import check_state_seal
from optuna_checkpoint.record._trial_states import sealed_state
from optuna_checkpoint.state._packing import no_such_trial
from optuna_checkpoint.state._rows import SealedRows
from optuna_checkpoint.state._rows import claim_fields
from optuna_checkpoint.state._rows import interruption_fields
from optuna_checkpoint.state._seal import SIGNING_KEY_ENV
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.state._seal import place
from optuna_checkpoint.stores._base import Resealed
from optuna_checkpoint.tools._transplant import StudyRef


if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

    from optuna_checkpoint.stores._base import Checkpoint
    from optuna_checkpoint.stores._base import CheckpointStore
    from optuna_checkpoint.stores._base import Claim
    from optuna_checkpoint.stores._base import Interruption
    from optuna_checkpoint.stores._base import Stream
    from optuna_checkpoint.stores._base import TrialStateRecord


OLD_KEY_ENV = SIGNING_KEY_ENV
"""Where ``optuna-checkpoint rekey`` reads the key the study is signed with now."""

NEW_KEY_ENV = "OPTUNA_CHECKPOINT_NEW_SIGNING_KEY"
"""Where ``optuna-checkpoint rekey`` reads the key to sign the study with."""

_NOTHING_WRITTEN = (
    " Nothing was re-signed. Check that the old key is the one the study is signed with (for "
    f"the command, {OLD_KEY_ENV}; unset if the study is unsigned)."
)


@dataclass(frozen=True)
class RekeyReport:
    """What :func:`rekey_study` re-signed.

    Attributes:
        study_name: The study.
        checkpoints: The checkpoints of all its streams, initial ones included.
        interruptions: The records of interrupted trials.
        claims: The records of which stream ran each trial.
        trial_states: The states saved for logical trials (``trial_checkpoint``).
        signed: Whether the new seals are signatures (a new key was given).
    """

    study_name: str
    checkpoints: int
    interruptions: int
    claims: int
    trial_states: int
    signed: bool


def rekey_study(
    storage: BaseStorage,
    study_name: str,
    *,
    old_key: str | bytes | None,
    new_key: str | bytes | None,
) -> RekeyReport:
    """Re-sign every record of a study under ``new_key``, after checking each under ``old_key``.

    Stop the study's workers first, and start them again with the new key: a worker left
    running with the old one would go on writing records that the new key refuses. A study
    whose streams a live process holds is refused.

    Example:

        .. code-block:: python

            rekey_study(
                optuna.storages.get_storage("sqlite:///demo.db"),
                "demo",
                old_key=os.environ["OLD_KEY"],
                new_key=os.environ["NEW_KEY"],
            )

    Args:
        storage: The study's storage.
        study_name: The study.
        old_key: The key its records are signed with now; ``None`` if they are unsigned. Unlike
            elsewhere, it is not read from the environment: both keys are given.
        new_key: The key to sign them with; ``None`` to seal them without a key.

    Returns:
        How many records were re-signed.

    Raises:
        StudyNotFoundError: The storage has no study of that name.
        CheckpointError: The study has no checkpoints, a live process holds one of its streams,
            or the store cannot re-seal (a journal's append-only side record).
        CorruptCheckpointError: A record fails its seal under the old key, or names a trial
            the study does not have; nothing is written.
        SignatureError: A record is unsigned while an old key is given, or signed while none
            is; nothing is written.
    """
    old, new = Sealer(_as_bytes(old_key)), Sealer(_as_bytes(new_key))
    study = _find_study(storage, study_name)
    store = study.existing_store()  # creates nothing
    streams = [] if store is None else store.list_streams(study.uid)
    if store is None or not streams:
        raise CheckpointError(f"study {study_name!r} has no checkpoints to re-sign")
    if store.resealing_unsupported is not None:
        raise CheckpointError(store.resealing_unsupported)
    _refuse_live_workers(storage, study_name, streams)
    # Where re-sealing is not one transaction, a run that failed midway left records sealed
    # under the new key: running again, those count as checked.
    resumed = None if store.plants_atomically else new
    rekey = _Rekey(store, study.uid, old, new, resumed)
    trials = {t._trial_id: t for t in storage.get_all_trials(study.study_id, deepcopy=False)}
    try:
        resealed = Resealed(
            checkpoints={
                s.stream_id: [
                    rekey.checkpoint(c, s, trials) for c in store.all_checkpoints(s.stream_id)
                ]
                for s in streams
            },
            interruptions=[rekey.interruption(i) for i in store.where_interrupted(study.uid)],
            claims={t: rekey.claim(t, c) for t, c in _all_claims(store, study.uid, trials)},
            trial_states=[rekey.trial_state(r) for r in store.where_trial_states(study.uid)],
        )
    except CheckpointError as e:
        raise type(e)(f"cannot re-sign study {study_name!r}: {e}{_NOTHING_WRITTEN}") from e
    store.reseal(study.uid, resealed)
    return RekeyReport(
        study_name=study_name,
        checkpoints=sum(len(listed) for listed in resealed.checkpoints.values()),
        interruptions=len(resealed.interruptions),
        claims=len(resealed.claims),
        trial_states=len(resealed.trial_states),
        signed=new.signs,
    )


class _Rekey:
    """Checks each record under the old sealer (or, resuming, the new one) and reseals it."""

    def __init__(
        self,
        store: CheckpointStore,
        study_uid: str,
        old: Sealer,
        new: Sealer,
        resumed: Sealer | None,
    ) -> None:
        self._uid = study_uid
        self._new = new
        self._checkers = [s for s in (old, resumed) if s is not None]
        self._rows = [SealedRows(store, study_uid, s) for s in self._checkers]

    def checkpoint(
        self, checkpoint: Checkpoint, stream: Stream, trials: Mapping[int, FrozenTrial]
    ) -> Checkpoint:
        if checkpoint.trial_id is not None and checkpoint.trial_id not in trials:
            raise no_such_trial(checkpoint, stream.name, "")
        self._checked(
            [partial(s.check_stored, checkpoint, self._uid, stream.name) for s in self._checkers]
        )
        where = place(self._uid, stream.name, checkpoint.trial_id, checkpoint.logical_number)
        return replace(checkpoint, checksum=self._new.seal(checkpoint, where))

    def interruption(self, interruption: Interruption) -> Interruption:
        self._checked([partial(r.check_interruption, interruption) for r in self._rows])
        fields = interruption_fields(self._uid, interruption)
        return replace(interruption, seal=self._new.seal_row(fields))

    def claim(self, trial_id: int, claim: Claim) -> Claim:
        self._checked([partial(r.check_claim, trial_id, claim) for r in self._rows])
        fields = claim_fields(self._uid, trial_id, claim.stream_id)
        return replace(claim, seal=self._new.seal_row(fields))

    def trial_state(self, record: TrialStateRecord) -> TrialStateRecord:
        self._checked([partial(check_state_seal, s, self._uid, record) for s in self._checkers])
        return sealed_state(self._new, self._uid, record)

    @staticmethod
    def _checked(checks: list[Callable[[], object]]) -> None:
        """Pass if one of ``checks`` passes; else raise what the first (the old key's) raised."""
        failure: CheckpointError | None = None
        for check in checks:
            try:
                check()
                return
            except CheckpointError as e:
                failure = failure or e
        assert failure is not None
        raise failure


def _all_claims(
    store: CheckpointStore, study_uid: str, trials: Mapping[int, FrozenTrial]
) -> list[tuple[int, Claim]]:
    """Every claim of the study's trials."""
    return list(store.claims(study_uid, sorted(trials)).items())


def _refuse_live_workers(storage: BaseStorage, study_name: str, streams: list[Stream]) -> None:
    """Refuse while a live process holds a stream: it would write under the old key."""
    grace_period, _ = lease_timing(storage, None, None)
    me, now = current_owner(), time.time()
    for stream in streams:
        owner = stream.owner
        if (
            owner is None
            or judge_lease(owner, stream.heartbeat_at, now, me, grace_period).may_take_over
        ):
            continue
        raise CheckpointError(
            f"checkpoint stream {stream.name!r} of study {study_name!r} is held by a live process "
            f"(pid {owner.pid} on {owner.host}): stop the study's workers before re-signing it, "
            "and start them again with the new key"
        )


def _find_study(storage: BaseStorage, study_name: str) -> StudyRef:
    try:
        return StudyRef.of(storage, study_name)
    except KeyError:
        raise StudyNotFoundError(f"the storage has no study named {study_name!r}") from None


def _as_bytes(key: str | bytes | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key
