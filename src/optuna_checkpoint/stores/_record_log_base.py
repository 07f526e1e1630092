"""The contract of a record log: an append-only log with slots, written in transactions.

Besides the log there are two tables of *slots*, values overwritten in place: ``claims`` (trial
id -> stream id and the claim's seal) and ``heartbeats`` (stream id -> owner tag and time). They
are not in the log because they would make it grow with every trial and every heartbeat.

Every log keeps a reader's position and hands each record it reads, exactly once and in order,
to the *sink* it was created with. A log that has fallen far behind, or is opened fresh, is
re-read only from its newest base record (see :mod:`._record_format`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Sequence
from typing import Any
from typing import TypeVar

from optuna_checkpoint.stores._base import Claim
from optuna_checkpoint.stores._record_format import Record


T = TypeVar("T")


class LogBusyError(Exception):
    """The log's lock was not free within the time a caller was willing to wait."""


# Receives the records a log reads, in order; ``reset`` means forget what came before.
RecordSink = Callable[[Sequence[Record], bool], None]


class Transaction(abc.ABC):
    """The writes one atomic step of a store makes: at most one record, and slot values.

    ``end`` is the position the appended record gets, so a header may point at it.
    """

    def __init__(self, end: int) -> None:
        self.end = end
        self.record: tuple[dict[str, Any], bytes] | None = None
        self.claims: dict[int, Claim] = {}
        self.heartbeats: dict[int, tuple[bytes, float]] = {}

    @abc.abstractmethod
    def claim_of(self, trial_id: int) -> Claim | None:
        """Return the claim in the slot of ``trial_id``, read inside the transaction."""

    def append(self, header: dict[str, Any], payload: bytes = b"") -> None:
        """Append one record (at position :attr:`end`) when the transaction commits."""
        if self.record is not None:
            raise RuntimeError("a transaction appends at most one record")
        self.record = (header, payload)

    def set_claim(self, trial_id: int, claim: Claim) -> None:
        """Overwrite the claim slot of ``trial_id`` (with a sealed claim: new rows always are)."""
        if not claim.seal:
            raise ValueError(f"the claim of trial id {trial_id} is not sealed")
        self.claims[trial_id] = claim

    def set_heartbeat(self, stream_id: int, tag: bytes, at: float) -> None:
        """Overwrite the heartbeat slot of ``stream_id``."""
        self.heartbeats[stream_id] = (tag, at)

    @property
    def empty(self) -> bool:
        """Whether there is nothing to write."""
        return self.record is None and not self.claims and not self.heartbeats


class RecordLog(abc.ABC):
    """An append-only record log with claim and heartbeat slots (see the module docstring)."""

    def __init__(self, sink: RecordSink) -> None:
        self._sink = sink
        self._end = 0  # the position up to which records went to the sink

    @abc.abstractmethod
    def refresh(self) -> None:
        """Hand the records written since the last read to the sink."""

    @abc.abstractmethod
    def transact(self, decide: Callable[[Transaction], T], *, timeout: float | None = None) -> T:
        """Catch up, let ``decide`` fill a transaction, and commit it atomically.

        ``decide`` sees the log as of the moment of the commit: the sink has every record up
        to :attr:`Transaction.end`, and nobody writes in between. It may run more than once
        (when another writer came first) and must only record its writes in the transaction.
        After the commit the appended record goes to the sink like any other.

        Raises:
            LogBusyError: ``timeout`` seconds passed without getting the lock.
        """

    @abc.abstractmethod
    def read(self, pos: int) -> Record:
        """Read the record at ``pos`` (a position a record header or base gave)."""

    @abc.abstractmethod
    def read_claims(self, trial_ids: Collection[int]) -> dict[int, Claim]:
        """Return the claim in each slot of ``trial_ids`` that holds one."""

    @abc.abstractmethod
    def unsealed_claims_until(self) -> int:
        """The newest trial id with a claim that a release from before sealed rows wrote.

        ``-1`` if there is none. Reads every slot: for the one-off upgrade to sealed rows. May be
        called inside a transaction.
        """

    @abc.abstractmethod
    def read_heartbeats(self, stream_ids: Collection[int]) -> dict[int, tuple[bytes, float]]:
        """Return the owner tag and time in each heartbeat slot of ``stream_ids`` that has one."""
