"""A record log in Redis: one key per record, and two hashes of slots.

A claim's slot holds ``<stream id> <seal>``; releases before sealed rows wrote the stream id
alone, which reads as an unsealed claim.

A position is the record's index. A transaction runs under ``WATCH`` of the record counter and
commits with ``MULTI``/``EXEC``, retrying if another client wrote first.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Collection
from typing import TYPE_CHECKING

from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.stores._base import Claim
from optuna_checkpoint.stores._record_format import HEARTBEAT
from optuna_checkpoint.stores._record_format import Record
from optuna_checkpoint.stores._record_format import decode_frame
from optuna_checkpoint.stores._record_format import encode_frame
from optuna_checkpoint.stores._record_log_base import RecordLog
from optuna_checkpoint.stores._record_log_base import RecordSink
from optuna_checkpoint.stores._record_log_base import T
from optuna_checkpoint.stores._record_log_base import Transaction


if TYPE_CHECKING:
    import redis


# How far behind a reader may fall before it re-reads from the newest base record instead (as
# it does when it has read nothing yet).
_MAX_CATCH_UP_RECORDS = 256


class _RedisTransaction(Transaction):
    def __init__(self, end: int, pipe: redis.client.Pipeline, claims_key: str) -> None:
        super().__init__(end)
        self._pipe = pipe
        self._claims_key = claims_key

    def claim_of(self, trial_id: int) -> Claim | None:
        # Watched from here on: a claim another client writes before our EXEC aborts it.
        self._pipe.watch(self._claims_key)  # type: ignore[no-untyped-call]
        value = self._pipe.hget(self._claims_key, str(trial_id))
        return None if value is None else _claim_from_slot(value)


def _claim_from_slot(value: bytes | str) -> Claim:
    text = value.decode("ascii") if isinstance(value, bytes) else value
    stream_id, _, seal = text.partition(" ")
    return Claim(int(stream_id), seal or None)


class RedisRecordLog(RecordLog):
    """A record log in Redis: ``<ns>:record:<i>`` keys, a counter, a base index, two hashes.

    ``<ns>`` is ``optuna-checkpoint:{<journal prefix>}``: the braces make it a Redis Cluster
    hash tag, so every key of one log lives in the same slot and a transaction may span them.
    """

    def __init__(self, url: str, prefix: str, sink: RecordSink) -> None:
        import redis

        super().__init__(sink)
        self._client = redis.Redis.from_url(url)
        self._watch_error = redis.WatchError
        self.namespace = f"optuna-checkpoint:{{{prefix}}}"
        self._end_key = f"{self.namespace}:end"
        self._base_key = f"{self.namespace}:base"
        self._claims_key = f"{self.namespace}:claims"
        self._heartbeats_key = f"{self.namespace}:heartbeats"

    def __repr__(self) -> str:
        return f"RedisRecordLog({self.namespace!r})"

    def _record_key(self, index: int) -> str:
        return f"{self.namespace}:record:{index}"

    def refresh(self) -> None:
        """Hand the records written since the last read to the sink."""
        self._catch_up(self._client)

    def transact(self, decide: Callable[[Transaction], T], *, timeout: float | None = None) -> T:
        """Run ``decide`` under WATCH of the counter; commit with MULTI/EXEC, or retry."""
        while True:
            with self._client.pipeline() as pipe:
                try:
                    pipe.watch(self._end_key)  # type: ignore[no-untyped-call]
                    self._catch_up(pipe)
                    txn = _RedisTransaction(self._end, pipe, self._claims_key)
                    result = decide(txn)
                    if txn.empty:
                        return result
                    written = self._commit(pipe, txn)
                except self._watch_error:
                    continue  # another client wrote first: catch up and decide again
            if written is not None:
                self._sink([written], False)
                self._end = written.end
            return result

    def _commit(self, pipe: redis.client.Pipeline, txn: Transaction) -> Record | None:
        written = None
        pipe.multi()
        if txn.record is not None:
            frame = encode_frame(*txn.record)
            written = decode_frame(frame, 0, txn.end, txn.end + 1)
            assert written is not None
            pipe.set(self._record_key(txn.end), frame)
            pipe.set(self._end_key, txn.end + 1)
            if written.is_base:
                pipe.set(self._base_key, txn.end)
        if txn.claims:
            claims = {str(t): f"{c.stream_id} {c.seal}" for t, c in txn.claims.items()}
            pipe.hset(self._claims_key, mapping=claims)  # type: ignore[arg-type]
        if txn.heartbeats:
            beats = {str(s): HEARTBEAT.pack(*beat) for s, beat in txn.heartbeats.items()}
            pipe.hset(self._heartbeats_key, mapping=beats)  # type: ignore[arg-type]
        pipe.execute()
        return written

    def read(self, pos: int) -> Record:
        """Read the record with index ``pos``."""
        return self._fetch(self._client, pos, pos + 1)[0]

    def read_claims(self, trial_ids: Collection[int]) -> dict[int, Claim]:
        """Read claim slots (one HMGET)."""
        ids = list(trial_ids)
        if not ids:
            return {}
        values = self._client.hmget(self._claims_key, [str(t) for t in ids])
        return {t: _claim_from_slot(v) for t, v in zip(ids, values, strict=True) if v is not None}

    def unsealed_claims_until(self) -> int:
        """The newest trial id whose claim an earlier release wrote unsealed (-1: none)."""
        slots = self._client.hgetall(self._claims_key)
        unsealed = [int(t) for t, v in slots.items() if _claim_from_slot(v).seal is None]
        return max(unsealed, default=-1)

    def read_heartbeats(self, stream_ids: Collection[int]) -> dict[int, tuple[bytes, float]]:
        """Read heartbeat slots (one HMGET)."""
        ids = list(stream_ids)
        if not ids:
            return {}
        values = self._client.hmget(self._heartbeats_key, [str(s) for s in ids])
        found = {}
        for stream_id, value in zip(ids, values, strict=True):
            if isinstance(value, bytes) and len(value) == HEARTBEAT.size:
                tag, at = HEARTBEAT.unpack(value)
                found[stream_id] = (bytes(tag), float(at))
        return found

    def _catch_up(self, client: redis.Redis | redis.client.Pipeline) -> None:
        raw_end, raw_base = client.mget([self._end_key, self._base_key])
        end = int(raw_end or 0)
        if end == self._end:
            return
        if self._end == 0 or end < self._end or end - self._end > _MAX_CATCH_UP_RECORDS:
            base = int(raw_base or 0)
            records = self._fetch(client, base, end)
            if records and not records[0].is_base:
                raise CorruptCheckpointError(
                    f"record {base} of {self.namespace} should carry the catalog but does not; "
                    "the side record is damaged."
                )
            self._sink(records, True)
        else:
            self._sink(self._fetch(client, self._end, end), False)
        self._end = end

    def _fetch(
        self, client: redis.Redis | redis.client.Pipeline, lo: int, hi: int
    ) -> list[Record]:
        if hi <= lo:
            return []
        frames = client.mget([self._record_key(i) for i in range(lo, hi)])
        records = []
        for index, frame in zip(range(lo, hi), frames, strict=True):
            record = decode_frame(frame, 0, index, index + 1) if isinstance(frame, bytes) else None
            if record is None:
                raise CorruptCheckpointError(
                    f"record {index} of {self.namespace} is missing or damaged; restore Redis "
                    "from a backup, or start a new stream."
                )
            records.append(record)
        return records
