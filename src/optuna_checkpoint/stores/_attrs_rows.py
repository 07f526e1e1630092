"""Interruptions and claims in Optuna's study and trial attributes: half of the attribute store.

:class:`~._attrs.AttributeCheckpointStore` adds the streams, checkpoints and trial states. Here:

* study attribute ``optuna_checkpoint:interrupted:<trial id>``: one interrupted trial, with its
  seal;
* trial attribute ``optuna_checkpoint:stream``: the stream that claimed the trial and the
  claim's seal (releases before sealed rows wrote the stream id alone);
* study attribute ``optuna_checkpoint:unsealed_rows_until``: the newest trial id whose
  interruption or claim may lack a seal, recorded before this release first writes in a study.

Every record of a study names its ``study_uid``: a record of another uid is a deleted study's
whose id was reused, and is ignored.
"""

from __future__ import annotations

from collections.abc import Collection
from collections.abc import Sequence
from dataclasses import asdict
from dataclasses import replace
import threading
from typing import Any

from optuna.storages import BaseStorage

from optuna_checkpoint.stores._base import ANY_UNSEALED_ROWS
from optuna_checkpoint.stores._base import NO_UNSEALED_ROWS
from optuna_checkpoint.stores._base import REASON_CHARS
from optuna_checkpoint.stores._base import CheckpointStore
from optuna_checkpoint.stores._base import Claim
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._base import Stream
from optuna_checkpoint.stores._base import require_seals


STREAM_PREFIX = "optuna_checkpoint:stream:"
"""The prefix of the study attributes holding streams (one per stream name)."""
INTERRUPTED_PREFIX = "optuna_checkpoint:interrupted:"
"""The prefix of the study attributes holding interruptions (one per trial id)."""
CLAIM_ATTR = "optuna_checkpoint:stream"
"""The trial attribute holding the trial's claim."""
_UNSEALED_ATTR = "optuna_checkpoint:unsealed_rows_until"


def of_study(value: Any, study_uid: str) -> dict[str, Any] | None:
    """``value`` if it is a record of the study ``study_uid`` (not of a deleted namesake)."""
    if isinstance(value, dict) and value.get("study_uid") == study_uid:
        return value
    return None


def _claim_from_attr(value: Any) -> Claim | None:
    """A claim as a trial attribute holds it: a record, or a bare stream id (unsealed)."""
    if isinstance(value, dict):
        return Claim(int(value["stream_id"]), value.get("seal"))
    return None if value is None else Claim(int(value))


class AttributeRows(CheckpointStore):
    """The interruptions and claims of :class:`~._attrs.AttributeCheckpointStore`.

    Holds the storage, the lock that serialises this store object's read-modify-writes, and
    which study id each study uid names.
    """

    def __init__(self, storage: BaseStorage) -> None:
        self._storage = storage
        self._lock = threading.RLock()
        self._study_ids: dict[str, int] = {}  # study uid -> study id, learnt on first use
        self._bounded: set[str] = set()  # studies whose bound of unsealed rows is recorded

    def open_study(self, study_id: int, study_uid: str) -> None:
        """Learn which study a uid names: the attributes are addressed by study id."""
        self._study_ids[study_uid] = study_id

    def _study_id(self, study_uid: str) -> int:
        try:
            return self._study_ids[study_uid]
        except KeyError:
            raise LookupError(f"study {study_uid} was never opened through this store") from None

    # -- interruptions and claims ------------------------------------------------------------

    def where_interrupted(self, study_uid: str) -> list[Interruption]:
        """Return the study's interrupted trials in trial-number order."""
        attrs = self._storage.get_study_system_attrs(self._study_id(study_uid))
        found = [
            Interruption(**{k: v for k, v in value.items() if k != "study_uid"})
            for key, value in attrs.items()
            if key.startswith(INTERRUPTED_PREFIX) and of_study(value, study_uid) is not None
        ]
        return sorted(found, key=lambda i: i.trial_number)

    def add_interruptions(
        self, study_id: int, study_uid: str, interruptions: Sequence[Interruption]
    ) -> None:
        """Record interrupted trials (one attribute each, so concurrent writers never clash)."""
        require_seals(interruptions)
        self.open_study(study_id, study_uid)
        self._record_unsealed_bound(study_uid)
        known = {i.trial_id for i in self.where_interrupted(study_uid)}
        for interruption in interruptions:
            if interruption.trial_id in known:
                continue  # recorded before: the first record stands
            interruption = replace(interruption, reason=interruption.reason[:REASON_CHARS])
            self._storage.set_study_system_attr(
                study_id,
                f"{INTERRUPTED_PREFIX}{interruption.trial_id}",
                {**asdict(interruption), "study_uid": study_uid},
            )

    def claim_trial(self, stream: Stream, study_id: int, trial_id: int, seal: str) -> bool:
        """Claim the trial for the stream in the trial's own attributes (checked)."""
        self.open_study(study_id, stream.study_uid)
        self._record_unsealed_bound(stream.study_uid)
        with self._lock:
            claimed = _claim_from_attr(
                self._storage.get_trial_system_attrs(trial_id).get(CLAIM_ATTR)
            )
            if claimed is not None:
                return claimed.stream_id == stream.stream_id
            record: dict[str, Any] = {"stream_id": stream.stream_id, "seal": seal}
            self._storage.set_trial_system_attr(trial_id, CLAIM_ATTR, record)
            written = self._storage.get_trial_system_attrs(trial_id).get(CLAIM_ATTR)
            return bool(written == record)

    def claims(self, study_uid: str, trial_ids: Collection[int]) -> dict[int, Claim]:
        """Return the claim of each claimed trial among ``trial_ids``."""
        found = {}
        for trial_id in trial_ids:
            claim = _claim_from_attr(
                self._storage.get_trial_system_attrs(trial_id).get(CLAIM_ATTR)
            )
            if claim is not None:
                found[trial_id] = claim
        return found

    def unsealed_rows_until(self, study_uid: str) -> int:
        """As recorded before this release first wrote a row in the study."""
        attrs = self._storage.get_study_system_attrs(self._study_id(study_uid))
        recorded = of_study(attrs.get(_UNSEALED_ATTR), study_uid)
        return ANY_UNSEALED_ROWS if recorded is None else int(recorded["trial_id"])

    def _newest_unsealed_row(self, study_uid: str) -> int:
        """The newest trial id of an interruption or claim without a seal (reads every trial)."""
        unsealed = [i.trial_id for i in self.where_interrupted(study_uid) if not i.seal]
        for trial in self._storage.get_all_trials(self._study_id(study_uid), deepcopy=False):
            claim = _claim_from_attr(trial.system_attrs.get(CLAIM_ATTR))
            if claim is not None and not claim.seal:
                unsealed.append(trial._trial_id)
        return max(unsealed, default=NO_UNSEALED_ROWS)

    def _record_unsealed_bound(self, study_uid: str) -> None:
        """Record, once per study, the newest trial whose rows an earlier release wrote unsealed.

        Called before this release writes a stream or a row in a study; read once per process
        and study. Computed (reading every trial's attributes) only in a study where an
        earlier release left a stream, the first time; in a new study, no row lacks a seal.
        """
        if study_uid in self._bounded:
            return
        study_id = self._study_id(study_uid)
        with self._lock:
            attrs = self._storage.get_study_system_attrs(study_id)
            if of_study(attrs.get(_UNSEALED_ATTR), study_uid) is None:
                bound = NO_UNSEALED_ROWS
                # Only an earlier release's sampler, which left a stream, wrote unsealed rows.
                if any(
                    k.startswith(STREAM_PREFIX) and of_study(v, study_uid)
                    for k, v in attrs.items()
                ):
                    bound = self._newest_unsealed_row(study_uid)
                record: dict[str, Any] = {"study_uid": study_uid, "trial_id": bound}
                self._storage.set_study_system_attr(study_id, _UNSEALED_ATTR, record)
            self._bounded.add(study_uid)
