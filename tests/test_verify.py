"""verify(): the integrity pass over every checkpoint, and the replay of the sampler."""

from __future__ import annotations

import gc
import json
import pathlib
import subprocess
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.samplers import CmaEsSampler
from optuna.samplers import TPESampler
import pytest
import sqlalchemy as sa

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import verify
from optuna_checkpoint.cli._main import main
from optuna_checkpoint.state import _codec
from optuna_checkpoint.stores._sql import checkpoints
from optuna_checkpoint.stores._sql import streams
from optuna_checkpoint.tools._verify_report import CONFIGURED_OTHERWISE
from optuna_checkpoint.tools._verify_report import Problem
from optuna_checkpoint.tools._verify_report import VerificationReport
from tests.checkpoint_rows import seal_of_row
from tests.checkpoint_rows import tag_told_elsewhere
from tests.in_process import run_command


STUDY = "verified"


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5.0, 5.0)
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    k = trial.suggest_int("k", 0, 4)
    kind = trial.suggest_categorical("kind", ["a", "b", None])
    trial.report(x * x, 0)
    if trial.number % 7 == 5:
        raise optuna.TrialPruned()
    if trial.number % 7 == 6:
        raise ValueError("a failing trial")
    return x * x + lr + k + (kind == "a")


def open_study(url: str, sampler: BaseSampler, **options: Any) -> optuna.Study:
    return optuna.create_study(
        study_name=STUDY,
        storage=url,
        load_if_exists=True,
        sampler=CheckpointingSampler(sampler, **options),
    )


def interrupted_run(url: str, make: Any, n_trials: int = 12) -> optuna.Study:
    """Run with one trial abandoned midway, as by a process that died in the objective."""
    study = open_study(url, make())
    study.optimize(objective, n_trials=4, catch=(ValueError,))
    study.ask()  # left RUNNING
    del study
    gc.collect()  # the lease is released: the next sampler resumes
    study = open_study(url, make())
    study.enqueue_trial({"x": 0.5})  # a trial whose parameter is fixed by the user
    study.optimize(objective, n_trials=n_trials - 4, catch=(ValueError,))
    return optuna.load_study(study_name=STUDY, storage=url)


@pytest.fixture
def url(tmp_path: pathlib.Path) -> str:
    return f"sqlite:///{tmp_path / 'v.db'}"


@pytest.mark.parametrize(
    "make",
    [lambda: TPESampler(seed=7, n_startup_trials=4), lambda: CmaEsSampler(seed=7)],
    ids=["tpe", "cmaes"],
)
def test_a_resumed_study_verifies_and_replays_every_trial(url: str, make: Any) -> None:
    study = interrupted_run(url, make)

    report = verify(study, make())

    assert report.ok, str(report)
    assert report.problems == [] and report.divergence is None
    assert report.replayed_streams == ["main"] and not report.by_position
    assert report.trials_replayed == 12  # the interrupted attempt is not part of the run
    assert report.checkpoints_checked == 12 + 1
    assert str(report) == "verified: 13 checkpoints intact, 12 trials replayed bit for bit"


def test_a_differently_configured_sampler_is_reported_and_diverges_where_it_matters(
    url: str,
) -> None:
    study = interrupted_run(url, lambda: TPESampler(seed=7, n_startup_trials=4))

    report = verify(study, TPESampler(seed=7, n_startup_trials=2))

    assert not report.ok
    assert [p.kind for p in report.problems] == ["configuration"]
    assert report.problems[0].differences == ("n_startup_trials: recorded 4, given 2",)
    divergence = report.divergence
    assert divergence is not None and divergence.trial_number == 2  # TPE's model starts there
    assert divergence.param == "x" and divergence.matched == 2
    assert divergence.recorded == study.trials[2].params["x"].hex()
    assert any("configured differently" in c for c in divergence.likely_causes)
    assert str(report).splitlines()[:2] == [
        "NOT verified: the sampler given is configured differently from the one that wrote "
        "the checkpoints (n_startup_trials: recorded 4, given 2)",
        "  Integrity: 13 checkpoints in 1 stream intact.",
    ]
    assert (
        "Replay with the sampler given diverged at trial 2, parameter 'x' (the 2 trials "
        "before it matched):" in str(report)
    )


def test_another_seed_is_reported_though_the_initial_checkpoint_replays_the_run(
    url: str,
) -> None:
    # The replay starts from the stream's initial checkpoint, which holds the RNG as seeded:
    # the trajectory is reproduced, but a resume with this sampler would be refused.
    study = interrupted_run(url, lambda: TPESampler(seed=7, n_startup_trials=4))
    report = verify(study, TPESampler(seed=8, n_startup_trials=4))
    assert report.divergence is None and report.trials_replayed == 12
    assert [p.kind for p in report.problems] == ["configuration"]
    assert report.problems[0].differences == ("seed: recorded 7, given 8",)
    # No line says the trials were reproduced: the verdict is the refusal.
    assert "bit for bit" not in str(report)


def rewrite_checkpoint(url: str, trial_number: int, change_state: Any) -> None:
    """Change the state in one trial's checkpoint and seal it validly, as a bug would."""
    study = optuna.load_study(study_name=STUDY, storage=url)
    trial_id = study.trials[trial_number]._trial_id
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            row = connection.execute(
                checkpoints.select().where(checkpoints.c.trial_id == trial_id)
            ).one()
            stream = connection.execute(
                streams.select().where(streams.c.stream_id == row.stream_id)
            ).one()
            state = change_state(_codec.decode(row.payload))
            payload = _codec.encode(state)
            connection.execute(
                checkpoints.update()
                .where(checkpoints.c.checkpoint_id == row.checkpoint_id)
                .values(payload=payload, checksum=seal_of_row(row, stream, payload=payload))
            )
    finally:
        engine.dispose()


def test_a_checkpoint_whose_state_differs_from_the_replay_is_the_divergence(url: str) -> None:
    interrupted_run(url, lambda: TPESampler(seed=7, n_startup_trials=4))

    def advance(state: dict[str, Any]) -> dict[str, Any]:
        key = state["rng"]["key"].copy()
        key[0] ^= 1
        return {**state, "rng": {**state["rng"], "key": key}}

    rewrite_checkpoint(url, 2, advance)
    study = optuna.load_study(study_name=STUDY, storage=url)
    report = verify(study, TPESampler(seed=7, n_startup_trials=4))

    assert report.problems == []  # validly sealed: only the replay can tell
    assert report.divergence is not None
    assert report.divergence.trial_number == 2 and report.divergence.param is None
    assert report.trials_replayed == 2


def test_a_tampered_checkpoint_is_reported_and_the_replay_is_not_run(url: str) -> None:
    interrupted_run(url, lambda: TPESampler(seed=7, n_startup_trials=4))
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                checkpoints.update()
                .where(checkpoints.c.logical_number == 3)
                .values(checksum="sha256:" + "A" * 43)
            )
    finally:
        engine.dispose()
    study = optuna.load_study(study_name=STUDY, storage=url)

    report = verify(study, TPESampler(seed=7, n_startup_trials=4))

    assert not report.ok
    assert [(p.kind, p.trial_number) for p in report.problems] == [("corrupt", 3)]
    assert report.replayed_streams == []
    assert report.replay_not_run == "the checkpoints cannot be trusted (see above)"
    assert str(report).splitlines()[0] == (
        "NOT verified: the checkpoint of trial 3 of stream 'main' fails its integrity check"
    )


def test_without_a_sampler_only_the_integrity_pass_runs(url: str) -> None:
    study = interrupted_run(url, lambda: TPESampler(seed=7), n_trials=5)
    report = verify(study)
    assert report.ok and report.checkpoints_checked == 6 and report.trials_replayed == 0
    assert str(report) == (
        "verified: 6 checkpoints intact; trials not replayed: no sampler given (pass the one "
        "the study ran with: --sampler)"
    )


def test_signed_checkpoints_need_the_key(url: str) -> None:
    key = "k" * 24
    study = open_study(url, TPESampler(seed=1), signing_key=key)
    study.optimize(objective, n_trials=3, catch=(ValueError,))

    assert verify(study, TPESampler(seed=1), signing_key=key).ok
    unchecked = verify(study, TPESampler(seed=1))
    assert {p.kind for p in unchecked.problems} == {"signature"}


def test_workers_that_took_turns_are_replayed_stream_by_stream(url: str) -> None:
    first = open_study(url, TPESampler(seed=1), worker_id="a")
    first.optimize(objective, n_trials=2)
    first.ask()  # left RUNNING, as by a process that died in the objective
    del first
    gc.collect()
    # Worker a resumes: its retry starts before the resume closes the attempt it repeats.
    open_study(url, TPESampler(seed=1), worker_id="a").optimize(objective, n_trials=2)
    second = open_study(url, TPESampler(seed=1), worker_id="b")
    second.optimize(objective, n_trials=2, catch=(ValueError,))

    report = verify(optuna.load_study(study_name=STUDY, storage=url), TPESampler(seed=1))

    assert report.ok, str(report)
    assert report.streams == ["a", "b"] and report.checkpoints_checked == 5 + 3
    assert report.replayed_streams == ["a", "b"] and report.trials_replayed == 6
    assert report.not_replayed == {} and not report.by_position


def test_a_free_worker_whose_trial_ran_beside_another_is_checked_but_not_replayed(
    url: str,
) -> None:
    first = open_study(url, TPESampler(seed=1), worker_id="a")
    second = open_study(url, TPESampler(seed=1), worker_id="b")
    trial_a, trial_b = first.ask(), second.ask()  # trials 0 and 1 run at the same time
    second.tell(trial_b, 1.0)
    first.tell(trial_a, 2.0)
    open_study(url, TPESampler(seed=1), worker_id="c").optimize(objective, n_trials=3)

    report = verify(optuna.load_study(study_name=STUDY, storage=url), TPESampler(seed=1))

    assert report.ok and report.replayed_streams == ["c"] and report.trials_replayed == 3
    assert report.not_replayed == {
        "a": "its trial 0 ran at the same time as trial 1 (of stream 'b')",
        "b": "its trial 1 ran at the same time as trial 0 (of stream 'a')",
    }
    lines = str(report).splitlines()
    assert lines[0] == (
        "verified: 8 checkpoints intact, 3 trials replayed bit for bit (stream 'c'); "
        "streams 'a', 'b' not replayed (below)"
    )
    assert lines[1:4] == [
        "  Checked for integrity but not replayed:",
        "    stream 'a': its trial 0 ran at the same time as trial 1 (of stream 'b')",
        "    stream 'b': its trial 1 ran at the same time as trial 0 (of stream 'a')",
    ]
    assert "do not record which results each of their proposals saw" in lines[4]


def deterministic_run(url: str, workers: list[str], n_trials: int = 4) -> optuna.Study:
    """Workers with deterministic_workers=2 in turn, each running two trials at a time."""
    for worker in workers:
        study = open_study(
            url, TPESampler(seed=3, n_startup_trials=2), worker_id=worker, deterministic_workers=2
        )
        study.optimize(objective, n_trials=n_trials, n_jobs=2, catch=(ValueError,))
        del study
        gc.collect()
    return optuna.load_study(study_name=STUDY, storage=url)


def test_a_deterministic_study_of_several_workers_is_replayed_position_by_position(
    url: str,
) -> None:
    study = deterministic_run(url, ["a", "b"])

    report = verify(study, TPESampler(seed=3, n_startup_trials=2))

    assert report.ok, str(report)
    assert report.by_position and report.replayed_streams == ["a", "b"]
    assert report.trials_replayed == 8 and report.checkpoints_checked == 8 + 2
    assert str(report) == (
        "verified: 10 checkpoints intact, 8 trials replayed bit for bit position by position "
        "(streams 'a', 'b')"
    )


def test_a_deterministic_checkpoint_whose_state_differs_from_the_replay_is_the_divergence(
    url: str,
) -> None:
    deterministic_run(url, ["main"], n_trials=6)

    def advance(state: dict[str, Any]) -> dict[str, Any]:
        key = state["rng"]["key"].copy()
        key[0] ^= 1
        return {**state, "rng": {**state["rng"], "key": key}}

    rewrite_checkpoint(url, 4, advance)
    report = verify(
        optuna.load_study(study_name=STUDY, storage=url), TPESampler(seed=3, n_startup_trials=2)
    )

    divergence = report.divergence
    assert report.problems == [] and divergence is not None
    assert (divergence.trial_number, divergence.param, divergence.stream) == (4, None, "main")
    assert report.trials_replayed == 4
    # The trials of a deterministic study do not depend on timing: no such cause is named.
    assert not any("same time" in cause for cause in divergence.likely_causes)


def with_a_reporting_attempt(url: str, objective: Any) -> optuna.Study:
    """Two trials, then one whose process "dies" after reporting, then its retry and one more."""
    study = open_study(url, TPESampler(seed=2))
    study.optimize(objective, n_trials=2)
    attempt = study.ask()
    objective(attempt)
    del study, attempt
    gc.collect()
    study = open_study(url, TPESampler(seed=2))
    study.optimize(objective, n_trials=2)
    return optuna.load_study(study_name=STUDY, storage=url)


def test_a_retry_that_reports_other_values_than_its_attempt_shows_a_random_objective(
    url: str,
) -> None:
    noise = iter([0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0])

    def noisy(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5.0, 5.0)
        trial.report(x + next(noise), 0)  # not a function of x alone
        return x

    study = with_a_reporting_attempt(url, noisy)
    report = verify(study, TPESampler(seed=2))

    assert report.ok  # the sampler is not at fault
    attempt, retry = (study.trials[n].intermediate_values[0] for n in (2, 3))
    assert [n for n in report.notes if "not deterministic" in n] == [
        "the objective is not deterministic: trial 3 repeated interrupted trial 2 with the same "
        f"parameters but reported {retry!r} at step 0 where it had reported {attempt!r}; "
        "resumes cannot be exact until it is (see audit_determinism)"
    ]


def test_a_deterministic_objective_gets_no_such_note(url: str) -> None:
    def steady(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5.0, 5.0)
        trial.report(x * 2, 0)
        return x

    study = with_a_reporting_attempt(url, steady)
    report = verify(study, TPESampler(seed=2))

    assert study.trials[3].system_attrs["retry_history"] == [2]  # a retry was compared
    assert 0 in study.trials[2].intermediate_values
    assert report.ok and not [n for n in report.notes if "deterministic" in n]


# -- the command -----------------------------------------------------------------------------


def verify_command(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``optuna-checkpoint verify`` on the test study, run in this process."""
    return run_command(
        main, ["verify", "--storage", url, "--study-name", STUDY, *args], prog_name="oc"
    )


VERDICTS = [
    (
        "TPESampler(seed=7, n_startup_trials=4)",
        0,
        "verified: 9 checkpoints intact, 8 trials replayed bit for bit",
    ),
    (
        "TPESampler(seed=8, n_startup_trials=4)",
        1,
        "NOT verified: the sampler given is configured differently from the one that wrote "
        "the checkpoints (seed: recorded 7, given 8)",
    ),
    (
        "RandomSampler(seed=7)",
        1,
        "NOT verified: the sampler given is a RandomSampler, the study's checkpoints were "
        "written by TPESampler(seed=7)",
    ),
]


def test_the_command_states_one_verdict_first_and_no_success_it_contradicts(url: str) -> None:
    open_study(url, TPESampler(seed=7, n_startup_trials=4)).optimize(
        objective, n_trials=8, catch=(ValueError,)
    )
    for given, code, verdict in VERDICTS:
        result = verify_command(url, "--sampler", given)
        as_json = json.loads(verify_command(url, "--sampler", given, "--json").stdout)

        assert result.returncode == code, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == verdict
        assert f"{as_json['verdict']}: {as_json['reason']}" == verdict
        if code:
            assert "bit for bit" not in result.stdout and "attrs" not in result.stdout
            assert len(lines) <= 3, result.stdout  # the verdict, the integrity, one more line


def test_the_command_reports_a_replay_that_diverges(url: str) -> None:
    open_study(url, TPESampler(seed=7, n_startup_trials=4)).optimize(
        objective, n_trials=5, catch=(ValueError,)
    )

    def advance(state: dict[str, Any]) -> dict[str, Any]:
        return {**state, "rng": {**state["rng"], "pos": state["rng"]["pos"] - 1}}

    rewrite_checkpoint(url, 3, advance)
    result = verify_command(url, "--sampler", "TPESampler(seed=7, n_startup_trials=4)")

    assert result.returncode == 1
    assert result.stdout.splitlines()[:3] == [
        "NOT verified: the replay diverged at trial 3 (the sampler's state after it differs "
        "from its checkpoint)",
        "Integrity: 6 checkpoints in 1 stream intact.",
        "Replay diverged at trial 3, the sampler's state after it differs from its checkpoint "
        "(the 3 trials before it matched):",
    ]


def delete_newest_checkpoints(url: str, count: int) -> None:
    """Delete the newest checkpoint rows, as a hand or a faulty backup would."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            newest = (
                sa.select(checkpoints.c.checkpoint_id)
                .order_by(checkpoints.c.checkpoint_id.desc())
                .limit(count)
            )
            ids = list(connection.execute(newest).scalars())
            connection.execute(checkpoints.delete().where(checkpoints.c.checkpoint_id.in_(ids)))
    finally:
        engine.dispose()


def test_finished_trials_whose_checkpoints_were_deleted_fail_the_verification(
    url: str,
) -> None:
    open_study(url, TPESampler(seed=7, n_startup_trials=4)).optimize(objective, n_trials=6)
    delete_newest_checkpoints(url, 2)

    result = verify_command(url, "--sampler", "TPESampler(seed=7, n_startup_trials=4)")

    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "NOT verified: the checkpoints of trials 4, 5 are missing (stream 'main')",
        "Integrity: 5 checkpoints in 1 stream intact.",
        "Missing checkpoints in stream 'main': trials 4, 5 finished after the stream's newest "
        "checkpoint (trial 3's) without one of their own: the checkpoints deleted or lost, or "
        "the trials told by a process not attached to the stream",
        "Replay not run: the checkpoints cannot be trusted (see above).",
    ]

    # A trial told by a process not attached to its stream says so, and is no evidence.
    last = optuna.load_study(study_name=STUDY, storage=url).trials[-1]
    tag_told_elsewhere(url, last._trial_id)
    report = json.loads(verify_command(url, "--json").stdout)
    assert [(p["kind"], p["trials"]) for p in report["problems"]] == [("missing", [4])]


def test_several_differences_are_listed_once_below_the_verdict() -> None:
    differences = ("n_startup_trials: recorded 10, given 3", "seed: recorded 42, given 43")
    report = VerificationReport("s", streams=["a", "b"], checkpoints_checked=4)
    for stream in ("a", "b"):
        report.problems.append(
            Problem(stream, None, "configuration", CONFIGURED_OTHERWISE, differences=differences)
        )

    assert str(report).splitlines() == [
        f"NOT verified: {CONFIGURED_OTHERWISE} (2 differences)",
        "  Integrity: 4 checkpoints in 2 streams intact.",
        "  Differences (streams 'a', 'b'):",
        "    n_startup_trials: recorded 10, given 3",
        "    seed: recorded 42, given 43",
    ]
