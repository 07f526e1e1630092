"""The CheckpointStore contract, run against every store on real storages and servers.

Each store kind is one entry of ``KINDS``: where its storage lives for one test, and how to open
it (in this process, or in a freshly spawned one, to check what another process sees). Races are
run by real child processes started with the ``spawn`` method, released together by a barrier.

Every test works in real studies of its own, with study uids and trial ids no other test uses,
so kinds whose database is shared by the whole session (PostgreSQL, MySQL) need no cleanup.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import replace
import math
import multiprocessing
import multiprocessing.queues
import pathlib
from queue import Empty
import threading
import time
from typing import Any
import uuid

from optuna.storages import BaseStorage
from optuna.storages import InMemoryStorage
from optuna.storages import JournalStorage
from optuna.storages import RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal import JournalRedisBackend
from optuna.study import StudyDirection
import pytest
from sqlalchemy import event as sa_event

from optuna_checkpoint.attach._lease import current_owner
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import StreamOwnedError
from optuna_checkpoint.stores._attrs import AttributeCheckpointStore
from optuna_checkpoint.stores._base import NO_UNSEALED_ROWS
from optuna_checkpoint.stores._base import REASON_CHARS
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import CheckpointStore
from optuna_checkpoint.stores._base import Claim
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._base import Owner
from optuna_checkpoint.stores._base import PlantedStream
from optuna_checkpoint.stores._base import Resealed
from optuna_checkpoint.stores._base import Stream
from optuna_checkpoint.stores._base import StreamSummary
from optuna_checkpoint.stores._base import TrialStateRecord
from optuna_checkpoint.stores._journal import JournalCheckpointStore
from optuna_checkpoint.stores._sql import SQLCheckpointStore


pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

SPAWN = multiprocessing.get_context("spawn")
CHILD_TIMEOUT = 60.0


# -- store kinds -----------------------------------------------------------------------------


def _open_journal_file(location: str) -> tuple[BaseStorage, CheckpointStore]:
    storage = JournalStorage(JournalFileBackend(location))
    return storage, JournalCheckpointStore.for_storage(storage)


def _open_journal_redis(location: str) -> tuple[BaseStorage, CheckpointStore]:
    url, _, prefix = location.rpartition("#")
    storage = JournalStorage(JournalRedisBackend(url, prefix=prefix))
    return storage, JournalCheckpointStore.for_storage(storage)


def _open_rdb(location: str) -> tuple[BaseStorage, CheckpointStore]:
    storage = RDBStorage(location)
    return storage, SQLCheckpointStore.for_storage(storage)


def _open_memory(location: str) -> tuple[BaseStorage, CheckpointStore]:
    storage = InMemoryStorage()
    return storage, AttributeCheckpointStore.for_storage(storage)


def _redis_location(tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> str:
    url = request.getfixturevalue("redis_url")
    prefix = f"optuna-checkpoint-test-{uuid.uuid4().hex}"
    request.addfinalizer(lambda: _drop_redis_keys(url, prefix))
    return f"{url}#{prefix}"


def _drop_redis_keys(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    for pattern in (f"{prefix}:*", f"optuna-checkpoint:{{{prefix}}}:*"):
        keys = list(client.scan_iter(pattern, count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])


@dataclass(frozen=True)
class Kind:
    """A store kind: where a test's storage lives, and how to open it.

    ``locate(tmp_path, request)`` returns a string that ``open`` accepts; ``shared`` says whether
    another process opening the same location sees the same store (not so in memory).
    """

    locate: Callable[[pathlib.Path, pytest.FixtureRequest], str]
    open: Callable[[str], tuple[BaseStorage, CheckpointStore]]
    shared: bool = True


KINDS: dict[str, Kind] = {
    "journal-file": Kind(lambda tmp, _: str(tmp / "journal.log"), _open_journal_file),
    "journal-redis": Kind(_redis_location, _open_journal_redis),
    "sqlite": Kind(lambda tmp, _: f"sqlite:///{tmp}/db.sqlite3", _open_rdb),
    "postgresql": Kind(lambda tmp, req: str(req.getfixturevalue("postgres_url")), _open_rdb),
    "mysql": Kind(lambda tmp, req: str(req.getfixturevalue("mysql_url")), _open_rdb),
    "memory": Kind(lambda tmp, _: "", _open_memory, shared=False),
}


@dataclass(frozen=True)
class StoreSpec:
    """Where one test's store lives; picklable, so a spawned child can open it too."""

    kind: str
    location: str

    def open(self) -> tuple[BaseStorage, CheckpointStore]:
        """Open a new storage object on the location, and its store."""
        return KINDS[self.kind].open(self.location)


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def spec(kind: str, tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> StoreSpec:
    return StoreSpec(kind, KINDS[kind].locate(tmp_path, request))


@pytest.fixture
def make_store(spec: StoreSpec) -> tuple[BaseStorage, CheckpointStore]:
    """The (storage, store) of this test's kind, on a fresh location."""
    return spec.open()


@pytest.fixture
def store(make_store: tuple[BaseStorage, CheckpointStore]) -> CheckpointStore:
    return make_store[1]


@dataclass(frozen=True)
class Study:
    """A real study of the test's storage, with a study uid no other test uses."""

    storage: BaseStorage
    study_id: int
    uid: str

    def trials(self, n: int) -> list[int]:
        """Create ``n`` real trials and return their ids."""
        return [self.storage.create_new_trial(self.study_id) for _ in range(n)]


def new_study(storage: BaseStorage, store: CheckpointStore) -> Study:
    """Create a real study, and open it through ``store`` as the contract asks."""
    uid = uuid.uuid4().hex
    study = Study(storage, storage.create_new_study([StudyDirection.MINIMIZE], uid), uid)
    store.open_study(study.study_id, study.uid)
    return study


@pytest.fixture
def study(make_store: tuple[BaseStorage, CheckpointStore]) -> Study:
    return new_study(*make_store)


@pytest.fixture
def other(make_store: tuple[BaseStorage, CheckpointStore]) -> Study:
    """A second study of the same storage."""
    return new_study(*make_store)


@pytest.fixture
def shared(spec: StoreSpec) -> StoreSpec:
    """The spec, for tests that need a second process to see the same store."""
    if not KINDS[spec.kind].shared:
        pytest.skip(f"a {spec.kind} store is not shared between processes")
    return spec


# -- helpers ---------------------------------------------------------------------------------


def owner() -> Owner:
    """A fresh owner (a new token), as a new sampler in this process would be."""
    return current_owner()


def checkpoint(trial_id: int | None, *, payload: bytes | None = None, **kw: Any) -> Checkpoint:
    fields: dict[str, Any] = {
        "logical_number": -1 if trial_id is None else trial_id,
        "trial_state": None if trial_id is None else "COMPLETE",
        "trial_values": None if trial_id is None else [trial_id / 3],
        "adapter": "random",
        "payload": payload if payload is not None else f"state-{trial_id}".encode() * 50,
        "checksum": f"{trial_id}".rjust(64, "0"),
    }
    fields.update(kw)
    return Checkpoint(trial_id=trial_id, **fields)


def new_stream(
    store: CheckpointStore,
    study_id: int,
    uid: str,
    name: str = "main",
    *,
    first_trial_number: int = 0,
) -> tuple[Stream, Owner]:
    who = owner()
    stream = store.create_stream(
        study_id,
        uid,
        name,
        {"sampler": "RandomSampler", "seed": 1},
        who,
        checkpoint(None),
        first_trial_number=first_trial_number,
    )
    assert stream is not None
    return stream, who


def stream_of(store: CheckpointStore, study: Study, name: str = "main") -> tuple[Stream, Owner]:
    return new_stream(store, study.study_id, study.uid, name)


def sealed(*interruptions: Interruption) -> list[Interruption]:
    """The interruptions with a seal each: to a store, a seal is a string it keeps."""
    return [replace(i, seal=f"seal-of-{i.trial_id}") for i in interruptions]


def seal_of(trial_id: int, stream: Stream) -> str:
    """The (opaque) seal a test gives the claim of ``trial_id`` for ``stream``."""
    return f"seal-of-{trial_id}-for-{stream.stream_id}"


def claim(store: CheckpointStore, stream: Stream, study_id: int, trial_id: int) -> bool:
    return store.claim_trial(stream, study_id, trial_id, seal_of(trial_id, stream))


def claimants(claims: dict[int, Claim]) -> dict[int, int]:
    return {trial_id: c.stream_id for trial_id, c in claims.items()}


def trial_ids(store: CheckpointStore, stream_id: int, limit: int = 1000) -> list[int | None]:
    return [c.trial_id for c in store.latest_checkpoints(stream_id, excluding=(), limit=limit)]


def run_children(target: Callable[..., None], args: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``target(queue, barrier, *a)`` in one spawned process per ``a``; collect results."""
    results: multiprocessing.queues.Queue[Any] = SPAWN.Queue()
    barrier = SPAWN.Barrier(len(args))
    children = [SPAWN.Process(target=target, args=(results, barrier, *a)) for a in args]
    for child in children:
        child.start()
    collected: list[Any] = []
    deadline = time.monotonic() + CHILD_TIMEOUT
    try:
        while len(collected) < len(children):
            try:
                collected.append(results.get(timeout=0.2))
            except Empty:
                # A child that dies before reporting (say, at import) would break the barrier.
                dead = [c.exitcode for c in children if c.exitcode not in (None, 0)]
                assert not dead, f"children exited with {dead} (their stderr is above)"
                assert time.monotonic() < deadline, "children did not finish in time"
    finally:
        for child in children:
            child.join(timeout=CHILD_TIMEOUT)
            if child.is_alive():
                child.kill()
    errors = [r for r in collected if isinstance(r, str) and r.startswith("error:")]
    assert not errors, errors
    assert [c.exitcode for c in children] == [0] * len(children)
    return collected


def _report(queue: Any, work: Callable[[], Any]) -> None:
    try:
        queue.put(work())
    except BaseException as e:
        queue.put(f"error: {type(e).__name__}: {e}")
        raise


# -- streams ---------------------------------------------------------------------------------


def test_create_and_find_stream(store: CheckpointStore, study: Study, other: Study) -> None:
    me = owner()
    fingerprint = {"class": "TPESampler", "args": [1, 2.5, None, "x"], "nested": {"a": True}}
    stream = store.create_stream(
        study.study_id, study.uid, "main", fingerprint, me, checkpoint(None), first_trial_number=3
    )
    assert stream is not None
    assert (stream.study_uid, stream.name, stream.owner, stream.first_trial_number) == (
        study.uid,
        "main",
        me,
        3,
    )
    assert stream.fingerprint == fingerprint
    assert store.find_stream(study.uid, "main") == stream
    assert store.find_stream(study.uid, "other") is None
    assert store.find_stream(other.uid, "main") is None
    assert trial_ids(store, stream.stream_id) == [None]


def test_create_stream_twice_returns_none(store: CheckpointStore, study: Study) -> None:
    first, _ = stream_of(store, study)
    again = store.create_stream(
        study.study_id,
        study.uid,
        "main",
        {"other": 1},
        owner(),
        checkpoint(None),
        first_trial_number=9,
    )
    assert again is None
    assert store.find_stream(study.uid, "main") == first


def test_list_streams_in_creation_order(
    make_store: tuple[BaseStorage, CheckpointStore], study: Study, other: Study
) -> None:
    store = make_store[1]
    names = ["main", "w2", "a", "w1"]
    created = [stream_of(store, study, name)[0] for name in names]
    stream_of(store, other)
    assert store.list_streams(study.uid) == created
    assert [s.name for s in store.list_streams(other.uid)] == ["main"]
    assert store.list_streams(new_study(*make_store).uid) == []
    assert len({s.stream_id for s in created}) == len(created)


def test_create_stream_removes_a_deleted_studys_rows(
    store: CheckpointStore, study: Study, other: Study
) -> None:
    deleted = replace(study, uid=uuid.uuid4().hex)  # the study that had this id before
    store.open_study(deleted.study_id, deleted.uid)
    old, _ = stream_of(store, deleted)
    store.add_interruptions(deleted.study_id, deleted.uid, sealed(Interruption(1, 1, 1, "killed")))
    kept, _ = stream_of(store, other)
    # The same study id now names a new study (new uid): what the old one left is dropped.
    new, _ = stream_of(store, study)
    assert store.find_stream(deleted.uid, "main") is None
    assert store.list_streams(deleted.uid) == []
    assert store.where_interrupted(deleted.uid) == []
    assert store.find_stream(other.uid, "main") == kept
    assert new.stream_id != old.stream_id
    assert trial_ids(store, new.stream_id) == [None]


def test_reset_stream_drops_checkpoints(store: CheckpointStore, study: Study) -> None:
    stream, me = stream_of(store, study)
    for trial_id in range(3):
        store.save(stream, checkpoint(trial_id), me.token, time.time())
    successor = owner()
    restarted = store.reset_stream(
        stream,
        {"new": "fingerprint"},
        successor,
        checkpoint(None, payload=b"fresh start"),
        first_trial_number=7,
    )
    assert restarted is not None
    assert restarted.stream_id == stream.stream_id
    assert (restarted.fingerprint, restarted.owner, restarted.first_trial_number) == (
        {"new": "fingerprint"},
        successor,
        7,
    )
    assert store.find_stream(study.uid, "main") == restarted
    latest = store.latest_checkpoints(stream.stream_id, excluding=(), limit=10)
    assert [(c.trial_id, c.payload) for c in latest] == [(None, b"fresh start")]
    # The old owner's token no longer writes.
    with pytest.raises(StreamOwnedError):
        store.save(stream, checkpoint(5), me.token, time.time())


def test_reset_stream_refused_when_owner_changed(store: CheckpointStore, study: Study) -> None:
    stream, _ = stream_of(store, study)
    assert store.take_over(stream, owner(), time.time())
    assert store.reset_stream(stream, {}, owner(), checkpoint(None), first_trial_number=0) is None
    assert trial_ids(store, stream.stream_id) == [None]


# -- leases ----------------------------------------------------------------------------------


def test_take_over_is_a_compare_and_swap(store: CheckpointStore, study: Study) -> None:
    stream, _ = stream_of(store, study)
    second, third = owner(), owner()
    assert store.take_over(stream, second, 1234.5)
    taken = store.find_stream(study.uid, "main")
    assert taken is not None
    assert (taken.owner, taken.heartbeat_at) == (second, 1234.5)
    # ``stream`` still names the first owner: a stale snapshot loses.
    assert not store.take_over(stream, third, 1300.0)
    assert store.find_stream(study.uid, "main") == taken
    assert store.take_over(taken, third, 1300.0)


def test_take_over_released_stream(store: CheckpointStore, study: Study) -> None:
    stream, me = stream_of(store, study)
    store.release(stream.stream_id, me.token)
    released = store.find_stream(study.uid, "main")
    assert released is not None and released.owner is None
    assert not store.take_over(stream, owner(), time.time())  # expected the old owner
    assert store.take_over(released, owner(), time.time())


def test_heartbeat_needs_the_owners_token(store: CheckpointStore, study: Study) -> None:
    stream, me = stream_of(store, study)
    later = stream.heartbeat_at + 30.0
    assert store.heartbeat(stream.stream_id, me.token, later)
    beaten = store.find_stream(study.uid, "main")
    assert beaten is not None and beaten.heartbeat_at == later
    assert not store.heartbeat(stream.stream_id, owner().token, later + 30.0)
    assert store.find_stream(study.uid, "main") == beaten


def test_heartbeat_of_a_previous_owner_does_not_count(
    store: CheckpointStore, study: Study
) -> None:
    stream, me = stream_of(store, study)
    assert store.heartbeat(stream.stream_id, me.token, stream.heartbeat_at + 100.0)
    beaten = store.find_stream(study.uid, "main")
    assert beaten is not None
    successor = owner()
    assert store.take_over(beaten, successor, stream.heartbeat_at + 50.0)
    assert not store.heartbeat(stream.stream_id, me.token, stream.heartbeat_at + 200.0)
    taken = store.find_stream(study.uid, "main")
    assert taken is not None
    assert (taken.owner, taken.heartbeat_at) == (successor, stream.heartbeat_at + 50.0)


def test_release_needs_the_owners_token(store: CheckpointStore, study: Study) -> None:
    stream, me = stream_of(store, study)
    store.release(stream.stream_id, owner().token)
    assert store.find_stream(study.uid, "main") == stream
    store.release(stream.stream_id, me.token)
    released = store.find_stream(study.uid, "main")
    assert released is not None and released.owner is None
    store.release(stream.stream_id, me.token)  # again: a no-op
    assert store.find_stream(study.uid, "main") == released


# -- checkpoints -----------------------------------------------------------------------------


def test_save_needs_the_owners_token(store: CheckpointStore, study: Study) -> None:
    stream, me = stream_of(store, study)
    with pytest.raises(StreamOwnedError):
        store.save(stream, checkpoint(1), owner().token, time.time())
    assert store.take_over(stream, owner(), time.time())
    with pytest.raises(StreamOwnedError):
        store.save(stream, checkpoint(1), me.token, time.time())
    assert trial_ids(store, stream.stream_id) == [None]


def test_save_refreshes_the_heartbeat(store: CheckpointStore, study: Study) -> None:
    stream, me = stream_of(store, study)
    store.save(stream, checkpoint(1), me.token, stream.heartbeat_at + 42.0)
    saved = store.find_stream(study.uid, "main")
    assert saved is not None and saved.heartbeat_at == stream.heartbeat_at + 42.0


def test_latest_checkpoints_newest_first_with_limit_and_excluding(
    store: CheckpointStore, study: Study
) -> None:
    stream, me = stream_of(store, study)
    for trial_id in (10, 11, 12, 13, 14):
        store.save(stream, checkpoint(trial_id), me.token, time.time())

    def latest(excluding: set[int], limit: int) -> list[int | None]:
        found = store.latest_checkpoints(stream.stream_id, excluding=excluding, limit=limit)
        return [c.trial_id for c in found]

    assert latest(set(), 2) == [14, 13]
    assert latest(set(), 100) == [*[14, 13, 12, 11, 10][: store.kept_checkpoints], None]
    assert latest({14, 12}, 2) == [13, 11]
    assert latest({14, 13, 12, 11, 10}, 2) == [None]
    assert latest({99}, 1) == [14]
    assert latest(set(), 0) == []


def test_resume_point_reads_interruptions_and_the_newest_other_checkpoints(
    store: CheckpointStore, study: Study
) -> None:
    stream, me = stream_of(store, study)
    for trial_id in (10, 11, 12):
        store.save(stream, checkpoint(trial_id), me.token, time.time())
    store.add_interruptions(
        study.study_id, study.uid, sealed(Interruption(12, 2, 2, "killed", stream.stream_id))
    )
    known, latest = store.resume_point(study.uid, stream.stream_id, limit=2)
    assert [i.trial_id for i in known] == [12]
    assert [c.trial_id for c in latest] == [11, 10]


def test_saving_a_trial_again_overwrites_it(store: CheckpointStore, study: Study) -> None:
    stream, me = stream_of(store, study)
    for trial_id in (1, 2, 3):
        store.save(stream, checkpoint(trial_id), me.token, time.time())
    store.save(stream, checkpoint(2, payload=b"second time"), me.token, time.time())
    latest = store.latest_checkpoints(stream.stream_id, excluding=(), limit=10)
    assert [c.trial_id for c in latest] == [2, 3, 1, None]
    assert latest[0].payload == b"second time"
    latest = store.latest_checkpoints(stream.stream_id, excluding={2}, limit=2)
    assert [c.trial_id for c in latest] == [3, 1]


def test_checkpoints_round_trip_exactly(store: CheckpointStore, study: Study) -> None:
    stream, me = stream_of(store, study)
    values = [0.1 + 0.2, -0.0, 5e-324, 1.7976931348623157e308, math.inf, -math.inf, 1 / 3]
    saved = [
        checkpoint(1, payload=bytes(range(256)) * 40, trial_values=values),
        checkpoint(2, payload=b"", trial_state="PRUNED", trial_values=None, versions={"a": "1"}),
        checkpoint(3, trial_state="FAIL", trial_values=[math.nan], adapter="tpe"),
    ]
    for c in saved:
        store.save(stream, c, me.token, time.time())
    loaded = store.latest_checkpoints(stream.stream_id, excluding=(), limit=10)
    assert [c.trial_id for c in loaded] == [3, 2, 1, None]
    with_nan, pruned, exact, initial = loaded
    assert exact == saved[0]
    assert exact.trial_values is not None
    assert [v.hex() for v in exact.trial_values] == [v.hex() for v in values]
    assert pruned == saved[1]
    assert replace(with_nan, trial_values=None) == replace(saved[2], trial_values=None)
    assert with_nan.trial_values is not None and math.isnan(with_nan.trial_values[0])
    assert initial == checkpoint(None)


def test_streams_keep_their_own_checkpoints(store: CheckpointStore, study: Study) -> None:
    first, first_owner = stream_of(store, study, "w0")
    second, second_owner = stream_of(store, study, "w1")
    for trial_id in range(6):
        stream, who = (first, first_owner) if trial_id % 2 else (second, second_owner)
        store.save(stream, checkpoint(trial_id), who.token, time.time())
    assert trial_ids(store, first.stream_id) == [5, 3, 1, None]
    assert trial_ids(store, second.stream_id) == [4, 2, 0, None]


def test_stream_summary_counts_without_payloads(store: CheckpointStore, study: Study) -> None:
    stream, me = stream_of(store, study)
    other, _ = stream_of(store, study, "w1")
    initial = len(checkpoint(None).payload)
    assert store.stream_summary(stream.stream_id) == StreamSummary(1, initial, None, -1)
    for trial_id, size in ((10, 100), (11, 2000), (12, 0)):
        store.save(stream, checkpoint(trial_id, payload=b"x" * size), me.token, time.time())
    assert store.stream_summary(stream.stream_id) == StreamSummary(4, initial + 2100, 12, 12)
    # A trial saved again counts once, with its new payload, and is now the newest.
    store.save(stream, checkpoint(11, payload=b"y" * 7, logical_number=5), me.token, time.time())
    assert store.stream_summary(stream.stream_id) == StreamSummary(4, initial + 107, 11, 5)
    assert store.stream_summary(other.stream_id) == StreamSummary(1, initial, None, -1)


def test_delete_checkpoints(store: CheckpointStore, study: Study) -> None:
    first, me = stream_of(store, study, "w0")
    second, you = stream_of(store, study, "w1")
    for trial_id in (10, 11, 12, 13):
        store.save(first, checkpoint(trial_id), me.token, time.time())
    for trial_id in (11, 12):  # the same ids in another stream are that stream's own
        store.save(second, checkpoint(trial_id), you.token, time.time())
    if store.deletion_unsupported is not None:
        with pytest.raises(CheckpointError, match="not supported for JournalStorage"):
            store.delete_checkpoints(first.stream_id, [11])
        assert trial_ids(store, first.stream_id) == [13, 12, 11, 10, None]
        return
    assert store.delete_checkpoints(first.stream_id, [11, 12, 99]) == 2
    assert trial_ids(store, first.stream_id) == [13, 10, None]
    assert trial_ids(store, second.stream_id) == [12, 11, None]
    assert store.delete_checkpoints(first.stream_id, [11]) == 0  # already gone
    assert store.delete_checkpoints(first.stream_id, []) == 0
    # The initial checkpoint is never deleted, not even by the SQL store's own sentinel id.
    assert store.delete_checkpoints(first.stream_id, [-1]) == 0
    assert trial_ids(store, first.stream_id) == [13, 10, None]
    # The stream goes on: saves, summaries and resumes see what is left.
    store.save(first, checkpoint(14), me.token, time.time())
    assert trial_ids(store, first.stream_id) == [14, 13, 10, None]
    summary = store.stream_summary(first.stream_id)
    assert (summary.checkpoints, summary.newest_trial_id) == (4, 14)
    _, latest = store.resume_point(study.uid, first.stream_id, limit=2)
    assert [c.trial_id for c in latest] == [14, 13]


# -- interruptions ---------------------------------------------------------------------------


def test_interruptions(
    make_store: tuple[BaseStorage, CheckpointStore], study: Study, other: Study
) -> None:
    store = make_store[1]
    stream, _ = stream_of(store, study)
    store.add_interruptions(
        study.study_id,
        study.uid,
        sealed(
            Interruption(30, 5, 4, "killed", stream.stream_id),
            Interruption(20, 3, 3, "refused"),
        ),
    )
    store.add_interruptions(
        study.study_id,
        study.uid,
        sealed(Interruption(30, 5, 4, "recorded again"), Interruption(40, 4, 4, "x" * 300)),
    )
    store.add_interruptions(study.study_id, study.uid, [])
    store.add_interruptions(other.study_id, other.uid, sealed(Interruption(50, 1, 1, "other")))
    # Each with its seal; a reason is cut to what every store keeps.
    assert store.where_interrupted(study.uid) == sealed(
        Interruption(20, 3, 3, "refused"),
        Interruption(40, 4, 4, "x" * REASON_CHARS),
        Interruption(30, 5, 4, "killed", stream.stream_id),
    )
    assert store.where_interrupted(other.uid) == sealed(Interruption(50, 1, 1, "other"))
    assert store.where_interrupted(new_study(*make_store).uid) == []
    assert store.interruption_count_hint(study.uid) in (None, 3)


def test_interruption_recorded_by_another_process_meanwhile_is_skipped(
    spec: StoreSpec, make_store: tuple[BaseStorage, CheckpointStore], study: Study
) -> None:
    """Two workers that find the same dead trial both record it: neither fails."""
    storage, store = make_store
    if not isinstance(storage, RDBStorage):
        pytest.skip("the interleaving is placed with SQLAlchemy's execution events")
    _, elsewhere = spec.open()  # another process, as far as the database can tell
    dead, other = sealed(
        Interruption(30, 5, 4, "its process died while the trial ran"), Interruption(40, 6, 5, "x")
    )

    pending = [dead]

    def record_elsewhere_first(*args: Any) -> None:
        # Between this store's read of the known interruptions and its insert.
        statement = str(args[2]).lstrip().upper()
        if pending and statement.startswith("INSERT INTO OPTUNA_CHECKPOINT_INTERRUPTED"):
            elsewhere.add_interruptions(study.study_id, study.uid, [pending.pop()])

    sa_event.listen(storage.engine, "before_cursor_execute", record_elsewhere_first)
    try:
        store.add_interruptions(study.study_id, study.uid, [dead, other])
    finally:
        sa_event.remove(storage.engine, "before_cursor_execute", record_elsewhere_first)
    assert store.where_interrupted(study.uid) == [dead, other]


def test_unsealed_interruptions_are_refused(store: CheckpointStore, study: Study) -> None:
    stream_of(store, study)
    with pytest.raises(ValueError, match="not sealed"):
        store.add_interruptions(study.study_id, study.uid, [Interruption(7, 1, 1, "killed")])
    assert store.where_interrupted(study.uid) == []


def test_a_new_store_has_no_unsealed_rows(store: CheckpointStore, study: Study) -> None:
    # Written by this release from the start: every row of every trial must carry a seal.
    stream_of(store, study)
    assert store.unsealed_rows_until(study.uid) == NO_UNSEALED_ROWS


# -- claims ----------------------------------------------------------------------------------


def test_claims(store: CheckpointStore, study: Study, other: Study) -> None:
    trials = study.trials(4)
    first, _ = stream_of(store, study, "w0")
    second, _ = stream_of(store, study, "w1")
    assert claim(store, first, study.study_id, trials[0])
    assert claim(store, first, study.study_id, trials[0])  # already its own
    assert not claim(store, second, study.study_id, trials[0])
    assert claim(store, second, study.study_id, trials[1])
    # Each with the seal its claimant gave it.
    assert store.claims(study.uid, trials) == {
        trials[0]: Claim(first.stream_id, seal_of(trials[0], first)),
        trials[1]: Claim(second.stream_id, seal_of(trials[1], second)),
    }
    assert store.claims(study.uid, [trials[2]]) == {}
    assert store.claims(study.uid, []) == {}


def test_studies_claim_independently(store: CheckpointStore, study: Study, other: Study) -> None:
    mine, _ = stream_of(store, study)
    theirs, _ = stream_of(store, other)
    my_trials, their_trials = study.trials(2), other.trials(2)
    assert claim(store, mine, study.study_id, my_trials[0])
    assert claim(store, theirs, other.study_id, their_trials[1])
    assert claimants(store.claims(study.uid, my_trials)) == {my_trials[0]: mine.stream_id}
    assert claimants(store.claims(other.uid, their_trials)) == {their_trials[1]: theirs.stream_id}


def test_claims_from_threads_have_one_winner(store: CheckpointStore, study: Study) -> None:
    streams = [stream_of(store, study, f"w{i}")[0] for i in range(4)]
    wins: dict[int, list[int]] = {t: [] for t in study.trials(40)}
    start = threading.Barrier(len(streams))

    def claim_all(stream: Stream) -> None:
        start.wait()
        for trial_id in wins:
            if claim(store, stream, study.study_id, trial_id):
                wins[trial_id].append(stream.stream_id)

    threads = [threading.Thread(target=claim_all, args=(s,)) for s in streams]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(len(w) == 1 for w in wins.values()), wins
    assert claimants(store.claims(study.uid, list(wins))) == {t: w[0] for t, w in wins.items()}


# -- planting streams (import, fork) ----------------------------------------------------------


def test_plant_streams_creates_released_streams_with_their_rows(
    store: CheckpointStore, study: Study
) -> None:
    trials = study.trials(3)
    planted = [
        PlantedStream("w0", {"seed": 1}, 0, [checkpoint(None), *map(checkpoint, trials[:2])]),
        PlantedStream("w1", {"seed": 2}, 2, [checkpoint(None)]),
    ]

    def rows_for(ids: Mapping[str, int]) -> tuple[list[Interruption], dict[int, Claim]]:
        interrupted = sealed(Interruption(trials[2], 2, 2, "killed", ids["w0"]))
        return interrupted, {trials[0]: Claim(ids["w0"], "a"), trials[1]: Claim(ids["w1"], "b")}

    store.plant_streams(study.study_id, study.uid, planted, rows_for, owner())

    def planted_state() -> Any:
        streams = {s.name: s for s in store.list_streams(study.uid)}
        return (
            {n: (s.fingerprint, s.first_trial_number, s.owner) for n, s in streams.items()},
            {n: trial_ids(store, s.stream_id) for n, s in streams.items()},
            store.where_interrupted(study.uid),
            store.claims(study.uid, trials),
        )

    state = planted_state()
    ids = {s.name: s.stream_id for s in store.list_streams(study.uid)}
    assert state[0] == {"w0": ({"seed": 1}, 0, None), "w1": ({"seed": 2}, 2, None)}
    assert state[1] == {"w0": [trials[1], trials[0], None], "w1": [None]}
    assert state[2:] == rows_for(ids)
    if store.plants_atomically:
        with pytest.raises(CheckpointError, match="already has a checkpoint stream"):
            store.plant_streams(study.study_id, study.uid, planted, rows_for, owner())
    else:  # resumable: planting again completes what is missing, here nothing
        store.plant_streams(study.study_id, study.uid, planted, rows_for, owner())
    assert planted_state() == state


# -- re-keying --------------------------------------------------------------------------------


def test_reseal_replaces_the_seals_and_nothing_else(store: CheckpointStore, study: Study) -> None:
    trials = study.trials(2)
    stream, me = stream_of(store, study)
    store.save(stream, checkpoint(trials[0]), me.token, time.time())
    interrupted = Interruption(trials[1], 1, 1, "killed", stream.stream_id)
    store.add_interruptions(study.study_id, study.uid, sealed(interrupted))
    claim(store, stream, study.study_id, trials[0])
    if store.trial_states_unsupported is None:
        state = TrialStateRecord(0, trials[0], b"state", "old")
        store.save_trial_state(stream, me.token, study.study_id, state)
    resealed = Resealed(
        checkpoints={
            stream.stream_id: [
                replace(c, checksum=f"new-{c.trial_id}")
                for c in store.all_checkpoints(stream.stream_id)
            ]
        },
        interruptions=[replace(i, seal="new") for i in store.where_interrupted(study.uid)],
        claims={t: replace(c, seal="new") for t, c in store.claims(study.uid, trials).items()},
        trial_states=[replace(r, checksum="new") for r in store.where_trial_states(study.uid)],
    )
    if store.resealing_unsupported is not None:
        with pytest.raises(CheckpointError, match="not supported"):
            store.reseal(study.uid, resealed)
        return
    assert len(resealed.trial_states) == 1

    store.reseal(study.uid, resealed)

    assert store.all_checkpoints(stream.stream_id) == resealed.checkpoints[stream.stream_id]
    assert store.where_interrupted(study.uid) == resealed.interruptions
    assert store.claims(study.uid, trials) == resealed.claims
    assert store.where_trial_states(study.uid) == resealed.trial_states


# -- other processes -------------------------------------------------------------------------


def _summary(
    store: CheckpointStore, study_id: int, uid: str, ids: list[int], trials: list[int]
) -> Any:
    store.open_study(study_id, uid)
    return {
        "streams": store.list_streams(uid),
        "checkpoints": {s: store.latest_checkpoints(s, excluding=(), limit=100) for s in ids},
        "interrupted": store.where_interrupted(uid),
        "claims": store.claims(uid, trials),
    }


def _summarise_child(queue: Any, barrier: Any, spec: StoreSpec, *args: Any) -> None:
    _report(queue, lambda: _summary(spec.open()[1], *args))


def test_another_process_sees_everything(
    shared: StoreSpec, store: CheckpointStore, study: Study
) -> None:
    first, me = stream_of(store, study, "w0")
    second, second_owner = stream_of(store, study, "w1")
    for trial_id in range(5):
        store.save(first, checkpoint(trial_id, trial_values=[trial_id / 7]), me.token, 1.5)
    trials = study.trials(3)
    claim(store, first, study.study_id, trials[0])
    claim(store, second, study.study_id, trials[1])
    store.add_interruptions(
        study.study_id, study.uid, sealed(Interruption(2, 2, 2, "killed", first.stream_id))
    )
    store.heartbeat(first.stream_id, me.token, 1e10)
    store.release(second.stream_id, second_owner.token)
    args = (study.study_id, study.uid, [first.stream_id, second.stream_id], trials)
    [seen] = run_children(_summarise_child, [(shared, *args)])
    assert seen == _summary(store, *args)
    assert seen["streams"][0].heartbeat_at == 1e10
    assert seen["streams"][1].owner is None
    assert len(seen["claims"]) == 2
    # And a new store object in this process, too.
    assert _summary(shared.open()[1], *args) == seen


# -- races between processes ----------------------------------------------------------------
#
# One batch of spawned children runs every race in turn, each released by a barrier.

N_CHILDREN = 3
ROUNDS = 5
N_CLAIMED = 60
RACES = ("create", "cas", "claim", "saver")


def _cas_round(store: CheckpointStore, barrier: Any, uid: str, name: str) -> tuple[bool, str]:
    barrier.wait()
    snapshot = store.find_stream(uid, name)
    assert snapshot is not None
    barrier.wait()  # every child now holds the same snapshot
    me = owner()
    if name == "take_over":
        return store.take_over(snapshot, me, time.time()), me.token
    restarted = store.reset_stream(
        snapshot,
        {"token": me.token},
        me,
        checkpoint(None, payload=me.token.encode()),
        first_trial_number=0,
    )
    return restarted is not None, me.token


def _save_until_refused(store: CheckpointStore, uid: str, token: str) -> list[int]:
    stream = store.find_stream(uid, "main")
    assert stream is not None
    saved = []
    for trial_id in range(10_000):
        try:
            store.save(stream, checkpoint(trial_id), token, time.time())
        except StreamOwnedError:
            break
        saved.append(trial_id)
    return saved


def _usurp(store: CheckpointStore, uid: str, token: str) -> None:
    time.sleep(0.3)  # let the saver save a few first
    stream = store.find_stream(uid, "main")
    assert stream is not None
    assert store.take_over(stream, replace(owner(), token=token), time.time())
    store.save(stream, checkpoint(-5), token, time.time())


def _race_child(
    queue: Any,
    barrier: Any,
    spec: StoreSpec,
    i: int,
    studies: dict[str, tuple[int, str]],
    claimed: list[int],
    tokens: tuple[str, str],
) -> None:
    def work() -> dict[str, Any]:
        _, store = spec.open()
        for opened in studies.values():
            store.open_study(*opened)
        results: dict[str, Any] = {"child": i}
        study_id, uid = studies["create"]
        barrier.wait()
        created = store.create_stream(
            study_id,
            uid,
            "main",
            {"child": i},
            owner(),
            checkpoint(None, payload=f"child {i}".encode()),
            first_trial_number=i,
        )
        results["created"] = created is not None
        for name in ("take_over", "reset_stream"):
            uid = studies["cas"][1]
            results[name] = [_cas_round(store, barrier, uid, name) for _ in range(ROUNDS)]
        study_id, uid = studies["claim"]
        mine, _ = new_stream(store, study_id, uid, f"w{i}")
        barrier.wait()
        won = [t for t in claimed if claim(store, mine, study_id, t)]
        results["claims"] = (mine.stream_id, won)
        barrier.wait()
        saver_token, usurper_token = tokens
        if i == 0:
            results["saved"] = _save_until_refused(store, studies["saver"][1], saver_token)
        elif i == 1:
            _usurp(store, studies["saver"][1], usurper_token)
        return results

    _report(queue, work)


@dataclass(frozen=True)
class Races:
    store: CheckpointStore
    studies: dict[str, Study]
    claimed: list[int]
    results: list[dict[str, Any]]
    saver_stream: int
    usurper_token: str


def run_races(spec: StoreSpec) -> Races:
    storage, store = spec.open()
    studies = {race: new_study(storage, store) for race in RACES}
    for name in ("take_over", "reset_stream"):
        stream_of(store, studies["cas"], name)
    saver, saver_owner = stream_of(store, studies["saver"])
    claimed = studies["claim"].trials(N_CLAIMED)
    usurper_token = uuid.uuid4().hex
    ids = {race: (s.study_id, s.uid) for race, s in studies.items()}
    tokens = (saver_owner.token, usurper_token)
    results = run_children(
        _race_child, [(spec, i, ids, claimed, tokens) for i in range(N_CHILDREN)]
    )
    results.sort(key=lambda r: int(r["child"]))  # they arrive in the order they finished
    return Races(store, studies, claimed, results, saver.stream_id, usurper_token)


@pytest.mark.soak  # many processes on every store: about 45 s in all
def test_races_between_processes(shared: StoreSpec) -> None:
    # One test, so that one batch of children (the costly part) runs every race.
    races = run_races(shared)
    check_create_stream_race(races)
    check_compare_and_swap_race(races, "take_over")
    check_compare_and_swap_race(races, "reset_stream")
    check_claim_race(races)
    check_no_save_after_take_over(races)


def check_create_stream_race(races: Races) -> None:
    assert sum(r["created"] for r in races.results) == 1, "create_stream: not one winner"
    uid = races.studies["create"].uid
    stream = races.store.find_stream(uid, "main")
    assert stream is not None
    winner = stream.fingerprint["child"]
    assert races.results[winner]["created"]
    assert stream.first_trial_number == winner
    [initial] = races.store.latest_checkpoints(stream.stream_id, excluding=(), limit=5)
    assert initial.payload == f"child {winner}".encode()
    assert len(races.store.list_streams(uid)) == 1


def check_compare_and_swap_race(races: Races, name: str) -> None:
    rounds = list(zip(*(r[name] for r in races.results), strict=True))
    assert len(rounds) == ROUNDS
    for contenders in rounds:
        assert sum(won for won, _ in contenders) == 1, f"{name}: {contenders}"
    [last_winner] = [token for won, token in rounds[-1] if won]
    stream = races.store.find_stream(races.studies["cas"].uid, name)
    assert stream is not None and stream.owner is not None
    assert stream.owner.token == last_winner, name
    if name == "reset_stream":
        [initial] = races.store.latest_checkpoints(stream.stream_id, excluding=(), limit=5)
        assert initial.payload == last_winner.encode()


def check_claim_race(races: Races) -> None:
    winners: dict[int, list[int]] = {t: [] for t in races.claimed}
    for stream_id, won in (r["claims"] for r in races.results):
        for trial_id in won:
            winners[trial_id].append(stream_id)
    assert all(len(w) == 1 for w in winners.values()), f"claim_trial: {winners}"
    claimed = races.store.claims(races.studies["claim"].uid, races.claimed)
    assert claimants(claimed) == {t: w[0] for t, w in winners.items()}


def check_no_save_after_take_over(races: Races) -> None:
    saved = races.results[0]["saved"]
    assert saved, "the saver saved nothing before the take-over"
    found = trial_ids(races.store, races.saver_stream, limit=len(saved) + 10)
    assert found == [-5, *reversed(saved), None], "a save landed after the take-over"
    stream = races.store.find_stream(races.studies["saver"].uid, "main")
    assert stream is not None and stream.owner is not None
    assert stream.owner.token == races.usurper_token
