"""Who may take a checkpoint stream over: live owners keep it, dead or silent ones lose it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
import gc
import os
import pathlib
import select
import signal
import subprocess
import sys
import time
from typing import Any

import optuna
from optuna.trial import TrialState
import pytest
import sqlalchemy as sa

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import StreamOwnedError
from optuna_checkpoint.attach._lease import LeaseVerdict
from optuna_checkpoint.attach._lease import current_owner
from optuna_checkpoint.attach._lease import judge_lease
from optuna_checkpoint.attach._lease import process_start_time
from optuna_checkpoint.stores._base import Owner
from optuna_checkpoint.stores._sql import streams
from optuna_checkpoint.stores._sql_rows import stream_from_row as _stream_from_row
from optuna_checkpoint.study._trials import INTERRUPTED_ATTR


GRACE = 120.0
NOW = 1_000_000.0


@pytest.fixture
def me() -> Owner:
    return current_owner()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "30"])
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def owned_by_pid(me: Owner, pid: int, pid_start: str) -> Owner:
    """An owner on this host and boot, as another process would have recorded itself."""
    return replace(me, token="0" * 32, pid=pid, pid_start=pid_start)


def wait_for_state(pid: int, wanted: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            stat = ") X"
        if stat.rsplit(")", 1)[1].split()[0] == wanted:
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} never reached state {wanted}")


# -- judge_lease -----------------------------------------------------------------------------


def test_released_lease_may_be_taken_over(me: Owner) -> None:
    verdict = judge_lease(None, 0.0, NOW, me, GRACE)
    assert verdict.may_take_over
    assert "released" in verdict.reason


def test_current_owner_describes_this_process(me: Owner) -> None:
    assert me.pid == os.getpid()
    assert me.pid_start == process_start_time(os.getpid())
    assert me.pid_start.isdigit()
    assert me.boot_id
    assert current_owner().token != me.token  # a fresh token per sampler


def test_another_sampler_in_this_process_is_refused(me: Owner) -> None:
    other_sampler = replace(me, token="f" * 32)
    verdict = judge_lease(other_sampler, NOW, NOW, me, GRACE)
    assert not verdict.may_take_over
    assert "in this process" in verdict.reason


def test_live_owner_on_this_host_is_refused_and_its_exit_allows_take_over(
    me: Owner, sleeper: subprocess.Popen[bytes]
) -> None:
    start = process_start_time(sleeper.pid)
    assert start is not None and start.isdigit()
    owner = owned_by_pid(me, sleeper.pid, start)

    # However long its heartbeat has been silent: on this host, liveness is checked directly.
    for heartbeat_at in (NOW, NOW - 10 * GRACE):
        verdict = judge_lease(owner, heartbeat_at, NOW, me, GRACE)
        assert not verdict.may_take_over
        assert f"live process {sleeper.pid}" in verdict.reason

    sleeper.kill()
    sleeper.wait()
    assert process_start_time(sleeper.pid) is None

    verdict = judge_lease(owner, NOW, NOW, me, GRACE)
    assert verdict.may_take_over
    assert "has exited" in verdict.reason


def test_reused_pid_with_other_start_time_may_be_taken_over(
    me: Owner, sleeper: subprocess.Popen[bytes]
) -> None:
    start = process_start_time(sleeper.pid)
    assert start is not None
    # The recorded owner had this pid, but started at another time: the pid was reused.
    owner = owned_by_pid(me, sleeper.pid, str(int(start) - 1))

    verdict = judge_lease(owner, NOW, NOW, me, GRACE)

    assert verdict.may_take_over
    assert "has exited" in verdict.reason


def test_killed_owner_that_is_not_yet_reaped_may_be_taken_over(
    me: Owner, sleeper: subprocess.Popen[bytes]
) -> None:
    start = process_start_time(sleeper.pid)
    assert start is not None
    owner = owned_by_pid(me, sleeper.pid, start)

    os.kill(sleeper.pid, signal.SIGKILL)
    wait_for_state(sleeper.pid, "Z")  # dead; its parent (this test) has not reaped it yet

    assert judge_lease(owner, NOW, NOW, me, GRACE).may_take_over


def test_other_host_with_fresh_heartbeat_is_refused(me: Owner) -> None:
    owner = replace(me, token="0" * 32, host="elsewhere", boot_id="other-boot", pid=1)

    verdict = judge_lease(owner, NOW - GRACE / 2, NOW, me, GRACE)

    assert not verdict.may_take_over
    assert "'elsewhere'" in verdict.reason
    assert "60 s ago" in verdict.reason


def test_other_host_silent_longer_than_the_grace_period_may_be_taken_over(me: Owner) -> None:
    owner = replace(me, token="0" * 32, host="elsewhere", boot_id="other-boot", pid=1)

    assert not judge_lease(owner, NOW - GRACE, NOW, me, GRACE).may_take_over
    verdict = judge_lease(owner, NOW - GRACE - 1, NOW, me, GRACE)
    assert verdict.may_take_over
    assert "no heartbeat for 121 s" in verdict.reason


def test_owner_from_before_a_reboot_of_this_host_may_be_taken_over(
    me: Owner, sleeper: subprocess.Popen[bytes]
) -> None:
    # Even if a live process now has the recorded pid and start time, the boot id tells.
    start = process_start_time(sleeper.pid)
    assert start is not None
    owner = replace(owned_by_pid(me, sleeper.pid, start), boot_id="an-earlier-boot")

    verdict = judge_lease(owner, NOW, NOW, me, GRACE)

    assert verdict.may_take_over
    assert "rebooted" in verdict.reason


# -- end to end ------------------------------------------------------------------------------


CHILD = """
import sys
import time
from typing import Any

import optuna

from optuna_checkpoint import CheckpointingSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


def objective(trial):
    x = trial.suggest_float("x", -2.0, 2.0)
    if trial.number == 2:
        print("BLOCKING", flush=True)
        time.sleep(30)
    return x * x


sampler = CheckpointingSampler(optuna.samplers.RandomSampler(seed=0))
study = optuna.create_study(study_name="lease", storage=sys.argv[1], sampler=sampler)
study.optimize(objective, n_trials=5)
"""


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -2.0, 2.0)
    return x * x


def wait_for_line(process: subprocess.Popen[str], line: str, timeout: float = 60.0) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            got = process.stdout.readline()
            if got.strip() == line:
                return
            if not got:
                break
    process.kill()
    _, err = process.communicate()
    raise AssertionError(f"child never printed {line!r}; stderr:\n{err}")


def test_live_process_keeps_the_stream_and_its_death_lets_this_process_resume(
    tmp_path: pathlib.Path,
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        wait_for_line(child, "BLOCKING")  # trial 2 runs in the child, which holds the lease

        # The same worker id as the child's: a second live process on it must be refused.
        study = optuna.load_study(
            study_name="lease",
            storage=url,
            sampler=CheckpointingSampler(optuna.samplers.RandomSampler(seed=0), worker_id="main"),
        )
        with pytest.raises(StreamOwnedError) as raised:
            study.optimize(objective, n_trials=1)
        message = str(raised.value)
        assert f"held by live process {child.pid} on this host" in message
        assert "Stop the other process first" in message
        # As the message says, this process's own trial was closed and hidden, not left RUNNING.
        refused = study.trials[3]
        assert f"Trial {refused.number}" in message and "closed as FAIL" in message
        assert refused.state == TrialState.FAIL
        assert INTERRUPTED_ATTR in refused.system_attrs
        assert study.trials[2].state == TrialState.RUNNING  # the child's trial is untouched
    finally:
        child.kill()
        child.communicate()

    study.optimize(objective, n_trials=1)  # the same study object, now that the owner is gone

    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] * 2 + [
        TrialState.COMPLETE
    ]
    assert "died while the trial ran" in trials[2].system_attrs[INTERRUPTED_ATTR]
    assert trials[4].system_attrs["failed_trial"] == 2
    # The retry proposes what trial 2 of an uninterrupted run proposes.
    control = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    control.optimize(objective, n_trials=3)
    assert trials[4].params["x"].hex() == control.trials[2].params["x"].hex()
    assert [t.params for t in trials[:2]] == [t.params for t in control.trials[:2]]


def stream_row(url: str) -> Any:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(streams.select()).one()
    finally:
        engine.dispose()


def judged_from_another_host(url: str) -> LeaseVerdict:
    row = stream_row(url)
    owner = _stream_from_row(row).owner
    elsewhere = replace(current_owner(), host="another-host", boot_id="another-boot")
    return judge_lease(owner, row.heartbeat_at, time.time(), elsewhere, GRACE)


def test_resumed_stream_in_use_is_not_taken_over_from_another_host(
    tmp_path: pathlib.Path,
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    first = optuna.create_study(
        study_name="hosts",
        storage=url,
        sampler=CheckpointingSampler(optuna.samplers.RandomSampler(seed=0)),
    )
    first.optimize(objective, n_trials=1)
    del first
    gc.collect()  # releases the lease
    resumed = optuna.load_study(
        study_name="hosts",
        storage=url,
        sampler=CheckpointingSampler(optuna.samplers.RandomSampler(seed=0)),
    )
    resumed.optimize(objective, n_trials=1)  # takes the lease over

    verdict = judged_from_another_host(url)

    assert not verdict.may_take_over, verdict.reason


def test_newly_created_stream_in_use_is_not_taken_over_from_another_host(
    tmp_path: pathlib.Path,
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(
        study_name="hosts",
        storage=url,
        sampler=CheckpointingSampler(optuna.samplers.RandomSampler(seed=0)),
    )
    study.optimize(objective, n_trials=2)  # seconds, well within the grace period

    verdict = judged_from_another_host(url)

    assert not verdict.may_take_over, verdict.reason


# -- several samplers in one process ---------------------------------------------------------


def wrapped_random(**kwargs: object) -> CheckpointingSampler:
    return CheckpointingSampler(optuna.samplers.RandomSampler(seed=0), **kwargs)  # type: ignore[arg-type]


def test_busy_sampler_in_this_process_keeps_the_stream_and_an_idle_one_hands_it_over(
    tmp_path: pathlib.Path,
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    first = optuna.create_study(study_name="same", storage=url, sampler=wrapped_random())
    first.optimize(objective, n_trials=2)
    pending = first.ask()  # the first sampler is now in the middle of a trial
    pending.suggest_float("x", -2.0, 2.0)

    second = optuna.load_study(
        study_name="same", storage=url, sampler=wrapped_random(worker_id="main")
    )
    with pytest.raises(StreamOwnedError, match="held by another sampler in this process"):
        second.optimize(objective, n_trials=1)

    first.tell(pending, 0.0)  # idle again: opening the study again (a re-run cell) takes over
    third = optuna.load_study(study_name="same", storage=url, sampler=wrapped_random())
    third.optimize(objective, n_trials=1)
    assert third.trials[-1].state == TrialState.COMPLETE

    with pytest.raises(StreamOwnedError, match="took over this sampler's checkpoint stream"):
        first.optimize(objective, n_trials=1)
