"""What a sampler holds while it is attached to a study: its stream, lease and logical view.

An attachment is opened on a sampler's first hook and lives as long as the sampler. Its lease is
released when the sampler is collected or the interpreter exits (including after Ctrl-C), so the
next process resumes at once instead of first proving this one gone.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
from dataclasses import dataclass
from dataclasses import field
import os
from typing import TYPE_CHECKING
from typing import Any
import weakref

from optuna_checkpoint._logging import get_logger
from optuna_checkpoint.study._logical import HiddenTrials


if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from optuna_checkpoint.attach._lease import Heartbeat
    from optuna_checkpoint.state._rows import SealedRows
    from optuna_checkpoint.stores._base import CheckpointStore
    from optuna_checkpoint.stores._base import Owner
    from optuna_checkpoint.stores._base import Stream


_logger = get_logger(__name__)


@dataclass(eq=False)
class Attachment:
    """A sampler's hold on one study's checkpoint stream.

    Attributes:
        storage: The study's Optuna storage.
        study_id: The study's id in it.
        study_uid: The study's identity across processes (``study._identity.study_uid``).
        store: The checkpoint store of the storage.
        rows: The study's interruptions and claims in that store, sealed and checked with the
            sampler's key.
        stream: The stream this sampler writes, whose lease it holds.
        owner: This process, as the lease names it.
        heartbeat: Refreshes the lease while trials run (``None`` for in-memory studies).
        atomic: Whether checkpoints ride in the commit of the trial's end (the store has a
            commit hook and Optuna still stores trials the way it expects).
        hidden: The interrupted trials hidden from the wrapped sampler.
        trials_in_progress: Trials between their ``before_trial`` and their checkpoint.
        superseded: Another sampler of this process took the stream over.
        lineage: The lineage of the sampler holding it (shared with that sampler's copies).
    """

    storage: BaseStorage
    study_id: int
    study_uid: str
    store: CheckpointStore
    rows: SealedRows
    stream: Stream
    owner: Owner
    heartbeat: Heartbeat | None
    atomic: bool
    hidden: HiddenTrials = field(default_factory=HiddenTrials)
    trials_in_progress: set[int] = field(default_factory=set)
    superseded: bool = False
    lineage: str = ""
    _finalizer: weakref.finalize[Any, Any] | None = None

    def of(self, storage: BaseStorage, study_id: int) -> bool:
        """Whether this is the attachment to that study (the same storage object and id)."""
        return self.storage is storage and self.study_id == study_id

    def idle(self) -> bool:
        """No trial of this attachment is between its first hook and its checkpoint."""
        return not self.trials_in_progress

    def release_with(self, holder: object) -> None:
        """Release the lease when ``holder`` is collected or the interpreter exits."""
        self._finalizer = weakref.finalize(holder, _release, self)
        _live.add(self)

    def release(self) -> None:
        """Stop the heartbeat and give the lease back (at most once)."""
        if self._finalizer is not None:
            self._finalizer()
        else:
            _release(self)

    def supersede(self) -> None:
        """Hand the stream to another sampler of this process: this one stops using it."""
        self.superseded = True
        if self.heartbeat is not None:
            self.heartbeat.stop()


_live: weakref.WeakSet[Attachment] = weakref.WeakSet()


def live_attachment(token: str) -> Attachment | None:
    """The attachment of this process holding the lease ``token``, if any.

    Not one inherited through ``fork``: the lease is the parent's, which lives on.
    """
    pid = os.getpid()
    for attachment in list(_live):
        owner = attachment.owner
        if owner.token == token and owner.pid == pid and not attachment.superseded:
            return attachment
    return None


@contextlib.contextmanager
def released_on_failure(attachment: Attachment) -> Iterator[Attachment]:
    """Release the lease if the block fails: a mismatch, a corrupt checkpoint, Ctrl-C.

    The lease must not stay with a token no sampler holds: a retry in this process would be
    refused as if another process owned the stream.
    """
    try:
        yield attachment
    except BaseException:
        attachment.release()
        raise


def _release(attachment: Attachment) -> None:
    _live.discard(attachment)
    if attachment.owner.pid != os.getpid():
        return  # inherited through fork (a ProcessPoolExecutor worker): the parent's lease
    if attachment.heartbeat is not None:
        attachment.heartbeat.stop()
    try:
        # A no-op if another sampler took the stream over.
        attachment.store.release(attachment.stream.stream_id, attachment.owner.token)
    except Exception:
        _logger.debug("Could not release the checkpoint lease.", exc_info=True)
