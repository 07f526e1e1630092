"""Deterministic parallel optimization: K workers give the same trajectory on every run.

Each test runs a real study with several worker processes (or threads) whose trials sleep random
times drawn from the operating system, so that trials finish in a different order on every run,
and compares the logical trajectories (``uninterrupted_trials``: state, parameters, value and
intermediate values, as ``float.hex``) of two runs bit for bit. The kill tests kill random
workers with random signals at random instants and restart them. The controls run plain parallel
Optuna the same way and show that its trajectories differ, so each comparison can fail.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
import contextlib
from pathlib import Path
import random
import signal
import subprocess
import time
from typing import Any
from typing import TypeVar

import optuna
import pytest

from optuna_checkpoint import uninterrupted_trials
from tests.kill_fuzz.harness import ChildProcess
from tests.kill_fuzz.harness import interrupt_again_if_ignored
from tests.kill_fuzz.harness import sqlite_url
from tests.kill_fuzz.harness import start_piped
from tests.kill_fuzz.storages import open_storage


CHILD = Path(__file__).with_name("deterministic_child.py")
WORKERS = 4
POSITIONS = 24
DELAY = 0.05  # upper bound of each of the objective's three random sleeps, in seconds
ATTEMPTS = 3  # kill runs tried before a test gives up on a kill cutting a trial off
TIMEOUT = 120.0

Trajectory = list[tuple[Any, ...]]
_T = TypeVar("_T")


def _config(
    storage: str, sampler: str, *, deterministic: bool = True, **extra: Any
) -> dict[str, Any]:
    return {
        "storage": storage,
        "sampler": sampler,
        "seed": 11,
        "workers": WORKERS,
        "positions": POSITIONS,
        "delay": DELAY,
        "deterministic": deterministic,
        **extra,
    }


def _start(config: dict[str, Any]) -> ChildProcess:
    return start_piped(CHILD, config)


def _wait(process: ChildProcess, deadline: float) -> tuple[int, str]:
    """Wait for ``process`` to end; return its exit code and standard error."""
    try:
        _, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        raise AssertionError(f"a worker did not finish in time:\n{stderr[-3000:]}") from None
    return process.returncode, stderr


def _finish(process: ChildProcess, deadline: float) -> None:
    code, stderr = _wait(process, deadline)
    assert code == 0, f"a worker failed:\n{stderr[-3000:]}"


def _new_study(storage: str) -> None:
    optuna.create_study(study_name="parallel", storage=open_storage(storage))


def _trajectory(storage: str) -> Trajectory:
    study = optuna.load_study(study_name="parallel", storage=open_storage(storage))
    return [
        (
            t.state.name,
            {name: value.hex() for name, value in sorted(t.params.items())},
            None if t.value is None else t.value.hex(),
            {step: value.hex() for step, value in sorted(t.intermediate_values.items())},
        )
        for t in uninterrupted_trials(study)
    ]


def _worker_configs(storage: str, sampler: str, **extra: Any) -> list[dict[str, Any]]:
    return [_config(storage, sampler, worker_id=f"w{i}", **extra) for i in range(WORKERS)]


@contextlib.contextmanager
def _fleet(configs: list[dict[str, Any]]) -> Iterator[list[ChildProcess]]:
    """Start a worker per configuration; kill those still running when the block ends.

    The block may replace workers in the list (restarts): those are killed too.
    """
    processes = [_start(config) for config in configs]
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


def _still_running_after_a_random_instant(process: ChildProcess, rng: random.Random) -> bool:
    """Wait until ``process`` has opened the study, then a random instant into its trials."""
    assert process.stdout is not None
    process.stdout.readline()  # "ready", or nothing if it has finished
    time.sleep(rng.uniform(0.05, 0.4))
    return process.poll() is None


def run_processes(storage: str, sampler: str, *, deterministic: bool = True) -> Trajectory:
    """Run the study with WORKERS worker processes to the end; return its trajectory."""
    _new_study(storage)
    deadline = time.monotonic() + TIMEOUT
    with _fleet(_worker_configs(storage, sampler, deterministic=deterministic)) as processes:
        for process in processes:
            _finish(process, deadline)
    return _trajectory(storage)


def run_threads(storage: str, sampler: str) -> Trajectory:
    """Run the study in one process with WORKERS threads (``n_jobs``); return its trajectory."""
    _new_study(storage)
    _finish(_start(_config(storage, sampler, n_jobs=WORKERS)), time.monotonic() + TIMEOUT)
    return _trajectory(storage)


def run_with_kills(
    storage: str, sampler: str, rng: random.Random, kills: int, **extra: Any
) -> tuple[Trajectory, list[str]]:
    """Run WORKERS processes, killing a random one ``kills`` times and restarting it.

    Each kill comes at a random instant after the victim has opened the study, when it is
    running trials (or waiting to start one). Returns the trajectory and the signals that
    landed (killed a worker that was still running).
    """
    _new_study(storage)
    deadline = time.monotonic() + TIMEOUT
    configs = _worker_configs(storage, sampler, **extra)
    landed = []
    with _fleet(configs) as processes:
        for _ in range(kills):
            victim = rng.randrange(WORKERS)
            sig = rng.choice([signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
            process = processes[victim]
            if not _still_running_after_a_random_instant(process, rng):
                continue  # it finished: the study is complete
            process.send_signal(sig)
            if sig == signal.SIGINT:
                interrupt_again_if_ignored(process)
            _, stderr = process.communicate(timeout=30)
            # A Ctrl-C amid a query used to leave SQLite locked while the victim unwound, failing
            # its own writes and the other workers' (stores/_sql_cursors.py).
            assert "database is locked" not in stderr, stderr[-3000:]
            if process.returncode != 0:
                landed.append(sig.name)
            processes[victim] = _start(configs[victim])
        for index in range(WORKERS):
            _finish(processes[index], deadline)
    return _trajectory(storage), landed


def interrupted_attempts(storage: str) -> int:
    """How many trials of the study were cut off and then run again at their position."""
    study = optuna.load_study(study_name="parallel", storage=open_storage(storage))
    return len(study.trials) - len(uninterrupted_trials(study))


def with_a_trial_cut_off(storage: str, run: Callable[[str], _T]) -> tuple[str, _T]:
    """Call ``run`` on new studies until its kills cut a trial off; return that study's URL
    and what ``run`` returned.

    A kill may land between two trials, or after the study has ended.
    """
    for attempt in range(ATTEMPTS):
        url = storage.replace(".db", f"-{attempt}.db")
        result = run(url)
        if interrupted_attempts(url) > 0:
            return url, result
    raise AssertionError(f"in {ATTEMPTS} studies no kill cut a trial off")


def first_difference(a: Trajectory, b: Trajectory) -> int | None:
    """The first logical position where the two trajectories differ within POSITIONS."""
    for position in range(POSITIONS):
        if position >= len(a) or position >= len(b) or a[position] != b[position]:
            return position
    return None


@pytest.fixture
def two_urls(tmp_path: Path) -> Iterator[tuple[str, str]]:
    yield sqlite_url(tmp_path / "a.db"), sqlite_url(tmp_path / "b.db")


def _two_runs_match(sampler: str, two_urls: tuple[str, str]) -> None:
    first, second = (run_processes(url, sampler) for url in two_urls)
    assert len(first) >= POSITIONS and len(second) >= POSITIONS
    assert first_difference(first, second) is None
    states = {state for state, *_ in first[:POSITIONS]}
    if sampler != "random":
        assert "PRUNED" in states, "the pruner never pruned: its decisions were not compared"


def test_two_runs_of_four_worker_processes_match(two_urls: tuple[str, str]) -> None:
    _two_runs_match("tpe", two_urls)


# The default run keeps TPE; these run under -m soak.
@pytest.mark.soak
@pytest.mark.parametrize("sampler", ["cmaes", "tpe-liar", "random", "gp", "nsga2"])
def test_soak_two_runs_of_four_worker_processes_match(
    sampler: str, two_urls: tuple[str, str]
) -> None:
    if sampler == "gp":
        pytest.importorskip("torch", reason="GPSampler needs PyTorch (pip install torch)")
    _two_runs_match(sampler, two_urls)


def test_four_threads_match_four_processes(two_urls: tuple[str, str]) -> None:
    processes, threads = run_processes(two_urls[0], "tpe"), run_threads(two_urls[1], "tpe")
    assert first_difference(processes, threads) is None


def test_control_plain_parallel_runs_differ(two_urls: tuple[str, str]) -> None:
    first, second = (run_processes(url, "tpe", deterministic=False) for url in two_urls)
    assert first_difference(first, second) is not None


def _kills_and_restarts_match(
    sampler: str, two_urls: tuple[str, str], kill_rng: random.Random
) -> None:
    reference = run_processes(two_urls[0], sampler)
    _, (killed, landed) = with_a_trial_cut_off(
        two_urls[1], lambda url: run_with_kills(url, sampler, kill_rng, kills=4)
    )
    assert first_difference(reference, killed) is None, f"kills: {landed}"


def test_runs_with_random_kills_and_restarts_match_an_uninterrupted_run(
    two_urls: tuple[str, str], kill_rng: random.Random
) -> None:
    _kills_and_restarts_match("tpe", two_urls, kill_rng)


@pytest.mark.soak
def test_soak_trials_resumed_inside_with_trial_checkpoint_keep_the_trajectory(
    two_urls: tuple[str, str], kill_rng: random.Random
) -> None:
    # Each trial saves its steps with trial_checkpoint, keyed by its position: a retry taken
    # over by any worker continues after the last saved step, with the same reports.
    reference = run_processes(two_urls[0], "tpe")
    _, (killed, landed) = with_a_trial_cut_off(
        two_urls[1], lambda url: run_with_kills(url, "tpe", kill_rng, kills=4, save=True)
    )
    assert first_difference(reference, killed) is None, f"kills: {landed}"


@pytest.mark.soak
def test_soak_random_kills_and_restarts_with_cmaes_match_an_uninterrupted_run(
    two_urls: tuple[str, str], kill_rng: random.Random
) -> None:
    _kills_and_restarts_match("cmaes", two_urls, kill_rng)


def test_on_postgresql_the_run_matches_one_on_a_file(postgres_url: str, tmp_path: Path) -> None:
    _server_run_matches_one_on_a_file(postgres_url, tmp_path)


@pytest.mark.soak
def test_soak_on_mysql_the_run_matches_one_on_a_file(mysql_url: str, tmp_path: Path) -> None:
    _server_run_matches_one_on_a_file(mysql_url, tmp_path)


def _server_run_matches_one_on_a_file(url: str, tmp_path: Path) -> None:
    on_server = run_processes(url, "tpe")
    on_file = run_processes(sqlite_url(tmp_path / "file.db"), "tpe")
    assert first_difference(on_server, on_file) is None


def test_on_a_journal_file_two_runs_match(tmp_path: Path) -> None:
    on_journal = run_processes(f"journal-file://{tmp_path / 'journal.log'}", "tpe")
    on_file = run_processes(sqlite_url(tmp_path / "file.db"), "tpe")
    assert first_difference(on_journal, on_file) is None


def test_a_worker_killed_for_good_is_replaced_by_the_others(
    two_urls: tuple[str, str], kill_rng: random.Random
) -> None:
    # The killed worker never comes back: a live worker takes its position over (at once, since
    # it died on this host) and the study ends as the uninterrupted run did.
    reference = run_processes(two_urls[0], "tpe")
    storage, _ = with_a_trial_cut_off(
        two_urls[1], lambda url: _run_and_kill_one_for_good(url, kill_rng)
    )
    assert first_difference(reference, _trajectory(storage)) is None


def _run_and_kill_one_for_good(storage: str, rng: random.Random) -> None:
    """Run WORKERS processes, SIGKILL one at a random instant, and let the others finish."""
    _new_study(storage)
    deadline = time.monotonic() + TIMEOUT
    with _fleet(_worker_configs(storage, "tpe")) as processes:
        victim = processes[rng.randrange(WORKERS)]
        _still_running_after_a_random_instant(victim, rng)
        victim.kill()
        victim.communicate()
        for process in processes:
            if process is not victim:
                _finish(process, deadline)
