"""The kill-fuzz guarantee on storages without SQL beneath: Optuna's gRPC proxy and journals.

* ``grpc``: the child reaches its database only through a :class:`GrpcStorageProxy`, so the
  checkpoints live in the study's system attributes (``stores/_attrs.py``). The proxy server runs
  in a process of its own, on a SQLite file, for the whole test; only the clients are killed.
* ``journal-file`` and ``journal-redis``: a :class:`JournalStorage`, whose checkpoints go to the
  side record beside the journal (``stores/_journal.py``).

None of these stores the checkpoint in the transaction of the trial's end, so the crash points
include the instant between the two writes (``after_save``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
import random
import signal
import socket
import subprocess
import sys
import time
from typing import Any
import uuid

import optuna
import pytest

from optuna_checkpoint.study._trials import CHECKPOINT_NOT_SAVED as UNSAVED
from optuna_checkpoint.study._trials import INTERRUPTED_ATTR as INTERRUPTED
from tests.kill_fuzz.harness import assert_resumed_exactly
from tests.kill_fuzz.harness import first_difference
from tests.kill_fuzz.harness import run_with_crash_points
from tests.kill_fuzz.harness import run_with_random_kills
from tests.kill_fuzz.harness import trajectory
from tests.kill_fuzz.storages import open_storage
from tests.kill_fuzz.test_kill_fuzz import CONTROL_DELAY_IN_OBJECTIVE
from tests.kill_fuzz.test_kill_fuzz import CONTROL_MIN_KILL_DELAY
from tests.kill_fuzz.test_kill_fuzz import MAX_KILL_DELAY
from tests.kill_fuzz.test_kill_fuzz import N_COMPLETE
from tests.kill_fuzz.test_kill_fuzz import _config


pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

SERVER = """
import sys
import optuna
storage = optuna.storages.get_storage(sys.argv[1])
optuna.storages.run_grpc_proxy_server(storage, host="127.0.0.1", port=int(sys.argv[2]))
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(params=["grpc", "journal-file", "journal-redis"])
def address(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where the child's study lives (see ``storages.open_storage``)."""
    if request.param == "grpc":
        yield from _grpc_server(tmp_path)
    elif request.param == "journal-file":
        yield f"journal-file://{tmp_path / 'journal.log'}"
    else:
        redis_url = request.getfixturevalue("redis_url")
        yield f"journal-{redis_url}?prefix=fuzz-{uuid.uuid4().hex}"


def _grpc_server(tmp_path: Path, attempts: int = 3) -> Iterator[str]:
    """The address of a gRPC proxy server on a fresh SQLite file.

    The port is free when chosen, but another xdist worker may take it before the server binds
    it: a server that exits before it answers is started again, on another port.
    """
    for attempt in range(attempts):
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, f"sqlite:///{tmp_path / 'server.db'}", str(port)],
            stderr=subprocess.PIPE,
        )
        try:
            proxy = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
            deadline = time.monotonic() + 30
            while True:
                try:
                    proxy.wait_server_ready(timeout=1)
                    break
                except Exception:
                    if server.poll() is not None and attempt + 1 < attempts:
                        break  # it could not bind the port: try another
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise
            proxy.close()
            if server.poll() is not None:
                continue
            yield f"grpc://127.0.0.1:{port}"
            return
        finally:
            server.kill()
            server.communicate()


# By default every storage and each sampler occur, every pair under -m soak. Pinned: CMA-ES
# through the gRPC proxy, which caught a trial stored COMPLETE without its checkpoint.
@pytest.mark.fast_tier({"sampler": "cmaes", "address": "grpc"}, pairs=False)
@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_resume_after_random_kills_matches_uninterrupted_run(
    sampler: str, address: str, reference: Any, kill_rng: random.Random
) -> None:
    # Slower trials than on SQLite: a journal runs the whole study in well under a second.
    # With them the run lasts over N_COMPLETE * CONTROL_DELAY_IN_OBJECTIVE = 1 s, so a kill
    # within MAX_KILL_DELAY lands.
    log = run_with_random_kills(
        _config(sampler, address, delay=CONTROL_DELAY_IN_OBJECTIVE),
        kills=3,
        signals=[signal.SIGKILL, signal.SIGINT, signal.SIGTERM],
        rng=kill_rng,
        max_delay=MAX_KILL_DELAY,
    )
    assert log.kills_landed >= 1, "no kill landed: the test would prove nothing"
    assert_resumed_exactly(address, reference(sampler), log, N_COMPLETE)


def test_resume_after_crash_points_matches_uninterrupted_run(address: str, reference: Any) -> None:
    # Between the checkpoint and the trial's end (two calls here, not one transaction), and
    # right after the capture.
    plan = ["after_save:3", "before_trial:4", "after_save:2:INT"]
    log = run_with_crash_points(_config("tpe", address), plan)
    assert log.kills_landed == len(plan)
    assert_resumed_exactly(address, reference("tpe"), log, N_COMPLETE)


def test_ctrl_c_before_the_checkpoint_is_saved_fails_the_trial_for_a_retry(
    address: str, reference: Any
) -> None:
    # Optuna stores a trial's end in a ``finally`` after after_trial, even when Ctrl-C stopped
    # after_trial before the checkpoint was saved. Stored as it ended, the trial would make the
    # resume restore the state from before it, silently; stored as FAIL, it is retried.
    plan = ["after_capture:3:INT"]
    log = run_with_crash_points(_config("tpe", address), plan)
    assert log.kills_landed == len(plan)
    assert_resumed_exactly(address, reference("tpe"), log, N_COMPLETE)
    [unsaved] = [t for t in _raw_trials(address) if t.system_attrs.get(INTERRUPTED) == UNSAVED]
    assert unsaved.state == optuna.trial.TrialState.FAIL


def _raw_trials(address: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="fuzz", storage=open_storage(address))
    return study.get_trials(deepcopy=False)


def test_control_unwrapped_sampler_diverges_under_kills(
    address: str, reference: Any, kill_rng: random.Random
) -> None:
    # Slower trials than the other controls': a journal file is quick, and the study must still
    # be running when the second kill comes. At 0.2 s a trial, two kills within
    # MAX_KILL_DELAY + 0.5 s of their runs' start end at most 14 of the 20 trials.
    log = run_with_random_kills(
        _config("tpe", address, wrap=False, delay=4 * CONTROL_DELAY_IN_OBJECTIVE),
        kills=2,
        signals=[signal.SIGKILL],
        rng=kill_rng,
        max_delay=MAX_KILL_DELAY + 0.5,
        min_delay=CONTROL_MIN_KILL_DELAY,
    )
    assert log.kills_landed == 2
    assert first_difference(trajectory(address, wrapped=False), reference("tpe")) is not None
