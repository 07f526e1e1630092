"""The checkpoint store contract and the records that pass through it.

A store keeps, per study, named *streams* of checkpoints, one per worker. A stream records the
fingerprint of the sampler configuration that writes it and the lease of the process that owns it;
its checkpoints are the wrapped sampler's state after each finished trial, keyed by the trial's id.
Each trial a worker runs is *claimed* for its stream, so that a worker resuming its stream knows
which unfinished trials were its own and never touches another worker's. Independently of
streams, a store records which trials were *interrupted* (their process died) so that every
process hides them from the sampler in the same way.

Interruption and claim rows carry a seal, as checkpoints do, made and checked above the store
(:mod:`optuna_checkpoint.state._rows`): a store keeps it as it keeps any other field. Rows
written before rows were sealed have none; :meth:`CheckpointStore.unsealed_rows_until` says
which trials such rows may belong to.

Beside the streams, a store keeps the states that objectives save for their logical trials
(``trial_checkpoint``): one per logical trial, replaced by each save, so that a retried attempt
continues where an interrupted one saved.

Each study is identified by a ``study_uid`` derived from the study (see
``optuna_checkpoint._sampler.study_uid``), not by its id: SQLite reuses the ids of deleted
studies, and a recreated study must not see old checkpoints.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
import threading
from typing import Any
from typing import Generic
from typing import TypeVar
import weakref


ALL_CHECKPOINTS = 1 << 62
"""A ``limit`` of :meth:`CheckpointStore.latest_checkpoints` that lists every checkpoint (every
database accepts it in a ``LIMIT``)."""


@dataclass(frozen=True)
class Owner:
    """The process that holds a stream's lease.

    Attributes:
        token: Random per-sampler token; only the holder knows it.
        host: Host name.
        boot_id: Kernel boot id (Linux), to tell a rebooted host from a live one.
        pid: Process id.
        pid_start: The process's start time in kernel ticks, since pids are reused.
    """

    token: str
    host: str
    boot_id: str
    pid: int
    pid_start: str


@dataclass(frozen=True)
class Stream:
    """A stream of checkpoints written by one sampler configuration in one study.

    ``first_trial_number`` is the number of the first trial the stream ran: earlier trials of
    the study were never the stream's, so they are never taken for its interrupted trials.
    """

    stream_id: int
    study_uid: str
    name: str
    fingerprint: Any
    owner: Owner | None
    heartbeat_at: float
    first_trial_number: int


@dataclass(frozen=True)
class Checkpoint:
    """The wrapped sampler's state after one trial (or before the first, when initial).

    Attributes:
        trial_id: The finished trial, or ``None`` for the state captured before any trial.
        logical_number: The trial's number in the uninterrupted run; ``-1`` when initial.
        trial_state: The state the trial was told (``"COMPLETE"``, ``"PRUNED"``, ``"FAIL"``),
            so a trial whose final write was lost can be rolled forward.
        trial_values: The values the trial was told, if any.
        adapter: The name of the state adapter that wrote the payload.
        payload: The encoded state (see :mod:`optuna_checkpoint.state._codec`).
        checksum: The seal of the checkpoint, a digest or signature bound to its study,
            stream and trial (see :mod:`optuna_checkpoint.state._seal`).
        versions: The library versions of the process that wrote it (see
            :mod:`optuna_checkpoint.state._versions`); ``None`` for checkpoints of releases
            before 0.4.
    """

    trial_id: int | None
    logical_number: int
    trial_state: str | None
    trial_values: list[float] | None
    adapter: str
    payload: bytes
    checksum: str
    versions: dict[str, str] | None = None


REASON_CHARS = 255
"""The longest interruption reason a store keeps (a SQL column's width); longer ones are cut
before they are sealed."""

NO_UNSEALED_ROWS = -1
"""What :meth:`CheckpointStore.unsealed_rows_until` answers when every row must be sealed."""

ANY_UNSEALED_ROWS = 1 << 62
"""What :meth:`CheckpointStore.unsealed_rows_until` answers when a release from before rows
were sealed wrote last, so that any row may lack a seal."""


@dataclass(frozen=True)
class Interruption:
    """A trial whose process died before it finished; it is hidden and retried.

    ``stream_id`` is the stream whose worker retries it, or ``None`` for a trial no stream ran
    (one refused by a stream's owner). ``seal`` binds the row to its study and fields (see
    :mod:`optuna_checkpoint.state._rows`); ``None`` only in rows written before rows were
    sealed, and in rows on their way to being sealed.
    """

    trial_id: int
    trial_number: int
    logical_number: int
    reason: str
    stream_id: int | None = None
    seal: str | None = None


@dataclass(frozen=True)
class Claim:
    """The stream whose worker runs a trial, and the seal of that claim.

    ``seal`` is ``None`` only in claims written before claims were sealed.
    """

    stream_id: int
    seal: str | None = None


@dataclass(frozen=True)
class PlantedStream:
    """A stream to create, with its checkpoints, outside a running sampler (import, fork).

    ``checkpoints`` start with the initial one (``trial_id=None``); each is sealed for its
    place in the study and stream it goes to.
    """

    name: str
    fingerprint: Any
    first_trial_number: int
    checkpoints: Sequence[Checkpoint]


RowsFor = Callable[[Mapping[str, int]], tuple[Sequence[Interruption], Mapping[int, Claim]]]
"""Given the ids the planted streams got, by name, the sealed rows that name them: the
interruptions, and the claims by trial id."""


def require_seals(interruptions: Sequence[Interruption]) -> None:
    """Refuse to store an interruption that is not sealed: new rows always are."""
    unsealed = [i.trial_id for i in interruptions if not i.seal]
    if unsealed:
        raise ValueError(f"interruptions of trial ids {unsealed} are not sealed")


@dataclass(frozen=True)
class StreamSummary:
    """How many checkpoints a stream holds and how large they are, read without their payloads.

    Attributes:
        checkpoints: The number of checkpoints, the initial one included.
        payload_bytes: Their payloads' total size in bytes.
        newest_trial_id: The trial of the newest checkpoint; ``None`` when that is the initial
            one, or when the stream has no checkpoint at all.
        newest_logical_number: The newest checkpoint's logical number (``-1`` for the initial
            one); ``None`` when the stream has no checkpoint at all.
    """

    checkpoints: int
    payload_bytes: int
    newest_trial_id: int | None
    newest_logical_number: int | None


@dataclass(frozen=True)
class TrialStateRecord:
    """The state an objective saved for one logical trial, through ``trial_checkpoint``.

    Attributes:
        logical_trial: Which logical trial: its position in a deterministic parallel study,
            else the number of its first attempt.
        trial_id: The attempt (Optuna trial) that saved it.
        payload: The encoded state and the intermediate values reported before the save (see
            :mod:`optuna_checkpoint.record._trial_states`).
        checksum: The seal, bound to the study, the logical trial and the attempt.
    """

    logical_trial: int
    trial_id: int
    payload: bytes
    checksum: str


@dataclass(frozen=True)
class TrialStateSummary:
    """One saved trial state, as listed without its payload.

    Attributes:
        logical_trial: Which logical trial it belongs to.
        trial_id: The attempt that saved it.
        payload_bytes: The size of its encoded payload in the store (a reference only, when
            the body is in an artifact store).
    """

    logical_trial: int
    trial_id: int
    payload_bytes: int


@dataclass(frozen=True)
class Resealed:
    """A study's sealed records with new seals, nothing else changed: a re-keying's writes.

    ``checkpoints`` are by stream id, ``claims`` by trial id; ``trial_states`` are the states
    saved for logical trials.
    """

    checkpoints: Mapping[int, Sequence[Checkpoint]]
    interruptions: Sequence[Interruption]
    claims: Mapping[int, Claim]
    trial_states: Sequence[TrialStateRecord]


TRIAL_STATE_LIMIT = 8 << 20
"""The default bound on an encoded trial state, in bytes: well under MySQL's default
``max_allowed_packet`` (16 MiB), which a larger row would exceed."""


_StoreT = TypeVar("_StoreT", bound="CheckpointStore")


class StoreRegistry(Generic[_StoreT]):
    """One store per storage object, made on first request and forgotten with the storage.

    A store may hold per-storage state (the SQL store's commit hook, the journal's replica), so
    every sampler on one storage object must share it.
    """

    def __init__(self) -> None:
        self._stores: weakref.WeakKeyDictionary[Any, _StoreT] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, storage: Any, make: Callable[[], _StoreT]) -> _StoreT:
        """Return the store of ``storage``, calling ``make`` to create it the first time."""
        with self._lock:
            store = self._stores.get(storage)
            if store is None:
                store = self._stores[storage] = make()
            return store


class CheckpointStore(abc.ABC):
    """Where checkpoints, streams and interruptions live.

    Every method is one transaction: it either happens completely or not at all.
    """

    def open_study(self, study_id: int, study_uid: str) -> None:  # noqa: B027 - optional hook
        """Called once per process and study before any other method names ``study_uid``."""

    @abc.abstractmethod
    def find_stream(self, study_uid: str, name: str) -> Stream | None:
        """Return the stream, or ``None`` if there is none."""

    @abc.abstractmethod
    def list_streams(self, study_uid: str) -> list[Stream]:
        """Return all of the study's streams, in the order they were created."""

    @abc.abstractmethod
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
        """Create a stream owned by ``owner`` with its initial checkpoint.

        Returns ``None`` when another process created the same stream first. Rows left by a
        deleted study that had the same ``study_id`` are removed on the way.
        """

    @abc.abstractmethod
    def reset_stream(
        self,
        stream: Stream,
        fingerprint: Any,
        owner: Owner,
        initial: Checkpoint,
        *,
        first_trial_number: int,
    ) -> Stream | None:
        """Drop a stream's checkpoints and restart it; ``None`` if its owner changed meanwhile."""

    @abc.abstractmethod
    def take_over(self, stream: Stream, owner: Owner, now: float) -> bool:
        """Make ``owner`` the stream's owner if the owner is still ``stream.owner``.

        A compare-and-swap: returns ``False`` when another process took it first.
        """

    @abc.abstractmethod
    def heartbeat(self, stream_id: int, token: str, now: float) -> bool:
        """Refresh the lease; ``False`` if ``token`` no longer owns the stream."""

    @abc.abstractmethod
    def release(self, stream_id: int, token: str) -> None:
        """Give the lease up, if ``token`` still holds it (a no-op otherwise).

        Called from a finalizer, possibly at interpreter exit right after a Ctrl-C: it must not
        block for long, and may fail (the lease then expires or its owner is seen to be gone).
        """

    @abc.abstractmethod
    def save(self, stream: Stream, checkpoint: Checkpoint, token: str, now: float) -> None:
        """Save a checkpoint in its own transaction; saving a trial again overwrites it.

        Raises:
            StreamOwnedError: ``token`` no longer owns the stream.
        """

    @abc.abstractmethod
    def latest_checkpoints(
        self, stream_id: int, *, excluding: Collection[int], limit: int
    ) -> list[Checkpoint]:
        """Return up to ``limit`` of the stream's newest checkpoints, newest first.

        Checkpoints of the trials in ``excluding`` (hidden trials) are skipped. The cost must
        not grow with the number of checkpoints: a resume reads only the newest ones. A store
        may keep only its newest few checkpoints per stream (:attr:`kept_checkpoints`).
        """

    @abc.abstractmethod
    def stream_summary(self, stream_id: int) -> StreamSummary:
        """Count the stream's checkpoints and their bytes, and name the newest one.

        The checkpoints counted are those :meth:`latest_checkpoints` lists (a trial saved twice
        counts once); hidden trials' checkpoints are counted too. Meant for tools, not for the
        per-trial path: a store may read every checkpoint's header, but should not return
        payloads.
        """

    deletion_unsupported: str | None = None
    """Why :meth:`delete_checkpoints` cannot work on this store, or ``None`` when it can."""

    @abc.abstractmethod
    def delete_checkpoints(self, stream_id: int, trial_ids: Collection[int]) -> int:
        """Delete the checkpoints of the trials ``trial_ids`` from the stream, in one transaction.

        The initial checkpoint is never deleted, whatever ``trial_ids`` holds; trials without a
        checkpoint in the stream are skipped. Deleting needs no lease: it is meant for older
        checkpoints, which a live owner no longer reads (a resume reads only the newest two).

        Returns:
            How many checkpoints were deleted.

        Raises:
            CheckpointError: The store cannot delete checkpoints
                (:attr:`deletion_unsupported` says why).
        """

    def all_checkpoints(self, stream_id: int) -> list[Checkpoint]:
        """Return every checkpoint of the stream, oldest first (for tools, not for resumes)."""
        return self.latest_checkpoints(stream_id, excluding=(), limit=ALL_CHECKPOINTS)[::-1]

    @abc.abstractmethod
    def where_interrupted(self, study_uid: str) -> list[Interruption]:
        """Return the study's interrupted trials in trial-number order."""

    def resume_point(
        self, study_uid: str, stream_id: int, *, limit: int
    ) -> tuple[list[Interruption], list[Checkpoint]]:
        """Return what a resume starts from, read together.

        That is :meth:`where_interrupted` of the study, and :meth:`latest_checkpoints` of the
        stream, excluding the interrupted trials. A store may read both in one go.
        """
        known = self.where_interrupted(study_uid)
        excluding = {i.trial_id for i in known}
        return known, self.latest_checkpoints(stream_id, excluding=excluding, limit=limit)

    @abc.abstractmethod
    def add_interruptions(
        self, study_id: int, study_uid: str, interruptions: Sequence[Interruption]
    ) -> None:
        """Record interrupted trials, each sealed; recording one again is a no-op.

        ``study_id`` lets the rows be removed once the study is deleted and its id reused.

        Raises:
            ValueError: An interruption has no seal (:func:`require_seals`).
        """

    @abc.abstractmethod
    def claim_trial(self, stream: Stream, study_id: int, trial_id: int, seal: str) -> bool:
        """Record that trial ``trial_id`` is run by ``stream``'s worker, with the claim's seal.

        Atomic against concurrent claims of the same trial: exactly one stream wins.

        Returns:
            ``True`` if the trial is now, or already was, ``stream``'s; ``False`` if another
            stream claimed it first.
        """

    @abc.abstractmethod
    def claims(self, study_uid: str, trial_ids: Collection[int]) -> dict[int, Claim]:
        """Return the claim of each of ``trial_ids`` that is claimed (any number of them)."""

    plants_atomically = False
    """Whether :meth:`plant_streams` and :meth:`reseal` are one transaction (else resumable)."""

    resealing_unsupported: str | None = None
    """Why :meth:`reseal` cannot work on this store, or ``None`` when it can."""

    @abc.abstractmethod
    def reseal(self, study_uid: str, resealed: Resealed) -> None:
        """Replace the seals of a study's records by those in ``resealed``; nothing else changes.

        For a re-keying, while no worker runs. One transaction where :attr:`plants_atomically`;
        else one write per record, so a failure leaves some records with their new seal and the
        others with their old one, and the re-keying is run again.

        Raises:
            CheckpointError: The store cannot reseal (:attr:`resealing_unsupported` says why).
        """

    @abc.abstractmethod
    def plant_streams(
        self,
        study_id: int,
        study_uid: str,
        planted: Sequence[PlantedStream],
        rows_for: RowsFor,
        owner: Owner,
    ) -> None:
        """Create the ``planted`` streams, released, then record the rows ``rows_for`` gives.

        For tools that carry checkpoints between studies, never for a running sampler. With
        :attr:`plants_atomically` it is one transaction: a failure leaves nothing. Else it is
        resumable: run again with the same arguments after a failure, it completes what is
        missing (a stream already there with the same fingerprint is taken over by ``owner``
        and refilled; rows and claims already there are skipped).

        Raises:
            CheckpointError: A stream of that name exists already (atomic stores), or exists
                with another fingerprint or first trial (the others); a trial is claimed by
                another stream.
        """

    def claim_trials_at_creation(
        self, stream: Stream, study_id: int, seal: Callable[[int], str]
    ) -> None:
        """Claim for ``stream`` the RUNNING trials this process creates in the study from now on.

        Stores with a commit hook add the claim to the transaction that creates the trial, so a
        trial is never unclaimed while its process lives, at no extra round trip; the sampler's
        :meth:`claim_trial` in ``before_trial`` is then free. Other stores do nothing here.
        ``seal(trial_id)`` seals the claim of a new trial.
        """
        return None

    @abc.abstractmethod
    def unsealed_rows_until(self, study_uid: str) -> int:
        """The newest trial id whose interruption or claim row may lack a seal.

        Rows written by releases from before rows were sealed have none. The store records,
        as it upgrades to sealed rows, the newest trial such a row can belong to; every row
        of a later trial is sealed. :data:`NO_UNSEALED_ROWS` when no row may lack a seal (the
        store was created sealing), :data:`ANY_UNSEALED_ROWS` while an earlier release wrote
        last and the store has not recorded the bound yet.
        """

    supports_commit_hook = False

    kept_checkpoints: int | None = None
    """How many of a stream's newest trial checkpoints the store keeps besides the initial one;
    ``None``: all of them."""

    def defer_save_to_trial_commit(
        self, stream: Stream, trial_id: int, checkpoint: Checkpoint | None, token: str
    ) -> None:
        """Save ``checkpoint`` inside the transaction that stores trial ``trial_id``'s end.

        Only stores with :attr:`supports_commit_hook` implement this. ``checkpoint=None``
        announces that one is being prepared: if the trial's end is committed before it is
        ready, that commit is refused, so a finished trial never lacks its checkpoint.
        """
        raise NotImplementedError

    def pending_trial_ids(self) -> set[int]:
        """Return trials whose deferred checkpoint has not been committed yet."""
        return set()

    def discard_pending(self, trial_id: int) -> None:
        """Forget a deferred checkpoint whose trial's commit will not come."""
        raise NotImplementedError

    # -- trial states ----------------------------------------------------------------------

    trial_states_unsupported: str | None = None
    """Why the trial-state methods cannot work on this store, or ``None`` when they can."""

    trial_state_limit: int = TRIAL_STATE_LIMIT
    """The largest encoded trial state this store takes, in bytes."""

    @abc.abstractmethod
    def save_trial_state(
        self, stream: Stream, token: str, study_id: int, record: TrialStateRecord
    ) -> None:
        """Replace the saved state of ``record.logical_trial`` in one transaction.

        Called from the objective, while the trial runs. A kill at any instant leaves either
        the previous state or ``record`` for the next attempt to find, never neither.
        Conditional on ``token`` owning ``stream``, like a checkpoint.

        Raises:
            StreamOwnedError: ``token`` no longer owns the stream.
            CheckpointError: The store keeps no trial states (:attr:`trial_states_unsupported`).
        """

    @abc.abstractmethod
    def find_trial_state(self, study_uid: str, logical_trial: int) -> TrialStateRecord | None:
        """Return the logical trial's saved state, or ``None`` if it has none."""

    @abc.abstractmethod
    def where_trial_states(self, study_uid: str) -> list[TrialStateRecord]:
        """Return every state the study's logical trials saved (for tools; none if unsupported)."""

    @abc.abstractmethod
    def delete_trial_state(self, study_uid: str, logical_trial: int) -> bool:
        """Delete the logical trial's saved state; whether there was one."""

    @abc.abstractmethod
    def list_trial_states(self, study_uid: str) -> list[TrialStateSummary]:
        """The study's saved trial states by logical trial, without reading their payloads."""

    def delete_trial_state_with_trial_end(
        self, study_uid: str, trial_id: int, logical_trial: int
    ) -> None:
        """Delete the logical trial's state when Optuna stores the end of attempt ``trial_id``.

        Called from the sampler's ``after_trial`` of a trial that finished (not one cut off).
        Stores with a commit hook delete it in the transaction that stores the trial's end, so
        a kill before that commit leaves the state for the retry. The others delete it now,
        after the trial's checkpoint was saved: a kill between the two then costs the retry
        its saved state, not its correctness.
        """
        self.delete_trial_state(study_uid, logical_trial)

    def interruption_count_hint(self, study_uid: str) -> int | None:
        """The study's number of interruptions as last seen in passing, if the store tracks it.

        A store that piggybacks on writes it makes anyway can return it for free; the sampler
        reloads the interruptions only when the hint differs from what it knows.
        """
        return None
