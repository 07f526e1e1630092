"""The kill-fuzz guarantee on database servers: PostgreSQL and MySQL/MariaDB, killed for real.

The same child study as ``test_kill_fuzz.py`` runs against a fresh database on each server and
is killed at random instants and at the crash points where the server's transactions matter
most (inside the commit that carries the checkpoint, and right after a trial is created). Its
trajectory must equal the uninterrupted run's, bit for bit; the control shows that the unwrapped
sampler, killed the same way on the same server, diverges.
"""

from __future__ import annotations

from collections.abc import Callable
import random
import signal
from typing import Any

import pytest

from tests.kill_fuzz.harness import assert_resumed_exactly
from tests.kill_fuzz.harness import first_difference
from tests.kill_fuzz.harness import run_with_crash_points
from tests.kill_fuzz.harness import run_with_random_kills
from tests.kill_fuzz.harness import trajectory
from tests.kill_fuzz.test_kill_fuzz import N_COMPLETE
from tests.kill_fuzz.test_kill_fuzz import _config
from tests.kill_fuzz.test_kill_fuzz import _kill_window


pytestmark = pytest.mark.parametrize("server", ["postgresql", "mysql"])


@pytest.fixture
def server_url(server: str, request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("postgres_url" if server == "postgresql" else "mysql_url"))


# By default each server and each sampler occur, the other two pairs under -m soak. PostgreSQL
# is pinned with TPE, as the issues ask.
@pytest.mark.fast_tier({"sampler": "tpe", "server": "postgresql"}, pairs=False)
@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_resume_after_random_kills_on_a_server_matches_uninterrupted_run(
    sampler: str,
    server: str,
    server_url: str,
    reference: Any,
    run_length: Callable[[str], float],
    kill_rng: random.Random,
) -> None:
    # Within the span of the run on a SQLite file, which a server's round trips only lengthen,
    # so that the kills land however fast the machine is.
    log = run_with_random_kills(
        _config(sampler, server_url),
        kills=3,
        signals=[signal.SIGKILL, signal.SIGINT, signal.SIGTERM],
        rng=kill_rng,
        max_delay=_kill_window(run_length(sampler)),
    )
    assert log.kills_landed >= 1, "no kill landed: the test would prove nothing"
    assert_resumed_exactly(server_url, reference(sampler), log, N_COMPLETE)


@pytest.mark.parametrize(
    "plan",
    [["inside_commit:3", "inside_commit:2:INT"], ["before_trial:4", "after_capture:2"]],
    ids=["inside-commit", "trial-start-and-capture"],
)
def test_resume_after_crash_points_on_a_server_matches_uninterrupted_run(
    plan: list[str], server: str, server_url: str, reference: Any
) -> None:
    log = run_with_crash_points(_config("tpe", server_url), plan)
    assert log.kills_landed == len(plan)
    assert_resumed_exactly(server_url, reference("tpe"), log, N_COMPLETE)


def test_control_unwrapped_sampler_on_a_server_diverges_under_kills(
    server: str, server_url: str, reference: Any
) -> None:
    # Killed inside the objective of two trials: crash points always land, however fast the
    # server runs the study (random instants may all fall after its end).
    plan = ["objective:7", "objective:2"]
    log = run_with_crash_points(_config("tpe", server_url, wrap=False), plan)
    assert log.kills_landed == len(plan)
    difference = first_difference(trajectory(server_url, wrapped=False), reference("tpe"))
    assert difference is not None, "the unwrapped sampler survived the kills: the test is blind"
