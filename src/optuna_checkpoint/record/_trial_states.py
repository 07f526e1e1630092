"""The states objectives save for their logical trials: which trial, packing, sealing, deletion.

An objective saves its own state through ``trial_checkpoint(trial).save(...)`` while the trial
runs; a retried attempt of the same *logical trial* loads it and continues from there. A logical
trial is named by a key that every attempt of it computes alike:

* in a deterministic parallel study, its position (``study._positions.position_of``), which a
  retry takes over from the attempt it repeats;
* otherwise the number of the first attempt it repeats, which the resume writes on the retry as
  Optuna's ``failed_trial`` system attribute (``resume._interruptions.mark_retry``), else the
  trial's own number.

One state per logical trial is kept; each save replaces it in one transaction. Its payload is
the codec's (``state._codec``, which executes nothing when decoding) of ``{"state": <the
objective's state>, "path": <a file or directory saved with it, or None>,
"intermediate_values": [[step, value], ...]}``: the values the attempt had reported when it
saved, which the retry reports again, so its intermediate values equal the uninterrupted run's.
With an artifact store, ``state`` and ``path`` go to the store as one encoded body, and the
payload holds ``"artifact": <its reference and digest>`` in their place
(:mod:`optuna_checkpoint.record._trial_artifacts`). The payload is sealed like a sampler
checkpoint (``state._seal``, signed under the sampler's ``signing_key``), bound to the study,
the logical trial and the attempt.

The state is deleted when the trial finishes (COMPLETE, PRUNED or a genuine FAIL), in the
transaction that stores the trial's end where the store has a commit hook; a trial cut off by a
kill or Ctrl-C keeps it for its retry. Its artifacts go once that end is stored: when the
sampler's next trial finishes (or at once, on stores without a commit hook).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace
import threading
from typing import TYPE_CHECKING
from typing import Any

from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.record._trial_artifacts import ArtifactRef
from optuna_checkpoint.record._trial_artifacts import read_body
from optuna_checkpoint.record._trial_artifacts import remove_slots
from optuna_checkpoint.record._trial_artifacts import write_body
from optuna_checkpoint.state import _codec
from optuna_checkpoint.state._seal import place
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import TrialStateRecord
from optuna_checkpoint.study._positions import position_of
from optuna_checkpoint.study._trials import FAILED_TRIAL_ATTR


if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore
    from optuna.trial import FrozenTrial

    from optuna_checkpoint.attach._attachment import Attachment
    from optuna_checkpoint.state._seal import Sealer


ADAPTER = "trial-state"
"""The adapter name a trial state is sealed under: no sampler checkpoint passes for one."""

# The stream part of a trial state's place: no stream is named so (worker ids are printable).
_PLACE = "\0trial-state"
_STATE = "state"
_PATH = "path"
_ARTIFACT = "artifact"
_INTERMEDIATE = "intermediate_values"

_REMEDY = (
    " Restore the database from a backup to continue from the saved state, or call save() "
    "without load() in the objective to start this trial again from its first step."
)


def logical_trial_of(trial: FrozenTrial, *, deterministic: bool) -> int:
    """The key of the logical trial ``trial`` is an attempt of."""
    if deterministic:
        return position_of(trial)
    first = trial.system_attrs.get(FAILED_TRIAL_ATTR)
    return trial.number if first is None else int(first)


@dataclass(frozen=True)
class SavedState:
    """What an earlier attempt of a logical trial saved.

    Attributes:
        state: The objective's state, as it was given to ``save``.
        intermediate_values: The values that attempt had reported when it saved, by step.
        path: The file or directory saved with it (``{"kind": "file" | "directory", "data":
            bytes}``, see ``tools._trial_checkpoint``), or ``None``.
        encoded: The encoding ``state`` was decoded from, for :meth:`fresh_state`.
    """

    state: Any
    intermediate_values: dict[int, float]
    path: dict[str, Any] | None = None
    encoded: bytes = b""

    def fresh_state(self) -> Any:
        """The state decoded again: a copy no caller has touched, of the same bits."""
        return _codec.decode(self.encoded)[_STATE]


_UNREAD = object()


@dataclass
class _Attempt:
    """A running attempt that uses trial_checkpoint: its logical trial, and what it loaded."""

    logical_trial: int
    loaded: Any = _UNREAD  # SavedState, or None: nothing to load
    # Where the record points in the artifact store, once known (_UNREAD: not looked up yet).
    artifact: Any = _UNREAD
    artifact_store: ArtifactStore | None = None


@dataclass
class _Slots:
    """A finished trial's artifacts, removed once its end is stored."""

    store: ArtifactStore
    study_uid: str
    logical_trial: int
    trial_id: int


class TrialStates:
    """Saves, loads and deletes the states of one sampler's logical trials.

    Args:
        sealer: Seals states and checks their seals (the sampler's, so its signing key too).
        deterministic: Whether the study runs in deterministic parallel mode (positions).
        keep: Keep a logical trial's state after it finishes, instead of deleting it.
    """

    def __init__(self, sealer: Sealer, *, deterministic: bool, keep: bool) -> None:
        self._sealer = sealer
        self._deterministic = deterministic
        self._keep = keep
        # The running attempts whose objective used trial_checkpoint, by trial id: their state
        # goes when they finish.
        self._attempts: dict[int, _Attempt] = {}
        self._to_remove: list[_Slots] = []
        self._lock = threading.Lock()

    def _attempt(self, attachment: Attachment, trial_id: int) -> _Attempt:
        with self._lock:
            attempt = self._attempts.get(trial_id)
        if attempt is not None:
            return attempt
        # Read from storage: the position and the retry attributes are set in before_trial.
        frozen = attachment.storage.get_trial(trial_id)
        attempt = _Attempt(logical_trial_of(frozen, deterministic=self._deterministic))
        with self._lock:
            return self._attempts.setdefault(trial_id, attempt)

    def logical_trial(self, attachment: Attachment, trial_id: int) -> int:
        """The logical trial of the running attempt ``trial_id``, noted for its end."""
        return self._attempt(attachment, trial_id).logical_trial

    def save(
        self,
        attachment: Attachment,
        trial_id: int,
        state: Any,
        intermediate_values: dict[int, float],
        *,
        path: dict[str, Any] | None = None,
        artifact_store: ArtifactStore | None = None,
    ) -> None:
        """Replace the logical trial's saved state by ``state`` and the values reported so far.

        Args:
            attachment: The sampler's attachment to the trial's study.
            trial_id: The attempt that saves.
            state: The objective's state.
            intermediate_values: The values the attempt reported so far.
            path: A file or directory saved with the state, as ``SavedState.path``.
            artifact_store: Keep ``state`` and ``path`` there, and only their reference in the
                study's storage.

        Raises:
            TypeError: ``state`` holds a value the codec cannot store.
            CheckpointError: The encoded state is larger than the store takes.
            StreamOwnedError: This process lost its stream to another process.
        """
        attempt = self._attempt(attachment, trial_id)
        if attempt.loaded is _UNREAD:
            attempt.loaded = None  # it starts afresh: the earlier state is replaced now
        key = attempt.logical_trial
        steps = [[step, float(value)] for step, value in sorted(intermediate_values.items())]
        body: dict[str, Any] = {_STATE: state, _PATH: path}
        ref = None
        if artifact_store is not None:
            current = self._current_artifact(attachment, attempt)
            encoded = _codec.encode(body)
            ref = write_body(artifact_store, attachment.study_uid, key, encoded, current)
            body = {_ARTIFACT: ref.to_dict()}
            attempt.artifact_store = artifact_store
        payload = _codec.encode({**body, _INTERMEDIATE: steps})
        store = attachment.store
        if len(payload) > store.trial_state_limit:
            raise CheckpointError(
                f"the state saved for logical trial {key} is {len(payload):,} bytes once "
                f"encoded, over the bound of {store.trial_state_limit:,} bytes for trial states "
                f"kept in the study's storage ({store!r}). Save only what resuming needs, or "
                "keep it in an Optuna artifact store: trial_checkpoint(trial, "
                "artifact_store=optuna.artifacts.FileSystemArtifactStore(...)) keeps only a "
                "reference in the database."
            )
        record = TrialStateRecord(key, trial_id, payload, "")
        store.save_trial_state(
            attachment.stream,
            attachment.owner.token,
            attachment.study_id,
            sealed_state(self._sealer, attachment.study_uid, record),
        )
        attempt.artifact = ref

    def _current_artifact(self, attachment: Attachment, attempt: _Attempt) -> ArtifactRef | None:
        """The artifact the logical trial's record points to now, which a save must not touch."""
        if attempt.artifact is _UNREAD:
            attempt.artifact = None
            record = attachment.store.find_trial_state(attachment.study_uid, attempt.logical_trial)
            if record is not None:
                try:
                    fields = _codec.decode(record.payload).get(_ARTIFACT)
                    attempt.artifact = None if fields is None else ArtifactRef.from_dict(fields)
                except (CheckpointError, AttributeError, TypeError, ValueError):
                    attempt.artifact = None  # unreadable: its load fails anyway
        current: ArtifactRef | None = attempt.artifact
        return current

    def load(
        self,
        attachment: Attachment,
        trial_id: int,
        artifact_store: ArtifactStore | None = None,
    ) -> tuple[SavedState | None, bool]:
        """What an earlier attempt of the logical trial saved last, or ``None``.

        Read once per attempt, on its first ``load`` (unless it saved first: then ``None``);
        later calls return the same.

        Returns:
            The saved state, and whether this call read it (the attempt's first load).

        Raises:
            CorruptCheckpointError: The saved state fails its seal or cannot be decoded, or its
                artifact is missing or altered.
            SignatureError: Its signature cannot be checked (see ``state._seal``).
            CheckpointError: It was saved to an artifact store, and none is given.
        """
        attempt = self._attempt(attachment, trial_id)
        if attempt.loaded is not _UNREAD:
            return attempt.loaded, False
        attempt.loaded = self._read(attachment, attempt, trial_id, artifact_store)
        return attempt.loaded, True

    def _read(
        self,
        attachment: Attachment,
        attempt: _Attempt,
        trial_id: int,
        artifact_store: ArtifactStore | None,
    ) -> SavedState | None:
        key = attempt.logical_trial
        record = attachment.store.find_trial_state(attachment.study_uid, key)
        if record is None or record.trial_id == trial_id:
            return None  # a first attempt
        what = f"the state saved for logical trial {key} by trial id {record.trial_id}"
        try:
            check_state_seal(self._sealer, attachment.study_uid, record)
            decoded = _codec.decode(record.payload)
            steps = {int(step): float(value) for step, value in decoded[_INTERMEDIATE]}
            body, encoded = decoded, record.payload
            if _ARTIFACT in decoded:
                ref = ArtifactRef.from_dict(decoded[_ARTIFACT])
                attempt.artifact = ref
                if artifact_store is None:
                    raise CheckpointError(
                        f"it was saved to an artifact store ({ref.artifact_id!r}): pass the same "
                        "artifact_store to trial_checkpoint"
                    )
                encoded = read_body(artifact_store, ref)
                body = _codec.decode(encoded)
            return SavedState(body[_STATE], steps, body.get(_PATH), encoded)
        except CheckpointError as e:
            raise type(e)(f"{what} cannot be trusted: {e}." + _REMEDY) from e
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CorruptCheckpointError(f"{what} is not a trial state." + _REMEDY) from e

    def trial_finished(self, attachment: Attachment, trial_id: int, *, cut_off: bool) -> None:
        """Delete the state of a trial that finished; keep it for one that was cut off.

        Called from the sampler's ``after_trial``, after the trial's checkpoint was recorded.
        ``cut_off``: Ctrl-C cut the trial off (the resume retries it); a kill never gets here.
        """
        with self._lock:
            attempt = self._attempts.pop(trial_id, None)
        self._remove_stored_ends_artifacts(attachment)
        if attempt is None or self._keep or cut_off:
            return
        key = attempt.logical_trial
        if attachment.atomic:
            attachment.store.delete_trial_state_with_trial_end(attachment.study_uid, trial_id, key)
        else:
            attachment.store.delete_trial_state(attachment.study_uid, key)
        if attempt.artifact_store is None:
            return
        if not attachment.atomic:
            # The record went just now, not with the trial's end: nothing points to them.
            remove_slots(attempt.artifact_store, attachment.study_uid, key)
            return
        with self._lock:
            self._to_remove.append(
                _Slots(attempt.artifact_store, attachment.study_uid, key, trial_id)
            )

    def _remove_stored_ends_artifacts(self, attachment: Attachment) -> None:
        """Remove the artifacts of finished trials whose end is stored by now.

        Not before: a kill between this trial's ``after_trial`` and the commit of its end leaves
        it RUNNING, and its retry needs them.
        """
        with self._lock:
            pending, self._to_remove = self._to_remove, []
        for slots in pending:
            if attachment.storage.get_trial(slots.trial_id).state.is_finished():
                remove_slots(slots.store, slots.study_uid, slots.logical_trial)
            else:
                with self._lock:
                    self._to_remove.append(slots)


def sealed_state(sealer: Sealer, study_uid: str, record: TrialStateRecord) -> TrialStateRecord:
    """``record`` with its seal, over the study, the logical trial, the attempt and the payload."""
    return replace(record, checksum=sealer.seal(_as_checkpoint(record), _where(study_uid, record)))


def check_state_seal(sealer: Sealer, study_uid: str, record: TrialStateRecord) -> None:
    """Check the seal of a saved trial state, as :meth:`Sealer.check` checks a checkpoint's.

    Raises:
        CorruptCheckpointError: The record does not match its seal.
        SignatureError: Its signature cannot be checked with this sealer's key.
    """
    sealer.check(_as_checkpoint(record), _where(study_uid, record))


def _where(study_uid: str, record: TrialStateRecord) -> str:
    return place(study_uid, _PLACE, record.trial_id, record.logical_trial)


def _as_checkpoint(record: TrialStateRecord) -> Checkpoint:
    """The record as the sealer reads a checkpoint: no trial end, no library versions."""
    return Checkpoint(
        trial_id=record.trial_id,
        logical_number=record.logical_trial,
        trial_state=None,
        trial_values=None,
        adapter=ADAPTER,
        payload=record.payload,
        checksum=record.checksum,
    )
