"""The journal store's own guarantees: torn tails, kills mid-append, flat lookup, Optuna internals.

The contract itself is checked in ``test_store_contract.py``; these tests look at the side
record's bytes and at what a fresh process has to read.
"""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import replace
import multiprocessing
import os
import pathlib
import signal
import time
from typing import Any
import uuid
import warnings

import optuna
from optuna.storages import InMemoryStorage
from optuna.storages import JournalStorage
from optuna.storages import RDBStorage
from optuna.storages.journal import BaseJournalBackend
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal import JournalRedisBackend
import pytest

from optuna_checkpoint.attach._lease import current_owner
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import Owner
from optuna_checkpoint.stores._base import Stream
from optuna_checkpoint.stores._journal import SIDE_FILE_SUFFIX
from optuna_checkpoint.stores._journal import JournalCheckpointStore
from optuna_checkpoint.stores._journal import resolve_journal_storage
from optuna_checkpoint.stores._record_format import Record
from optuna_checkpoint.stores._record_format import decode_run
from optuna_checkpoint.stores._record_log import FileRecordLog
from optuna_checkpoint.stores._record_log import RedisRecordLog


pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

SPAWN = multiprocessing.get_context("spawn")
UID = "0123456789abcdef0123456789abcdef"


def open_file_store(journal: pathlib.Path) -> JournalCheckpointStore:
    """A store on a new JournalStorage object, as a fresh process would open it."""
    return JournalCheckpointStore.for_storage(JournalStorage(JournalFileBackend(str(journal))))


def payload_of(trial_id: int | None, size: int = 5000) -> bytes:
    seed = (-1 if trial_id is None else trial_id).to_bytes(8, "little", signed=True)
    return (seed * (size // 8 + 1))[:size]


def checkpoint(trial_id: int | None, size: int = 5000) -> Checkpoint:
    return Checkpoint(
        trial_id=trial_id,
        logical_number=-1 if trial_id is None else trial_id,
        trial_state=None if trial_id is None else "COMPLETE",
        trial_values=None if trial_id is None else [trial_id / 3],
        adapter="tpe",
        payload=payload_of(trial_id, size),
        checksum="0" * 64,
    )


def create(store: JournalCheckpointStore) -> tuple[Stream, Owner]:
    me = current_owner()
    stream = store.create_stream(
        0, UID, "main", {"seed": 1}, me, checkpoint(None), first_trial_number=0
    )
    assert stream is not None
    return stream, me


def take_over(store: JournalCheckpointStore) -> tuple[Stream, Owner]:
    stream = store.find_stream(UID, "main")
    assert stream is not None
    me = current_owner()
    assert store.take_over(stream, me, time.time())
    return stream, me


def newest(store: JournalCheckpointStore, stream_id: int, limit: int = 3) -> list[int | None]:
    found = store.latest_checkpoints(stream_id, excluding=(), limit=limit)
    for c in found:
        assert c.payload == payload_of(c.trial_id, len(c.payload))
    return [c.trial_id for c in found]


def all_bytes_are_records(side: pathlib.Path) -> bool:
    data = side.read_bytes()
    return decode_run(data, 0)[1] == len(data)


@pytest.fixture
def journal(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "journal.log"


@pytest.fixture
def side(journal: pathlib.Path) -> pathlib.Path:
    return journal.with_name(journal.name + SIDE_FILE_SUFFIX)


# -- where the side record lives ------------------------------------------------------------


def test_side_files_beside_the_journal_which_stays_untouched(journal: pathlib.Path) -> None:
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    before = journal.read_bytes()
    store = JournalCheckpointStore.for_storage(storage)
    stream, me = create(store)
    store.claim_trial(stream, study._study_id, 1, "sha256:seal")
    store.save(stream, checkpoint(1), me.token, time.time())
    store.heartbeat(stream.stream_id, me.token, time.time())
    assert journal.read_bytes() == before
    names = sorted(p.name for p in journal.parent.iterdir() if p.name.startswith(journal.name))
    assert names == [
        "journal.log",
        "journal.log.optuna-checkpoint",
        "journal.log.optuna-checkpoint-heartbeats",
        "journal.log.optuna-checkpoint-sealed-claims",
    ]
    reloaded = optuna.load_study(
        study_name=study.study_name, storage=JournalStorage(JournalFileBackend(str(journal)))
    )
    assert len(reloaded.trials) == 3


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    import redis

    prefix = f"optuna-checkpoint-test-{uuid.uuid4().hex}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for pattern in (f"{prefix}:*", f"optuna-checkpoint:{{{prefix}}}:*"):
        keys = list(client.scan_iter(pattern, count=1000))
        if keys:
            client.delete(*keys)


def test_redis_keys_under_their_own_prefix(redis_url: str, redis_prefix: str) -> None:
    import redis

    storage = JournalStorage(JournalRedisBackend(redis_url, prefix=redis_prefix))
    study = optuna.create_study(storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    client = redis.Redis.from_url(redis_url)
    journal_keys = set(client.scan_iter(f"{redis_prefix}:*"))
    store = JournalCheckpointStore.for_storage(storage)
    stream, me = create(store)
    store.claim_trial(stream, study._study_id, 1, "sha256:seal")
    store.save(stream, checkpoint(1), me.token, time.time())
    store.heartbeat(stream.stream_id, me.token, time.time())
    assert set(client.scan_iter(f"{redis_prefix}:*")) == journal_keys
    ours = {k.decode() for k in client.scan_iter(f"optuna-checkpoint:{{{redis_prefix}}}:*")}
    namespace = f"optuna-checkpoint:{{{redis_prefix}}}"
    assert ours == {
        f"{namespace}:{key}"
        for key in ("end", "base", "claims", "heartbeats", "record:0", "record:1")
    }
    assert len(optuna.load_study(study_name=study.study_name, storage=storage).trials) == 2


# -- torn and damaged tails -----------------------------------------------------------------


def written_with_last_record_at(journal: pathlib.Path, side: pathlib.Path) -> tuple[int, int, int]:
    """Save trials 0..4; return the stream id and where trial 4's record starts and ends."""
    store = open_file_store(journal)
    stream, me = create(store)
    for trial_id in range(4):
        store.save(stream, checkpoint(trial_id), me.token, time.time())
    start = side.stat().st_size
    store.save(stream, checkpoint(4), me.token, time.time())
    return stream.stream_id, start, side.stat().st_size


def check_recovers_from_damaged_last_record(
    journal: pathlib.Path, side: pathlib.Path, stream_id: int, start: int
) -> None:
    store = open_file_store(journal)
    assert newest(store, stream_id, limit=10) == [3, 2, 1, 0, None]
    # A writer cuts the damaged tail off before it appends.
    stream, me = take_over(store)
    store.save(stream, checkpoint(5), me.token, time.time())
    assert all_bytes_are_records(side)
    assert newest(open_file_store(journal), stream_id, limit=10) == [5, 3, 2, 1, 0, None]


@pytest.mark.parametrize("cut", [1, 11, 12, 40, "half", "last byte"])
def test_truncated_last_record_is_ignored(
    journal: pathlib.Path, side: pathlib.Path, cut: Any
) -> None:
    stream_id, start, end = written_with_last_record_at(journal, side)
    at = start + {"half": (end - start) // 2, "last byte": end - start - 1}.get(cut, cut)
    os.truncate(side, at)
    check_recovers_from_damaged_last_record(journal, side, stream_id, start)


@pytest.mark.parametrize("where", ["magic", "lengths", "header", "payload", "crc", "end magic"])
def test_garbled_last_record_is_ignored(
    journal: pathlib.Path, side: pathlib.Path, where: str
) -> None:
    stream_id, start, end = written_with_last_record_at(journal, side)
    offset = {
        "magic": 0,
        "lengths": 5,
        "header": 20,
        "payload": (end - start) // 2,
        "crc": end - start - 12,
        "end magic": end - start - 2,
    }[where]
    with open(side, "r+b") as f:
        f.seek(start + offset)
        byte = f.read(1)
        f.seek(start + offset)
        f.write(bytes([byte[0] ^ 0x5A]))
    check_recovers_from_damaged_last_record(journal, side, stream_id, start)


def test_garbage_appended_after_the_last_record_is_cut(
    journal: pathlib.Path, side: pathlib.Path
) -> None:
    stream_id, _, _ = written_with_last_record_at(journal, side)
    with open(side, "ab") as f:
        f.write(b"OCr1" + os.urandom(3000))
    store = open_file_store(journal)
    assert newest(store, stream_id) == [4, 3, 2]
    stream, me = take_over(store)
    store.save(stream, checkpoint(5), me.token, time.time())
    assert all_bytes_are_records(side)
    assert newest(open_file_store(journal), stream_id) == [5, 4, 3]


def test_damage_before_intact_records_is_corruption_not_a_torn_tail(
    journal: pathlib.Path, side: pathlib.Path
) -> None:
    written_with_last_record_at(journal, side)
    size = side.stat().st_size
    with open(side, "r+b") as f:  # inside trial 2's payload
        f.seek(size // 2)
        f.write(b"\xff" * 8)
    store = open_file_store(journal)
    with pytest.raises(CorruptCheckpointError, match="not a torn"):
        store.find_stream(UID, "main")
    with pytest.raises(CorruptCheckpointError):
        store.release(1, "someone")
    assert side.stat().st_size == size  # nothing was cut


def test_empty_and_garbage_only_side_files(journal: pathlib.Path, side: pathlib.Path) -> None:
    side.write_bytes(b"")
    assert open_file_store(journal).list_streams(UID) == []
    side.write_bytes(b"OCr1\x05\x00")  # a first record torn right after it began
    store = open_file_store(journal)
    assert store.list_streams(UID) == []
    stream, _ = create(store)
    assert all_bytes_are_records(side)
    assert newest(open_file_store(journal), stream.stream_id) == [None]


# -- a writer killed while appending --------------------------------------------------------


def _append_until_killed(journal: str, ready: Any) -> None:
    store = open_file_store(pathlib.Path(journal))
    if store.find_stream(UID, "main") is None:
        stream, me = create(store)
    else:
        stream, me = take_over(store)
    latest = store.latest_checkpoints(stream.stream_id, excluding=(), limit=1)
    trial_id = 0 if latest[0].trial_id is None else latest[0].trial_id + 1
    ready.set()
    while True:
        # Large and varied, so that a kill often lands inside a write.
        store.save(stream, checkpoint(trial_id, 256_000 * (1 + trial_id % 7)), me.token, 0.0)
        trial_id += 1


def test_writer_killed_mid_append_leaves_a_readable_log(
    journal: pathlib.Path, side: pathlib.Path
) -> None:
    for cycle in range(3):
        ready = SPAWN.Event()
        child = SPAWN.Process(target=_append_until_killed, args=(str(journal), ready))
        child.start()
        assert ready.wait(30)
        target = side.stat().st_size + (3 + 2 * cycle) * 1_000_000
        deadline = time.monotonic() + 30
        while side.stat().st_size < target and time.monotonic() < deadline:
            time.sleep(0.0005)
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
        store = open_file_store(journal)
        stream = store.find_stream(UID, "main")
        assert stream is not None
        found = newest(store, stream.stream_id, limit=3)
        assert found[0] is not None and found[0] >= 1
        assert found == list(range(found[0], found[0] - 3, -1))
    # The last child's lease was never released: take it over and write on.
    store = open_file_store(journal)
    stream, me = take_over(store)
    before = newest(store, stream.stream_id, limit=1)[0]
    assert before is not None
    store.save(stream, checkpoint(before + 1), me.token, time.time())
    assert all_bytes_are_records(side)
    assert newest(open_file_store(journal), stream.stream_id)[:2] == [before + 1, before]


# -- flat lookup ----------------------------------------------------------------------------


class CountingSink:
    """Counts the records a log hands over (what a fresh process has to decode)."""

    def __init__(self) -> None:
        self.records = 0

    def __call__(self, records: Sequence[Record], reset: bool) -> None:
        self.records += len(records)


def bytes_read_by_this_process() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def fill(store: JournalCheckpointStore, n: int, size: int) -> Stream:
    stream, me = create(store)
    for trial_id in range(n):
        store.claim_trial(stream, 0, trial_id, "sha256:seal")
        store.save(stream, checkpoint(trial_id, size), me.token, time.time())
    return stream


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc")
def test_file_open_reads_a_bounded_tail(tmp_path: pathlib.Path) -> None:
    read = {}
    for n in (20, 300):
        journal = tmp_path / f"journal-{n}.log"
        stream = fill(open_file_store(journal), n, 16_000)
        storage = JournalStorage(JournalFileBackend(str(journal)))
        before = bytes_read_by_this_process()
        store = JournalCheckpointStore.for_storage(storage)
        assert store.find_stream(UID, "main") is not None
        assert newest(store, stream.stream_id, limit=2) == [n - 1, n - 2]
        read[n] = bytes_read_by_this_process() - before
        sink = CountingSink()
        FileRecordLog(str(journal) + SIDE_FILE_SUFFIX, sink).refresh()
        assert sink.records <= 32
    side_size = os.path.getsize(str(tmp_path / "journal-300.log") + SIDE_FILE_SUFFIX)
    assert side_size > 4_500_000
    assert read[300] < 600_000, read  # a bounded tail, not the 4.8 MB log
    assert read[300] < 2 * read[20] + 300_000, read


def test_redis_open_reads_a_bounded_tail(redis_url: str, redis_prefix: str) -> None:
    storage = JournalStorage(JournalRedisBackend(redis_url, prefix=redis_prefix))
    stream = fill(JournalCheckpointStore.for_storage(storage), 300, 2000)
    sink = CountingSink()
    RedisRecordLog(redis_url, redis_prefix, sink).refresh()
    assert sink.records <= 32
    fresh = JournalStorage(JournalRedisBackend(redis_url, prefix=redis_prefix))
    assert newest(JournalCheckpointStore.for_storage(fresh), stream.stream_id) == [299, 298, 297]


def test_a_store_far_behind_reads_from_the_newest_catalog(journal: pathlib.Path) -> None:
    behind = open_file_store(journal)
    stream = fill(behind, 1, 1000)
    writer = open_file_store(journal)
    _, me = take_over(writer)
    for trial_id in range(1, 80):  # 80 x 16 KB: more than a catch-up reads
        writer.save(stream, checkpoint(trial_id, 16_000), me.token, time.time())
    assert newest(behind, stream.stream_id) == [79, 78, 77]
    found = behind.find_stream(UID, "main")
    assert found is not None and found.owner == me


# -- heartbeats -----------------------------------------------------------------------------


def test_heartbeats_do_not_grow_the_file(journal: pathlib.Path, side: pathlib.Path) -> None:
    store = open_file_store(journal)
    stream, me = create(store)
    size = side.stat().st_size
    for i in range(50):
        assert store.heartbeat(stream.stream_id, me.token, stream.heartbeat_at + i)
    assert side.stat().st_size == size
    found = open_file_store(journal).find_stream(UID, "main")
    assert found is not None and found.heartbeat_at == stream.heartbeat_at + 49


def test_heartbeats_do_not_grow_the_redis_log(redis_url: str, redis_prefix: str) -> None:
    import redis

    storage = JournalStorage(JournalRedisBackend(redis_url, prefix=redis_prefix))
    store = JournalCheckpointStore.for_storage(storage)
    stream, me = create(store)
    end_key = f"optuna-checkpoint:{{{redis_prefix}}}:end"
    client = redis.Redis.from_url(redis_url)
    end = client.get(end_key)
    for i in range(50):
        assert store.heartbeat(stream.stream_id, me.token, stream.heartbeat_at + i)
    assert client.get(end_key) == end


# -- Optuna's private attributes ------------------------------------------------------------


def test_optuna_keeps_what_the_store_reads_where_it_reads_it(tmp_path: pathlib.Path) -> None:
    # If Optuna renames these, the store cannot find the journal: this test names the culprit.
    path = str(tmp_path / "journal.log")
    file_backend = JournalFileBackend(path)
    assert JournalStorage(file_backend)._backend is file_backend
    assert file_backend._file_path == path
    redis_backend = JournalRedisBackend("redis://127.0.0.1:6379/0", prefix="p")
    assert redis_backend._url == "redis://127.0.0.1:6379/0"
    assert redis_backend._prefix == "p"


@pytest.mark.parametrize(
    ("what", "attribute"),
    [
        ("storage", "JournalStorage._backend"),
        ("backend", "JournalFileBackend._file_path"),
    ],
)
def test_a_missing_optuna_attribute_is_named(
    journal: pathlib.Path, what: str, attribute: str
) -> None:
    storage = JournalStorage(JournalFileBackend(str(journal)))
    holder = storage if what == "storage" else storage._backend
    delattr(holder, attribute.split(".")[1])
    with pytest.raises(CheckpointError, match=rf"{attribute}.*not supported"):
        JournalCheckpointStore.for_storage(storage)


def test_a_missing_redis_attribute_is_named(redis_url: str, redis_prefix: str) -> None:
    storage = JournalStorage(JournalRedisBackend(redis_url, prefix=redis_prefix))
    del storage._backend._prefix  # type: ignore[attr-defined]
    with pytest.raises(CheckpointError, match=r"JournalRedisBackend\._prefix.*not supported"):
        JournalCheckpointStore.for_storage(storage)


class ListBackend(BaseJournalBackend):
    """A journal backend of the user's own: the store does not know where to put its record."""

    def __init__(self) -> None:
        self.logs: list[dict[str, Any]] = []

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        return self.logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self.logs.extend(logs)


def test_unknown_journal_backend_is_refused() -> None:
    with pytest.raises(CheckpointError, match="ListBackend is not supported"):
        JournalCheckpointStore.for_storage(JournalStorage(ListBackend()))


def test_deprecated_file_backend_alias(journal: pathlib.Path, side: pathlib.Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = JournalStorage(optuna.storages.JournalFileStorage(str(journal)))
    store = JournalCheckpointStore.for_storage(storage)
    stream, _ = create(store)
    assert newest(store, stream.stream_id) == [None]
    assert side.exists()


def test_deprecated_redis_backend_alias(redis_url: str, redis_prefix: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backend = optuna.storages.JournalRedisStorage(redis_url, prefix=redis_prefix)
    store = JournalCheckpointStore.for_storage(JournalStorage(backend))
    stream, _ = create(store)
    fresh = JournalStorage(JournalRedisBackend(redis_url, prefix=redis_prefix))
    assert newest(JournalCheckpointStore.for_storage(fresh), stream.stream_id) == [None]


def test_one_store_per_storage_object(journal: pathlib.Path) -> None:
    storage = JournalStorage(JournalFileBackend(str(journal)))
    store = JournalCheckpointStore.for_storage(storage)
    assert JournalCheckpointStore.for_storage(storage) is store
    assert open_file_store(journal) is not store


def test_resolve_journal_storage(journal: pathlib.Path, tmp_path: pathlib.Path) -> None:
    storage = JournalStorage(JournalFileBackend(str(journal)))
    assert resolve_journal_storage(storage) is storage
    assert resolve_journal_storage(optuna.storages.get_storage(storage)) is storage
    assert resolve_journal_storage(InMemoryStorage()) is None
    rdb = optuna.storages.get_storage(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    assert resolve_journal_storage(rdb) is None
    assert isinstance(getattr(rdb, "_backend", None), RDBStorage)


def test_owner_round_trips(journal: pathlib.Path) -> None:
    store = open_file_store(journal)
    me = replace(current_owner(), host='h\u00f6st "quoted"', pid_start="")
    stream = store.create_stream(
        0, UID, "n\u00e4me", {"f": [1.5, None]}, me, checkpoint(None), first_trial_number=2
    )
    assert stream is not None
    assert open_file_store(journal).find_stream(UID, "n\u00e4me") == stream
