"""Interruption and claim rows are sealed: a forged or altered one is refused, never obeyed.

An interruption row hides its trial from the sampler and from ``uninterrupted_trials``; a claim
row tells a resume which unfinished trials were its worker's. Each test forges or alters such a
row the way someone who can write the storage would, on every store, and checks that the
readers stop with an error naming the trial instead of obeying it. Rows of earlier releases,
which had no seals, are read as their store's format says (``test_formats`` upgrades a real
database of format 3).
"""

from __future__ import annotations

from dataclasses import replace
import gc
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import RandomSampler
from optuna.storages import BaseStorage
from optuna.trial import TrialState
import pytest

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import CorruptCheckpointError
from optuna_checkpoint import SignatureError
from optuna_checkpoint import uninterrupted_trials
from optuna_checkpoint import verify
from optuna_checkpoint.attach._lease import current_owner
from optuna_checkpoint.state._rows import SealedRows
from optuna_checkpoint.state._rows import interruption_fields
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.stores._attrs import AttributeCheckpointStore
from optuna_checkpoint.stores._attrs_rows import INTERRUPTED_PREFIX
from optuna_checkpoint.stores._base import ANY_UNSEALED_ROWS
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import CheckpointStore
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._base import Stream
from optuna_checkpoint.stores._journal import SIDE_FILE_SUFFIX
from optuna_checkpoint.stores._open import store_for
from optuna_checkpoint.stores._record_format import BASE_KEY
from optuna_checkpoint.stores._record_format import CATALOG_KEY
from optuna_checkpoint.stores._record_format import LEGACY_CLAIM
from optuna_checkpoint.stores._record_log_file import _SlotFile as SlotFile
from optuna_checkpoint.study._identity import first_trial
from optuna_checkpoint.study._identity import study_uid
from tests.test_store_contract import KINDS
from tests.test_store_contract import StoreSpec


KEY = "k" * 32
N_TRIALS = 6
INITIAL = Checkpoint(None, -1, None, None, "random", b"state", "seal")
# Attribute names of the attribute store, as releases before sealed rows used them too.
CLAIM_ATTR = "optuna_checkpoint:stream"
UNSEALED_ATTR = "optuna_checkpoint:unsealed_rows_until"


# One SQL database stands for all three: the rows' SQL is the same on each, and the store
# contract runs it on every one (test_store_contract).
WHERE = ["journal-file", "journal-redis", "memory", "sqlite"]


@pytest.fixture(params=WHERE)
def where(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    """A fresh location of each family of stores."""
    return StoreSpec(request.param, KINDS[request.param].locate(tmp_path, request))


def objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", -1.0, 1.0) ** 2


def sampler(signing_key: str | None = None) -> CheckpointingSampler:
    return CheckpointingSampler(RandomSampler(seed=5), signing_key=signing_key)


def run(storage: BaseStorage, n_trials: int, signing_key: str | None = None) -> optuna.Study:
    study = optuna.create_study(
        study_name="rows", storage=storage, load_if_exists=True, sampler=sampler(signing_key)
    )
    study.optimize(objective, n_trials=n_trials)
    return study


def rows_of(study: optuna.Study) -> tuple[CheckpointStore, str, Stream]:
    """The study's store (opened for it), its uid and its one stream, as a writer finds them."""
    store = store_for(study._storage)
    uid = study_uid(
        study._study_id, study.study_name, first_trial(study._storage, study._study_id)
    )
    store.open_study(study._study_id, uid)
    [stream] = store.list_streams(uid)
    return store, uid, stream


def forge_interruption(study: optuna.Study, number: int, seal: str | None) -> None:
    """Record trial ``number`` as interrupted, with ``seal`` (made by whoever forges it)."""
    store, uid, stream = rows_of(study)
    trial = study.trials[number]
    forged = Interruption(trial._trial_id, number, number, "forged", stream.stream_id)
    if seal is None:  # what someone who lacks the key can compute
        seal = Sealer(None).seal_row(interruption_fields(uid, forged))
    store.add_interruptions(study._study_id, uid, [replace(forged, seal=seal)])


def test_a_forged_interruption_of_a_complete_trial_is_refused_naming_it(where: StoreSpec) -> None:
    storage, _ = where.open()
    study = run(storage, N_TRIALS)
    assert study.trials[3].state == TrialState.COMPLETE
    forge_interruption(study, 3, seal="sha256:" + "A" * 43)

    with pytest.raises(CorruptCheckpointError, match=r"trial 3 \(trial id \d+\) was interrupted"):
        uninterrupted_trials(study)
    with pytest.raises(CorruptCheckpointError, match=r"trial 3 .*fails its checksum"):
        run(storage, 1)  # the resume reads the rows before it hides anything
    # Nothing was obeyed: the trial stays as it was, and no retry ran.
    assert study.trials[3].state == TrialState.COMPLETE
    assert len(study.trials) == N_TRIALS + 1  # the refused resume's own trial


def test_an_interruption_copied_to_another_trial_is_refused(tmp_path: Path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/copied.db")
    study = run(storage, N_TRIALS)
    store, uid, stream = rows_of(study)
    genuine = SealedRows(store, uid, Sealer(None))
    genuine.add_interruptions(
        study._study_id,
        [Interruption(study.trials[5]._trial_id, 5, 5, "killed", stream.stream_id)],
    )
    [sealed] = store.where_interrupted(uid)
    copied = Interruption(study.trials[2]._trial_id, 2, 2, "killed", stream.stream_id, sealed.seal)
    store.add_interruptions(study._study_id, uid, [copied])

    with pytest.raises(CorruptCheckpointError, match=r"trial 2 \(trial id"):
        genuine.interruptions()


def test_with_a_key_a_row_sealed_without_it_is_refused(tmp_path: Path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/signed.db")
    study = run(storage, N_TRIALS, signing_key=KEY)
    forge_interruption(study, 4, seal=None)  # a valid digest, but no signature

    with pytest.raises(SignatureError, match=r"trial 4 .*unsigned rows are refused"):
        uninterrupted_trials(study, signing_key=KEY)
    with pytest.raises(SignatureError, match="trial 4"):
        run(storage, 1, signing_key=KEY)
    # The rows the library wrote are signed: each trial's claim, made in its creating commit.
    store, uid, _ = rows_of(study)
    claims = store.claims(uid, [t._trial_id for t in study.trials[:N_TRIALS]])
    assert {(c.seal or "").partition(":")[0] for c in claims.values()} == {"hmac-sha256"}


def test_a_forged_claim_of_a_running_trial_is_refused_on_resume(where: StoreSpec) -> None:
    storage, _ = where.open()
    study_id = run(storage, N_TRIALS)._study_id
    gc.collect()  # the sampler goes, and with it the claims it adds to every new trial
    store, _, stream = rows_of(optuna.load_study(study_name="rows", storage=storage))
    # A trial a dead process left RUNNING, claimed for the stream with a forged seal: obeyed, the
    # resume would close it as the stream's own interrupted trial.
    orphan = storage.create_new_trial(study_id)
    assert store.claim_trial(stream, study_id, orphan, "sha256:" + "B" * 43)

    with pytest.raises(CorruptCheckpointError, match=f"the claim of trial id {orphan} "):
        run(storage, 1)
    assert storage.get_trial(orphan).state == TrialState.RUNNING


def test_the_readers_of_genuine_rows_run_on(tmp_path: Path) -> None:
    """Control for the tests above: the same rows, sealed by the library, are obeyed."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/genuine.db")
    study = run(storage, N_TRIALS, signing_key=KEY)
    store, uid, stream = rows_of(study)
    SealedRows(store, uid, Sealer(KEY.encode())).add_interruptions(
        study._study_id, [Interruption(study.trials[3]._trial_id, 3, 3, "test", stream.stream_id)]
    )
    assert [t.number for t in uninterrupted_trials(study, signing_key=KEY)] == [0, 1, 2, 4, 5]
    resumed = run(storage, 1, signing_key=KEY)
    assert resumed.trials[-1].state == TrialState.COMPLETE


# -- rows of earlier releases, which had no seals ---------------------------------------------


class EarlierRelease:
    """Writes rows into a journal's side record or a study's attributes as releases before
    sealed rows did: no seal, and no recorded bound of unsealed rows."""

    def __init__(self, kind: str, location: str, storage: BaseStorage, study_id: int) -> None:
        self.kind, self.location, self.storage, self.study_id = kind, location, storage, study_id

    def forget_bound(self, store: CheckpointStore, uid: str) -> None:
        """Remove what this release recorded about unsealed rows, as if it never ran here."""
        if self.kind == "memory":
            self.storage.set_study_system_attr(self.study_id, UNSEALED_ATTR, None)
        else:
            self._append_catalog(store, lambda catalog: catalog, bound=False)

    def interrupt(self, store: CheckpointStore, uid: str, i: Interruption) -> None:
        record = {
            "study_uid": uid,
            "trial_id": i.trial_id,
            "trial_number": i.trial_number,
            "logical_number": i.logical_number,
            "reason": i.reason,
            "stream_id": i.stream_id,
        }
        if self.kind == "memory":
            key = f"{INTERRUPTED_PREFIX}{i.trial_id}"
            self.storage.set_study_system_attr(self.study_id, key, record)
        else:

            def add(catalog: dict[str, Any]) -> dict[str, Any]:
                unsealed = {**record, "study_id": self.study_id}
                return {**catalog, "interruptions": [*catalog["interruptions"], unsealed]}

            self._append_catalog(store, add, bound=None)

    def claim(self, trial_id: int, stream_id: int) -> None:
        if self.kind == "memory":
            self.storage.set_trial_system_attr(trial_id, CLAIM_ATTR, stream_id)
        elif self.kind == "journal-file":
            slots = SlotFile(self.location + SIDE_FILE_SUFFIX + "-claims", LEGACY_CLAIM)
            slots.write(trial_id, (stream_id,))
        else:
            import redis

            url, _, prefix = self.location.rpartition("#")
            claims = f"optuna-checkpoint:{{{prefix}}}:claims"
            redis.Redis.from_url(url).hset(claims, str(trial_id), str(stream_id))

    @staticmethod
    def _append_catalog(store: CheckpointStore, change: Any, *, bound: bool | None) -> None:
        """Append a catalog record: ``change``d, without the bound (``False``) or as it is."""

        def decide(txn: Any) -> None:
            current = store._replica.catalog  # type: ignore[attr-defined]
            catalog = replace(current, unsealed_rows_until=-1).to_json()
            if bound is False or current.unsealed_rows_until is None:
                del catalog["unsealed_rows_until"]
            else:
                catalog["unsealed_rows_until"] = current.unsealed_rows_until
            txn.append({BASE_KEY: txn.end, CATALOG_KEY: change(catalog)})

        store._log.transact(decide)  # type: ignore[attr-defined]


@pytest.fixture(params=["journal-file", "journal-redis", "memory"])
def earlier(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    return StoreSpec(request.param, KINDS[request.param].locate(tmp_path, request))


def test_unsealed_rows_of_an_earlier_release_are_read_up_to_the_bound_recorded(
    earlier: StoreSpec,
) -> None:
    storage, store = earlier.open()
    study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "legacy")
    trials = [storage.create_new_trial(study_id) for _ in range(4)]
    uid = f"uid-{study_id}"
    store.open_study(study_id, uid)
    stream = store.create_stream(
        study_id, uid, "main", {}, current_owner(), INITIAL, first_trial_number=0
    )
    assert stream is not None
    release = EarlierRelease(earlier.kind, earlier.location, storage, study_id)
    release.forget_bound(store, uid)
    release.interrupt(store, uid, Interruption(trials[1], 1, 1, "killed", stream.stream_id))
    release.claim(trials[2], stream.stream_id)

    # Opened again, as the next process of this release opens it.
    if earlier.kind == "memory":
        reopened: CheckpointStore = AttributeCheckpointStore(storage)
    else:
        reopened = earlier.open()[1]
    reopened.open_study(study_id, uid)
    rows = SealedRows(reopened, uid, Sealer(None))
    assert reopened.unsealed_rows_until(uid) == ANY_UNSEALED_ROWS
    assert [i.trial_id for i in rows.interruptions()] == [trials[1]]
    assert rows.claims(trials) == {trials[2]: stream.stream_id}

    # Its first write records the newest trial an unsealed row belongs to.
    rows.add_interruptions(study_id, [Interruption(trials[3], 3, 1, "killed", stream.stream_id)])
    assert reopened.unsealed_rows_until(uid) == trials[2]
    assert [i.trial_id for i in rows.interruptions()] == [trials[1], trials[3]]
    assert rows.claims(trials) == {trials[2]: stream.stream_id}

    # An unsealed row of a later trial was written by no release: refused.
    later = storage.create_new_trial(study_id)
    release.claim(later, stream.stream_id)
    with pytest.raises(CorruptCheckpointError, match=f"claim of trial id {later} .*no seal"):
        rows.claims([later])
    release.interrupt(store, uid, Interruption(later, 4, 2, "forged", stream.stream_id))
    with pytest.raises(CorruptCheckpointError, match=r"trial 4 .*no seal"):
        rows.interruptions()


def test_verify_reports_a_forged_interruption_and_does_not_obey_it(tmp_path: Path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/verify.db")
    study = run(storage, N_TRIALS)
    assert verify(study).ok
    forge_interruption(study, 3, seal="sha256:" + "A" * 43)
    report = verify(study)
    assert not report.ok
    [problem] = report.problems
    assert (problem.trial_number, problem.kind) == (3, "corrupt")
    assert "fails its checksum" in problem.message
