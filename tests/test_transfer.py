"""Export and import of a study's checkpoints, beside ``optuna.copy_study``, on real storages."""

from __future__ import annotations

import base64
import copy
from dataclasses import dataclass
import gc
import json
import math
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
from typing import Any

from click.testing import CliRunner
import optuna
from optuna.samplers import RandomSampler
from optuna.samplers import TPESampler
from optuna.storages import BaseStorage
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
import pytest
import sqlalchemy as sa

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint._faults import _ENV as CRASH_ENV
from optuna_checkpoint.cli._main import main
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.exceptions import SignatureError
from optuna_checkpoint.exceptions import StudyNotFoundError
from optuna_checkpoint.state._seal import SIGNING_KEY_ENV
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._open import existing_store
from optuna_checkpoint.stores._sql import checkpoints
from optuna_checkpoint.stores._sql import interrupted_trials
from optuna_checkpoint.stores._sql import trial_claims
from optuna_checkpoint.study._identity import study_uid
from optuna_checkpoint.tools._inspect import StreamStatus
from optuna_checkpoint.tools._inspect import study_status
from optuna_checkpoint.tools._transfer import VERSION
from optuna_checkpoint.tools._transfer import ImportReport
from optuna_checkpoint.tools._transfer import export_checkpoints
from optuna_checkpoint.tools._transfer import import_checkpoints
from optuna_checkpoint.tools._transfer import portable_place
from optuna_checkpoint.tools._transfer_document import metadata_fields
from tests.checkpoint_rows import count_rows
from tests.in_process import run_command


pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

NAME = "transfer"
KEY = "a-signing-key-of-32-characters!!"


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5.0, 5.0)
    k = trial.suggest_int("k", 0, 4)
    return (x - 1.0) ** 2 + k


def sampler(**kwargs: Any) -> CheckpointingSampler:
    # Few startup trials, so the continuation is TPE proper, driven by the recorded values.
    return CheckpointingSampler(TPESampler(seed=3, n_startup_trials=4), **kwargs)


def sqlite(path: Path) -> str:
    return f"sqlite:///{path}"


def storage(url: str) -> BaseStorage:
    return optuna.storages.get_storage(url)


def journal(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def run_interrupted(url: str, **kwargs: Any) -> None:
    """4 trials, a trial left RUNNING by a process that "died", then a resume and 3 more."""
    study = optuna.create_study(study_name=NAME, storage=url, sampler=sampler(**kwargs))
    study.optimize(objective, n_trials=4)
    study.ask()
    del study
    gc.collect()  # the dead process's lease is released
    study = optuna.load_study(study_name=NAME, storage=url, sampler=sampler(**kwargs))
    study.optimize(objective, n_trials=3)
    del study
    gc.collect()


def continue_study(where: str | BaseStorage, n: int = 5, **kwargs: Any) -> list[tuple[str, int]]:
    """Resume the study with a fresh sampler for ``n`` trials; their params, bit for bit."""
    study = optuna.load_study(study_name=NAME, storage=where, sampler=sampler(**kwargs))
    before = len(study.trials)
    study.optimize(objective, n_trials=n)
    new = [(t.params["x"].hex(), t.params["k"]) for t in study.trials[before:]]
    del study
    gc.collect()
    return new


def copy_to(source: Path, target: str | BaseStorage) -> None:
    optuna.copy_study(from_study_name=NAME, from_storage=sqlite(source), to_storage=target)


def has_checkpoints(where: BaseStorage) -> bool:
    store = existing_store(where)  # None: not even the side tables exist
    if store is None:
        return False
    study_id = where.get_study_id_from_name(NAME)
    first = where.get_trial(where.get_trial_id_from_study_id_trial_number(study_id, 0))
    uid = study_uid(study_id, NAME, first)
    store.open_study(study_id, uid)
    return bool(store.list_streams(uid))


@dataclass(frozen=True)
class Built:
    path: Path
    continuation: list[tuple[str, int]]


@pytest.fixture(autouse=True)
def _no_key_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The interrupted study, once per module, and how it continues (on a copy of its file)."""
    directory = tmp_path_factory.mktemp("source")
    path = directory / "a.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(SIGNING_KEY_ENV, raising=False)
        run_interrupted(sqlite(path))
        shutil.copy(path, directory / "probe.db")
        continuation = continue_study(sqlite(directory / "probe.db"))
    return Built(path, continuation)


@pytest.fixture
def source(built: Built, tmp_path: Path) -> Path:
    """A fresh copy of the interrupted study's database file, for one test to change."""
    path = tmp_path / "a.db"
    shutil.copy(built.path, path)
    return path


def test_import_continues_the_exported_trajectory(
    built: Built, source: Path, tmp_path: Path
) -> None:
    a, b, c = sqlite(source), sqlite(tmp_path / "b.db"), sqlite(tmp_path / "c.db")
    copy_to(source, b)
    copy_to(source, c)
    # Through JSON text, as a file carries it.
    document = json.loads(json.dumps(export_checkpoints(storage(a), NAME)))
    assert document["format"] == "optuna-checkpoint-export"
    assert [s["name"] for s in document["streams"]] == ["main"]
    numbers = [x["trial_number"] for x in document["streams"][0]["checkpoints"]]
    assert numbers == [None, 0, 1, 2, 3, 5, 6, 7]  # trial 4 was interrupted: no checkpoint
    assert [(i["trial_number"], i["stream"]) for i in document["interruptions"]] == [(4, "main")]
    assert [x["trial_number"] for x in document["claims"]] == list(range(8))

    report = import_checkpoints(storage(b), NAME, document)
    assert report == ImportReport(NAME, streams=1, checkpoints=8, interruptions=1, claims=8)
    # The copy's checkpoints, interrupted trials and claims are the original's.
    status_a, status_b = study_status(storage(a), NAME), study_status(storage(b), NAME)
    assert status_b.interrupted == status_a.interrupted
    assert [streamed(s) for s in status_b.streams] == [streamed(s) for s in status_a.streams]
    assert status_a.resume_exact and status_b.resume_exact, status_b.reasons

    continued_b = continue_study(b)
    continued_a = continue_study(a)
    assert continued_b == continued_a == built.continuation
    # Control: the copy without the import starts a new stream from the seed, and differs.
    assert continue_study(c) != continued_a


def test_export_refuses_a_checkpoint_altered_in_the_database(source: Path) -> None:
    url = sqlite(source)
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        row = connection.execute(
            sa.select(checkpoints.c.checkpoint_id, checkpoints.c.payload)
            .where(checkpoints.c.logical_number == 2)
            .limit(1)
        ).one()
        payload = bytearray(row.payload)
        payload[-1] ^= 1
        connection.execute(
            checkpoints.update()
            .where(checkpoints.c.checkpoint_id == row.checkpoint_id)
            .values(payload=bytes(payload))
        )
    engine.dispose()
    # The same export of the unaltered study succeeds in every other test.
    with pytest.raises(CorruptCheckpointError, match="in stream 'main' cannot be trusted"):
        export_checkpoints(storage(url), NAME)


def test_import_across_storages_into_a_journal_file(
    built: Built, source: Path, tmp_path: Path
) -> None:
    path = tmp_path / "b.log"
    copy_to(source, journal(path))
    document = export_checkpoints(storage(sqlite(source)), NAME)
    report = import_checkpoints(journal(path), NAME, document)
    assert (report.checkpoints, report.interruptions, report.claims) == (8, 1, 8)
    # A new storage object, as a new process opens it: it reads the side record from the file.
    assert continue_study(journal(path)) == built.continuation


def streamed(stream: StreamStatus) -> tuple[Any, ...]:
    return (stream.name, stream.first_trial_number, stream.checkpoints, stream.newest_trial_number)


def _flip(text: str) -> str:
    # The middle of the base64 text: every bit there belongs to the payload.
    i = len(text) // 2
    return text[:i] + ("B" if text[i] == "A" else "A") + text[i + 1 :]


@pytest.mark.parametrize("tamper", ["payload", "values"])
def test_a_tampered_export_is_refused_and_nothing_is_written(
    source: Path, tmp_path: Path, tamper: str
) -> None:
    b = storage(sqlite(tmp_path / "b.db"))
    copy_to(source, b)
    document = export_checkpoints(storage(sqlite(source)), NAME)
    altered = copy.deepcopy(document)
    checkpoint = altered["streams"][0]["checkpoints"][3]
    assert checkpoint["trial_number"] == 2
    if tamper == "payload":
        checkpoint["payload"] = _flip(checkpoint["payload"])
    else:
        value = float.fromhex(checkpoint["trial_values"][0])
        checkpoint["trial_values"] = [math.nextafter(value, math.inf).hex()]

    with pytest.raises(CorruptCheckpointError, match="of trial 2 in stream 'main'"):
        import_checkpoints(b, NAME, altered)
    assert existing_store(b) is None  # not even the side tables were created
    # Control: the same document, unaltered, goes into the same study.
    assert import_checkpoints(b, NAME, document).checkpoints == 8
    assert has_checkpoints(b)


def _change_fingerprint(d: dict[str, Any]) -> None:
    d["streams"][0]["fingerprint"]["seed"] = 4


def _start_later(d: dict[str, Any]) -> None:
    d["streams"][0]["first_trial_number"] += 1


def _drop_a_checkpoint(d: dict[str, Any]) -> None:
    del d["streams"][0]["checkpoints"][5]


def _move_the_interruption(d: dict[str, Any]) -> None:
    d["interruptions"][-1]["logical_number"] += 1


def _drop_the_last_claim(d: dict[str, Any]) -> None:
    del d["claims"][-1]


def _point_a_cached_trial_elsewhere(d: dict[str, Any]) -> None:
    d["trial_ids"][-1][1] = 0


@pytest.mark.parametrize(
    "tamper",
    [
        _change_fingerprint,
        _start_later,
        _drop_a_checkpoint,
        _move_the_interruption,
        _drop_the_last_claim,
        _point_a_cached_trial_elsewhere,
    ],
)
def test_an_export_whose_streams_or_rows_were_changed_is_refused_and_nothing_is_written(
    source: Path, tmp_path: Path, tamper: Any
) -> None:
    b = storage(sqlite(tmp_path / "b.db"))
    copy_to(source, b)
    document = json.loads(json.dumps(export_checkpoints(storage(sqlite(source)), NAME)))
    altered = copy.deepcopy(document)
    tamper(altered)

    with pytest.raises(CorruptCheckpointError, match=r"export of study 'transfer' cannot be"):
        import_checkpoints(b, NAME, altered)
    assert existing_store(b) is None  # not even the side tables were created
    # Control: the same document, unaltered, goes into the same study.
    assert import_checkpoints(b, NAME, document).checkpoints == 8


def test_an_export_of_version_1_is_read_without_a_key_and_refused_with_one(
    source: Path, tmp_path: Path
) -> None:
    # What the release before sealed metadata wrote: the same, without the document's seal.
    document = export_checkpoints(storage(sqlite(source)), NAME)
    older = {k: v for k, v in document.items() if k != "seal"} | {"version": 1}
    b = storage(sqlite(tmp_path / "b.db"))
    copy_to(source, b)
    with pytest.raises(SignatureError, match=r"version 1, whose streams.*export the study again"):
        import_checkpoints(b, NAME, older, signing_key=KEY)
    assert existing_store(b) is None
    assert import_checkpoints(b, NAME, older).checkpoints == 8
    with pytest.raises(CheckpointError, match=r"malformed.*has no 'seal'"):
        import_checkpoints(b, NAME, {**older, "version": 2})  # a sealed version, unsealed


def import_killed(location: str, exported: Path, kill_at: int) -> None:
    """Run the import command in a process that is killed at its ``kill_at``-th write."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "optuna_checkpoint.cli", "import"),
            *("--storage", location, "--study-name", NAME, "--input", str(exported)),
        ],
        env={**os.environ, CRASH_ENV: f"inside_import:{kill_at}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_an_import_killed_midway_leaves_a_sql_copy_as_it_was(
    built: Built, source: Path, tmp_path: Path
) -> None:
    b = sqlite(tmp_path / "b.db")
    copy_to(source, b)
    exported = tmp_path / "export.json"
    exported.write_text(json.dumps(export_checkpoints(storage(sqlite(source)), NAME)))

    import_killed(b, exported, kill_at=1)  # the stream and its checkpoints written, not the rows

    assert not has_checkpoints(storage(b))
    for table in (checkpoints, interrupted_trials, trial_claims):
        assert count_rows(b, table) == 0, table.name
    assert import_checkpoints(storage(b), NAME, json.loads(exported.read_text())).claims == 8
    assert continue_study(b) == built.continuation


def test_an_import_killed_midway_into_a_journal_completes_when_run_again(
    built: Built, source: Path, tmp_path: Path
) -> None:
    path = tmp_path / "b.log"
    copy_to(source, journal(path))
    exported = tmp_path / "export.json"
    exported.write_text(json.dumps(export_checkpoints(storage(sqlite(source)), NAME)))

    import_killed(str(path), exported, kill_at=4)  # three checkpoints saved of seven
    assert has_checkpoints(journal(path))  # part of it, which resuming from would be wrong

    report = import_checkpoints(journal(path), NAME, json.loads(exported.read_text()))
    assert (report.checkpoints, report.interruptions, report.claims) == (8, 1, 8)
    assert continue_study(journal(path)) == built.continuation


def test_what_is_not_a_copy_of_the_study_is_refused(source: Path, tmp_path: Path) -> None:
    document = export_checkpoints(storage(sqlite(source)), NAME)

    def fresh(name: str, trials: int) -> BaseStorage:
        # A study of the same name, not copied: its own trials, or too few of them.
        target = storage(sqlite(tmp_path / f"{name}.db"))
        study = optuna.create_study(study_name=NAME, storage=target, sampler=RandomSampler(0))
        study.optimize(objective, n_trials=trials)
        return target

    short = fresh("short", 3)
    with pytest.raises(CheckpointError, match=r"has no trial 3, .*optuna\.copy_study"):
        import_checkpoints(short, NAME, document)
    other = fresh("other", 8)
    with pytest.raises(CheckpointError, match=r"other values .* not a copy"):
        import_checkpoints(other, NAME, document)
    with pytest.raises(StudyNotFoundError, match="no study named 'nope'"):
        import_checkpoints(other, "nope", document)
    assert not has_checkpoints(short)
    assert not has_checkpoints(other)

    newer = {**document, "version": VERSION + 1}
    with pytest.raises(CheckpointError, match="upgrade optuna-checkpoint"):
        import_checkpoints(other, NAME, newer)
    with pytest.raises(CheckpointError, match="not an optuna-checkpoint export"):
        import_checkpoints(other, NAME, {**document, "format": "something-else"})
    broken = copy.deepcopy(document)
    del broken["streams"][0]["checkpoints"][2]["seal"]
    with pytest.raises(CheckpointError, match=r"malformed.*has no 'seal'"):
        import_checkpoints(other, NAME, broken)

    # Control: a real copy takes it, once; a second import would merge streams.
    b = storage(sqlite(tmp_path / "b.db"))
    copy_to(source, b)
    import_checkpoints(b, NAME, document)
    with pytest.raises(CheckpointError, match="already has checkpoint streams"):
        import_checkpoints(b, NAME, document)


def test_signed_checkpoints_travel_signed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "a.db"
    study = optuna.create_study(
        study_name=NAME, storage=sqlite(source), sampler=sampler(signing_key=KEY)
    )
    study.optimize(objective, n_trials=4)
    del study
    gc.collect()
    with pytest.raises(SignatureError, match="no signing key"):
        export_checkpoints(storage(sqlite(source)), NAME)
    monkeypatch.setenv(SIGNING_KEY_ENV, KEY)  # the key from the environment, as the CLI has it
    document = export_checkpoints(storage(sqlite(source)), NAME)
    monkeypatch.delenv(SIGNING_KEY_ENV)
    seals = [c["seal"] for s in document["streams"] for c in s["checkpoints"]]
    assert len(seals) == 5 and all(seal.startswith("hmac-sha256:") for seal in seals)

    b = storage(sqlite(tmp_path / "b.db"))
    copy_to(source, b)
    with pytest.raises(SignatureError, match="no signing key"):
        import_checkpoints(b, NAME, document)
    with pytest.raises(CorruptCheckpointError, match="signed with another key"):
        import_checkpoints(b, NAME, document, signing_key="another-key-of-32-characters!!!!")
    # A forger without the key alters a payload and seals it with a plain digest.
    forged = copy.deepcopy(document)
    raw = forged["streams"][0]["checkpoints"][2]
    raw["payload"] = _flip(raw["payload"])
    forged_checkpoint = Checkpoint(
        trial_id=None,
        logical_number=raw["logical_number"],
        trial_state=raw["trial_state"],
        trial_values=[float.fromhex(h) for h in raw["trial_values"]],
        adapter=raw["adapter"],
        payload=base64.b64decode(raw["payload"]),
        checksum="",
    )
    where = portable_place(NAME, "main", raw["trial_number"], raw["logical_number"])
    raw["seal"] = Sealer(None).seal(forged_checkpoint, where)
    forged["seal"] = Sealer(None).seal_row(metadata_fields(forged))  # the document's, too
    with pytest.raises(SignatureError, match=r"export of study 'transfer' .*not signed"):
        import_checkpoints(b, NAME, forged, signing_key=KEY)
    assert existing_store(b) is None

    # Control: with the key, the copy takes it and continues as the original does.
    assert import_checkpoints(b, NAME, document, signing_key=KEY).checkpoints == 5
    continued_b = continue_study(b, n=3, signing_key=KEY)
    assert continued_b == continue_study(sqlite(source), n=3, signing_key=KEY)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The command, run in this process (click's runner), without a signing key in its env."""
    env = {SIGNING_KEY_ENV: None}
    return run_command(main, list(args), prog_name="optuna-checkpoint", env=env)


def test_cli_round_trip(source: Path, tmp_path: Path) -> None:
    b = sqlite(tmp_path / "b.db")
    copy_to(source, b)
    exported = tmp_path / "export.json"
    done = cli(
        "export", "--storage", sqlite(source), "--study-name", NAME, "--output", str(exported)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "Exported 8 checkpoint(s) in 1 stream(s)" in done.stderr

    done = cli("import", "--storage", b, "--study-name", NAME, "--input", str(exported), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "study_name": NAME,
        "streams": 1,
        "checkpoints": 8,
        "interruptions": 1,
        "claims": 8,
    }

    done = cli("import", "--storage", b, "--study-name", NAME, "--input", str(exported))
    assert done.returncode == 1
    assert "already has checkpoint streams" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_problems_exit_with_1(source: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    url = sqlite(source)
    result = runner.invoke(main, ["export", "--storage", url, "--study-name", "nope"])
    assert result.exit_code == 1
    assert "no study named 'nope'" in result.output

    # To standard output: the same document a file gets.
    result = runner.invoke(main, ["export", "--storage", url, "--study-name", NAME])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == export_checkpoints(storage(url), NAME)

    not_json = tmp_path / "not.json"
    not_json.write_text("{ nope")
    args = ["import", "--storage", url, "--study-name", NAME, "--input", str(not_json), "--json"]
    result = runner.invoke(main, args)
    assert result.exit_code == 1
    assert "is not a JSON document" in json.loads(result.stdout)["error"]


def nsga_study(url: str) -> optuna.Study:
    return optuna.create_study(
        study_name=NAME,
        storage=url,
        load_if_exists=True,
        directions=["minimize", "minimize"],
        sampler=CheckpointingSampler(optuna.samplers.NSGAIISampler(population_size=4, seed=2)),
    )


def two_objectives(trial: optuna.Trial) -> tuple[float, float]:
    x, y = trial.suggest_float("x", -5.0, 5.0), trial.suggest_float("y", -5.0, 5.0)
    return x * x + y, (x - 2) ** 2 - y


def test_sampler_caches_that_name_trials_are_pointed_at_the_copies(tmp_path: Path) -> None:
    # NSGA-II caches each generation's parents in a study attribute, as trial ids; copy_study
    # copies it as it is, so the import points it at the copied trials.
    source, target = sqlite(tmp_path / "a.db"), sqlite(tmp_path / "b.db")
    nsga_study(source).optimize(two_objectives, n_trials=10)  # into generation 2
    gc.collect()
    # Another study first, so that the copy's trial ids differ from the source's.
    optuna.create_study(study_name="other", storage=target).optimize(objective, n_trials=3)
    optuna.copy_study(from_study_name=NAME, from_storage=source, to_storage=target)
    import_checkpoints(storage(target), NAME, export_checkpoints(storage(source), NAME))

    continued = []
    for url in (source, target):
        study = nsga_study(url)
        study.optimize(two_objectives, n_trials=6)
        continued.append([{k: v.hex() for k, v in t.params.items()} for t in study.trials[10:]])
        del study
        gc.collect()
    assert continued[0] == continued[1]


@pytest.mark.soak  # the test above covers the first import
def test_an_import_run_again_points_the_sampler_caches_at_the_copies_once(tmp_path: Path) -> None:
    source, target = sqlite(tmp_path / "a.db"), journal(tmp_path / "b.log")
    nsga_study(source).optimize(two_objectives, n_trials=10)  # into generation 2
    gc.collect()
    optuna.create_study(study_name="other", storage=target).optimize(objective, n_trials=3)
    optuna.copy_study(from_study_name=NAME, from_storage=source, to_storage=target)
    exported = tmp_path / "export.json"
    exported.write_text(json.dumps(export_checkpoints(storage(source), NAME)))

    import_killed(str(tmp_path / "b.log"), exported, kill_at=1)  # the caches are rewritten
    import_checkpoints(journal(tmp_path / "b.log"), NAME, json.loads(exported.read_text()))

    continued = []
    for where in (source, journal(tmp_path / "b.log")):
        study = nsga_study(where)  # type: ignore[arg-type]
        study.optimize(two_objectives, n_trials=6)
        continued.append([{k: v.hex() for k, v in t.params.items()} for t in study.trials[10:]])
        del study
        gc.collect()
    assert continued[0] == continued[1]
