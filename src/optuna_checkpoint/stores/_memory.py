"""An in-memory store, for studies in :class:`optuna.storages.InMemoryStorage` and for tests.

It keeps everything in the process, so nothing survives the process: a study in memory cannot be
resumed elsewhere anyway. Checkpoints are saved in ``after_trial`` (no commit hook).
"""

from __future__ import annotations

from collections.abc import Collection
from collections.abc import Sequence
from dataclasses import replace
import itertools
import threading
from typing import Any
import weakref

from optuna.storages import BaseStorage

from optuna_checkpoint.exceptions import StreamOwnedError
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import CheckpointStore
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._base import Owner
from optuna_checkpoint.stores._base import Stream


class InMemoryCheckpointStore(CheckpointStore):
    """Streams, checkpoints and interruptions in dictionaries guarded by one lock."""

    _instances: weakref.WeakKeyDictionary[BaseStorage, InMemoryCheckpointStore] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._streams: dict[tuple[str, str], Stream] = {}
        self._checkpoints: dict[int, dict[int | None, Checkpoint]] = {}
        self._interruptions: dict[str, dict[int, Interruption]] = {}
        self._claims: dict[str, dict[int, int]] = {}

    @classmethod
    def for_storage(cls, storage: BaseStorage) -> InMemoryCheckpointStore:
        """Return the store that belongs to ``storage``."""
        store = cls._instances.get(storage)
        if store is None:
            store = cls._instances[storage] = cls()
        return store

    def __repr__(self) -> str:
        return "InMemoryCheckpointStore()"

    def _by_id(self, stream_id: int) -> Stream:
        return next(s for s in self._streams.values() if s.stream_id == stream_id)

    def _set(self, stream: Stream) -> Stream:
        self._streams[(stream.study_uid, stream.name)] = stream
        return stream

    def find_stream(self, study_uid: str, name: str) -> Stream | None:
        """Return the stream, or ``None``."""
        with self._lock:
            return self._streams.get((study_uid, name))

    def list_streams(self, study_uid: str) -> list[Stream]:
        """Return the study's streams in creation order."""
        with self._lock:
            found = [s for s in self._streams.values() if s.study_uid == study_uid]
        return sorted(found, key=lambda s: s.stream_id)

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
        """Create the stream with its initial checkpoint."""
        with self._lock:
            if (study_uid, name) in self._streams:
                return None
            stream = Stream(
                next(self._ids), study_uid, name, fingerprint, owner, 0.0, first_trial_number
            )
            self._checkpoints[stream.stream_id] = {None: initial}
            return self._set(stream)

    def reset_stream(
        self,
        stream: Stream,
        fingerprint: Any,
        owner: Owner,
        initial: Checkpoint,
        *,
        first_trial_number: int,
    ) -> Stream | None:
        """Drop the stream's checkpoints and restart it."""
        with self._lock:
            if self._by_id(stream.stream_id).owner != stream.owner:
                return None
            self._checkpoints[stream.stream_id] = {None: initial}
            return self._set(
                replace(
                    stream,
                    fingerprint=fingerprint,
                    owner=owner,
                    first_trial_number=first_trial_number,
                )
            )

    def take_over(self, stream: Stream, owner: Owner, now: float) -> bool:
        """Compare-and-swap the owner."""
        with self._lock:
            if self._by_id(stream.stream_id).owner != stream.owner:
                return False
            self._set(replace(stream, owner=owner, heartbeat_at=now))
            return True

    def heartbeat(self, stream_id: int, token: str, now: float) -> bool:
        """Refresh the lease."""
        with self._lock:
            stream = self._by_id(stream_id)
            if stream.owner is None or stream.owner.token != token:
                return False
            self._set(replace(stream, heartbeat_at=now))
            return True

    def release(self, stream_id: int, token: str) -> None:
        """Give the lease up."""
        with self._lock:
            stream = self._by_id(stream_id)
            if stream.owner is not None and stream.owner.token == token:
                self._set(replace(stream, owner=None))

    def save(self, stream: Stream, checkpoint: Checkpoint, token: str, now: float) -> None:
        """Save a checkpoint, replacing one of the same trial."""
        if not self.heartbeat(stream.stream_id, token, now):
            raise StreamOwnedError("this process no longer owns the checkpoint stream")
        with self._lock:
            by_trial = self._checkpoints[stream.stream_id]
            by_trial.pop(checkpoint.trial_id, None)
            by_trial[checkpoint.trial_id] = checkpoint

    def latest_checkpoints(
        self, stream_id: int, *, excluding: Collection[int], limit: int
    ) -> list[Checkpoint]:
        """Return the stream's newest checkpoints, skipping the trials in ``excluding``."""
        with self._lock:
            saved = list(self._checkpoints[stream_id].values())
        kept = [c for c in reversed(saved) if c.trial_id is None or c.trial_id not in excluding]
        return kept[:limit]

    def where_interrupted(self, study_uid: str) -> list[Interruption]:
        """Return the study's interrupted trials in trial-number order."""
        with self._lock:
            found = list(self._interruptions.get(study_uid, {}).values())
        return sorted(found, key=lambda i: i.trial_number)

    def add_interruptions(
        self, study_id: int, study_uid: str, interruptions: Sequence[Interruption]
    ) -> None:
        """Record interrupted trials; known ones are skipped."""
        with self._lock:
            known = self._interruptions.setdefault(study_uid, {})
            for interruption in interruptions:
                known.setdefault(interruption.trial_id, interruption)

    def claim_trial(self, stream: Stream, study_id: int, trial_id: int) -> bool:
        """Claim the trial for the stream unless another stream has it."""
        with self._lock:
            claims = self._claims.setdefault(stream.study_uid, {})
            return claims.setdefault(trial_id, stream.stream_id) == stream.stream_id

    def claims(self, study_uid: str, trial_ids: Collection[int]) -> dict[int, int]:
        """Return the claiming stream of each claimed trial among ``trial_ids``."""
        with self._lock:
            claims = self._claims.get(study_uid, {})
            return {t: claims[t] for t in trial_ids if t in claims}
