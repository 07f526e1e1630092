"""A store kept in the study's own system attributes, through Optuna's public storage API only.

For storages this package cannot reach beneath, above all :class:`optuna.storages.GrpcStorageProxy`
(the server holds the database; the client sees only Optuna's storage calls), and for
:class:`optuna.storages.InMemoryStorage`. Everything is JSON:

* study attribute ``optuna_checkpoint:stream:<name>``: the stream (id, fingerprint, lease) and
  its newest few checkpoints, the payload in base64;
* interruptions and claims, in attributes of the study and of the trials, as
  :mod:`._attrs_rows` says;
* study attribute ``optuna_checkpoint:trial_state:<logical trial>``: a logical trial's saved
  state (``trial_checkpoint``), the payload in base64; ``None`` once deleted, since Optuna's API
  cannot delete an attribute. One attribute write replaces it whole.

Only the initial and the newest :data:`KEPT_CHECKPOINTS` checkpoints of a stream are kept, so the
attributes stay small and a resume reads a bounded amount whatever the study's size. Optuna's
storage API has no transactions and no compare-and-swap, so the conditional writes of the store
contract are *checked*, not atomic: each is a read, a write and a read-back. Two processes
racing within those few milliseconds for the same lease or trial could both believe they won;
with one process per worker id, as the sampler enforces, that needs two workers started within
the same instant on the same id. The checkpoint is written before Optuna stores the trial's end,
and the sampler rolls a trial forward on resume if only the checkpoint made it (no commit hook).
"""

from __future__ import annotations

import base64
from collections.abc import Collection
from collections.abc import Sequence
from dataclasses import asdict
import hashlib
import time
from typing import Any
from typing import ClassVar

from optuna.storages import BaseStorage

from optuna_checkpoint.exceptions import StreamOwnedError
from optuna_checkpoint.stores._attrs_rows import CLAIM_ATTR
from optuna_checkpoint.stores._attrs_rows import INTERRUPTED_PREFIX
from optuna_checkpoint.stores._attrs_rows import STREAM_PREFIX
from optuna_checkpoint.stores._attrs_rows import AttributeRows
from optuna_checkpoint.stores._attrs_rows import of_study
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import Owner
from optuna_checkpoint.stores._base import PlantedStream
from optuna_checkpoint.stores._base import Resealed
from optuna_checkpoint.stores._base import RowsFor
from optuna_checkpoint.stores._base import StoreRegistry
from optuna_checkpoint.stores._base import Stream
from optuna_checkpoint.stores._base import StreamSummary
from optuna_checkpoint.stores._base import TrialStateRecord
from optuna_checkpoint.stores._base import TrialStateSummary
from optuna_checkpoint.stores._plant import plant_step_by_step


KEPT_CHECKPOINTS = 4
"""Newest trial checkpoints kept per stream besides the initial one; a resume needs two."""

_TRIAL_STATE_PREFIX = "optuna_checkpoint:trial_state:"


def _stream_id(study_uid: str, name: str) -> int:
    # Stable across processes without a counter to coordinate; 48 bits fit every integer column.
    return int.from_bytes(hashlib.sha256(f"{study_uid}/{name}".encode()).digest()[:6], "big")


def _checkpoint_to_json(checkpoint: Checkpoint) -> dict[str, Any]:
    data = asdict(checkpoint)
    data["payload"] = base64.b64encode(checkpoint.payload).decode()
    if checkpoint.trial_values is not None:
        data["trial_values"] = [float(v).hex() for v in checkpoint.trial_values]
    return data


def _checkpoint_from_json(data: dict[str, Any]) -> Checkpoint:
    values = data["trial_values"]
    return Checkpoint(
        trial_id=data["trial_id"],
        logical_number=data["logical_number"],
        trial_state=data["trial_state"],
        trial_values=None if values is None else [float.fromhex(v) for v in values],
        adapter=data["adapter"],
        payload=base64.b64decode(data["payload"]),
        checksum=data["checksum"],
        versions=data.get("versions"),  # absent in attributes of releases before 0.4
    )


class AttributeCheckpointStore(AttributeRows):
    """Streams, checkpoints, claims and interruptions in Optuna's study and trial attributes.

    One per storage object (:meth:`for_storage`); a store object serialises its own writes with
    a lock, so threads of one process (``n_jobs > 1``) never interleave a read-modify-write.
    Interruptions and claims are kept as :class:`~._attrs_rows.AttributeRows` says.
    """

    kept_checkpoints = KEPT_CHECKPOINTS
    # Every read of a study's attributes carries the live trial states (base64, a third more),
    # and GrpcStorageProxy's messages stop at 4 MiB.
    trial_state_limit = 1 << 20
    _registry: ClassVar[StoreRegistry[AttributeCheckpointStore]] = StoreRegistry()

    @classmethod
    def for_storage(cls, storage: BaseStorage) -> AttributeCheckpointStore:
        """Return the store of ``storage``."""
        return cls._registry.get(storage, lambda: cls(storage))

    def __repr__(self) -> str:
        return f"AttributeCheckpointStore({type(self._storage).__name__})"

    # -- streams ---------------------------------------------------------------------------

    def _read(self, study_uid: str, name: str) -> dict[str, Any] | None:
        attrs = self._storage.get_study_system_attrs(self._study_id(study_uid))
        return of_study(attrs.get(STREAM_PREFIX + name), study_uid)

    def _write(self, study_uid: str, data: dict[str, Any]) -> None:
        self._storage.set_study_system_attr(
            self._study_id(study_uid), STREAM_PREFIX + data["name"], data
        )

    @staticmethod
    def _stream(study_uid: str, data: dict[str, Any]) -> Stream:
        owner = data["owner"]
        return Stream(
            stream_id=data["stream_id"],
            study_uid=study_uid,
            name=data["name"],
            fingerprint=data["fingerprint"],
            owner=None if owner is None else Owner(**owner),
            heartbeat_at=data["heartbeat_at"],
            first_trial_number=data["first_trial_number"],
        )

    def _by_id(self, stream_id: int) -> tuple[str, dict[str, Any]]:
        for study_uid, study_id in self._study_ids.items():
            for key, value in self._storage.get_study_system_attrs(study_id).items():
                data = of_study(value, study_uid) if key.startswith(STREAM_PREFIX) else None
                if data is not None and data["stream_id"] == stream_id:
                    return study_uid, data
        raise LookupError(f"no stream {stream_id}")

    def find_stream(self, study_uid: str, name: str) -> Stream | None:
        """Return the stream, or ``None``."""
        data = self._read(study_uid, name)
        return None if data is None else self._stream(study_uid, data)

    def list_streams(self, study_uid: str) -> list[Stream]:
        """Return the study's streams in creation order."""
        attrs = self._storage.get_study_system_attrs(self._study_id(study_uid))
        found = [
            self._stream(study_uid, value)
            for key, value in attrs.items()
            if key.startswith(STREAM_PREFIX) and of_study(value, study_uid) is not None
        ]
        return sorted(found, key=lambda s: (s.heartbeat_at, s.name))

    def create_stream(
        self,
        study_id: int,
        study_uid: str,
        name: str,
        fingerprint: Any,
        owner: Owner,
        initial: Checkpoint,
        *,
        first_trial_number: int,
    ) -> Stream | None:
        """Create the stream unless it exists; checked by reading it back."""
        self.open_study(study_id, study_uid)
        with self._lock:
            if self._read(study_uid, name) is not None:
                return None
            self._forget_deleted_namesakes(study_id, study_uid)
            self._record_unsealed_bound(study_uid)
            # An attribute of another uid is a deleted study's whose id was reused: replaced.
            data = {
                "study_uid": study_uid,
                "stream_id": _stream_id(study_uid, name),
                "name": name,
                "fingerprint": fingerprint,
                "owner": asdict(owner),
                "heartbeat_at": time.time(),
                "first_trial_number": first_trial_number,
                "checkpoints": [_checkpoint_to_json(initial)],
            }
            self._write(study_uid, data)
            written = self._read(study_uid, name)
        if written is None or written["owner"] != asdict(owner):
            return None
        return self._stream(study_uid, written)

    def _forget_deleted_namesakes(self, study_id: int, study_uid: str) -> None:
        # Optuna's API cannot delete an attribute; a deleted study's records, left under a
        # reused id, are blanked instead (readers skip records of other uids anyway).
        for key, value in self._storage.get_study_system_attrs(study_id).items():
            stale = isinstance(value, dict) and value.get("study_uid") != study_uid
            if stale and key.startswith((STREAM_PREFIX, INTERRUPTED_PREFIX, _TRIAL_STATE_PREFIX)):
                self._storage.set_study_system_attr(study_id, key, None)

    def _swap_owner(self, stream: Stream, changes: dict[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            data = self._read(stream.study_uid, stream.name)
            expected = None if stream.owner is None else asdict(stream.owner)
            if data is None or data["owner"] != expected:
                return None
            data.update(changes)
            self._write(stream.study_uid, data)
            written = self._read(stream.study_uid, stream.name)
        return written if written is not None and written["owner"] == data["owner"] else None

    def reset_stream(
        self,
        stream: Stream,
        fingerprint: Any,
        owner: Owner,
        initial: Checkpoint,
        *,
        first_trial_number: int,
    ) -> Stream | None:
        """Drop the stream's checkpoints and restart it, if ``stream.owner`` still owns it."""
        written = self._swap_owner(
            stream,
            {
                "fingerprint": fingerprint,
                "owner": asdict(owner),
                "heartbeat_at": time.time(),
                "first_trial_number": first_trial_number,
                "checkpoints": [_checkpoint_to_json(initial)],
            },
        )
        return None if written is None else self._stream(stream.study_uid, written)

    def take_over(self, stream: Stream, owner: Owner, now: float) -> bool:
        """Make ``owner`` the owner if the owner is still ``stream.owner`` (checked)."""
        return self._swap_owner(stream, {"owner": asdict(owner), "heartbeat_at": now}) is not None

    def _update_if_owner(self, stream_id: int, token: str, changes: dict[str, Any]) -> bool:
        with self._lock:
            study_uid, data = self._by_id(stream_id)
            if data["owner"] is None or data["owner"]["token"] != token:
                return False
            data.update(changes)
            self._write(study_uid, data)
            return True

    def heartbeat(self, stream_id: int, token: str, now: float) -> bool:
        """Refresh the lease."""
        return self._update_if_owner(stream_id, token, {"heartbeat_at": now})

    def release(self, stream_id: int, token: str) -> None:
        """Give the lease up."""
        self._update_if_owner(stream_id, token, {"owner": None})

    def _owned(self, stream: Stream, token: str, problem: str) -> dict[str, Any]:
        """The stream's record, if ``token`` holds its lease; else say ``problem``."""
        data = self._read(stream.study_uid, stream.name)
        if data is None or data["owner"] is None or data["owner"]["token"] != token:
            raise StreamOwnedError(f"{problem}; run one process per worker id.")
        return data

    # -- checkpoints -----------------------------------------------------------------------

    def save(self, stream: Stream, checkpoint: Checkpoint, token: str, now: float) -> None:
        """Keep ``checkpoint`` among the stream's newest ones, if ``token`` owns the stream."""
        with self._lock:
            data = self._owned(stream, token, "this process no longer owns the checkpoint stream")
            saved = [c for c in data["checkpoints"] if c["trial_id"] != checkpoint.trial_id]
            saved.append(_checkpoint_to_json(checkpoint))
            initial = [c for c in saved if c["trial_id"] is None]
            trials = [c for c in saved if c["trial_id"] is not None]
            data.update(checkpoints=initial + trials[-KEPT_CHECKPOINTS:], heartbeat_at=now)
            self._write(stream.study_uid, data)

    def latest_checkpoints(
        self, stream_id: int, *, excluding: Collection[int], limit: int
    ) -> list[Checkpoint]:
        """Return the stream's newest kept checkpoints, skipping the trials in ``excluding``."""
        _, data = self._by_id(stream_id)
        kept = [
            _checkpoint_from_json(c)
            for c in reversed(data["checkpoints"])
            if c["trial_id"] is None or c["trial_id"] not in excluding
        ]
        return kept[:limit]

    def stream_summary(self, stream_id: int) -> StreamSummary:
        """Count the stream's kept checkpoints (one attribute read)."""
        _, data = self._by_id(stream_id)
        saved = data["checkpoints"]
        newest = saved[-1] if saved else None
        return StreamSummary(
            checkpoints=len(saved),
            payload_bytes=sum(len(base64.b64decode(c["payload"])) for c in saved),
            newest_trial_id=None if newest is None else newest["trial_id"],
            newest_logical_number=None if newest is None else newest["logical_number"],
        )

    def delete_checkpoints(self, stream_id: int, trial_ids: Collection[int]) -> int:
        """Drop the trials' checkpoints from the stream's attribute.

        A read-modify-write like :meth:`save`, serialised with this process's saves by the
        store's lock. Optuna's API has no compare-and-swap, so a deletion from another process
        racing the owner's save could undo that save: prune from the owning process (the
        sampler's ``retention``), which is also where it is worth anything, since this store
        keeps only a few checkpoints per stream anyway.
        """
        doomed = set(trial_ids)
        with self._lock:
            study_uid, data = self._by_id(stream_id)
            kept = [
                c
                for c in data["checkpoints"]
                if c["trial_id"] is None or c["trial_id"] not in doomed
            ]
            deleted = len(data["checkpoints"]) - len(kept)
            if deleted:
                data.update(checkpoints=kept)
                self._write(study_uid, data)
        return deleted

    def plant_streams(
        self,
        study_id: int,
        study_uid: str,
        planted: Sequence[PlantedStream],
        rows_for: RowsFor,
        owner: Owner,
    ) -> None:
        """Plant the streams and their rows step by step, resumably (see :mod:`._plant`)."""
        plant_step_by_step(self, study_id, study_uid, planted, rows_for, owner)

    # -- trial states ------------------------------------------------------------------------

    def save_trial_state(
        self, stream: Stream, token: str, study_id: int, record: TrialStateRecord
    ) -> None:
        """Replace the logical trial's saved state with one attribute write (lease checked)."""
        with self._lock:
            self._owned(
                stream,
                token,
                "this process lost the checkpoint stream's lease to another process while its "
                "trial ran, so the trial's state was not saved",
            )
            self._storage.set_study_system_attr(
                study_id,
                f"{_TRIAL_STATE_PREFIX}{record.logical_trial}",
                {
                    "study_uid": stream.study_uid,
                    "trial_id": record.trial_id,
                    "payload": base64.b64encode(record.payload).decode(),
                    "checksum": record.checksum,
                },
            )

    def find_trial_state(self, study_uid: str, logical_trial: int) -> TrialStateRecord | None:
        """Return the logical trial's saved state, or ``None``."""
        attrs = self._storage.get_study_system_attrs(self._study_id(study_uid))
        data = of_study(attrs.get(f"{_TRIAL_STATE_PREFIX}{logical_trial}"), study_uid)
        if data is None:
            return None
        return TrialStateRecord(
            logical_trial, data["trial_id"], base64.b64decode(data["payload"]), data["checksum"]
        )

    def list_trial_states(self, study_uid: str) -> list[TrialStateSummary]:
        """The study's saved trial states, read from its system attributes."""
        attrs = self._storage.get_study_system_attrs(self._study_id(study_uid))
        found = []
        for key, value in attrs.items():
            data = of_study(value, study_uid) if key.startswith(_TRIAL_STATE_PREFIX) else None
            if data is not None:
                size = len(base64.b64decode(data["payload"]))
                found.append(
                    TrialStateSummary(int(key[len(_TRIAL_STATE_PREFIX) :]), data["trial_id"], size)
                )
        return sorted(found, key=lambda s: s.logical_trial)

    def where_trial_states(self, study_uid: str) -> list[TrialStateRecord]:
        """Return every state the study's logical trials saved (one attribute read)."""
        attrs = self._storage.get_study_system_attrs(self._study_id(study_uid))
        found = [
            self.find_trial_state(study_uid, int(key[len(_TRIAL_STATE_PREFIX) :]))
            for key, value in attrs.items()
            if key.startswith(_TRIAL_STATE_PREFIX) and of_study(value, study_uid) is not None
        ]
        return sorted((r for r in found if r is not None), key=lambda r: r.logical_trial)

    def reseal(self, study_uid: str, resealed: Resealed) -> None:
        """Rewrite each sealed record with its new seal: one attribute write per record."""
        study_id = self._study_id(study_uid)
        with self._lock:
            for stream_id, listed in resealed.checkpoints.items():
                _, data = self._by_id(stream_id)
                seals = {c.trial_id: c.checksum for c in listed}
                for saved in data["checkpoints"]:
                    saved["checksum"] = seals.get(saved["trial_id"], saved["checksum"])
                self._write(study_uid, data)
            for i in resealed.interruptions:
                record = {**asdict(i), "study_uid": study_uid}
                self._storage.set_study_system_attr(
                    study_id, f"{INTERRUPTED_PREFIX}{i.trial_id}", record
                )
            for trial_id, claim in resealed.claims.items():
                self._storage.set_trial_system_attr(trial_id, CLAIM_ATTR, asdict(claim))
            for r in resealed.trial_states:
                key = f"{_TRIAL_STATE_PREFIX}{r.logical_trial}"
                data = {"study_uid": study_uid, "trial_id": r.trial_id, "checksum": r.checksum}
                data["payload"] = base64.b64encode(r.payload).decode()
                self._storage.set_study_system_attr(study_id, key, data)

    def delete_trial_state(self, study_uid: str, logical_trial: int) -> bool:
        """Blank the logical trial's attribute; whether it held a state."""
        with self._lock:
            if self.find_trial_state(study_uid, logical_trial) is None:
                return False
            self._storage.set_study_system_attr(
                self._study_id(study_uid), f"{_TRIAL_STATE_PREFIX}{logical_trial}", None
            )
            return True
