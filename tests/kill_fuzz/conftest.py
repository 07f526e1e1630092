from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.kill_fuzz.harness import RunLog
from tests.kill_fuzz.harness import Trajectory
from tests.kill_fuzz.harness import run_to_completion
from tests.kill_fuzz.harness import sqlite_url
from tests.kill_fuzz.harness import trajectory


class _References:
    """The uninterrupted run of each seeded configuration, made once per session, on SQLite."""

    def __init__(self, directories: pytest.TempPathFactory) -> None:
        self._directories = directories
        self._runs: dict[str, tuple[Trajectory, float]] = {}

    def run(self, sampler: str) -> tuple[Trajectory, float]:
        """The run's trajectory, and the seconds it lasted after the child said ``ready``."""
        from tests.kill_fuzz.test_kill_fuzz import _config

        if sampler not in self._runs:
            url = sqlite_url(self._directories.mktemp("reference") / f"{sampler}.db")
            log = RunLog()
            run_to_completion(_config(sampler, url), log)
            self._runs[sampler] = (trajectory(url, wrapped=True), log.seconds_after_ready[-1])
        return self._runs[sampler]


@pytest.fixture(scope="session")
def _references(tmp_path_factory: pytest.TempPathFactory) -> _References:
    return _References(tmp_path_factory)


@pytest.fixture(scope="session")
def reference(_references: _References) -> Callable[[str], Trajectory]:
    """The uninterrupted trajectory of each seeded configuration, computed once, on SQLite.

    Floats round-trip exactly through every supported server, so runs on PostgreSQL and
    MySQL/MariaDB are compared with these too.
    """
    return lambda sampler: _references.run(sampler)[0]


@pytest.fixture(scope="session")
def run_length(_references: _References) -> Callable[[str], float]:
    """How long the uninterrupted run of a configuration lasts on this machine, in seconds.

    Random kills are drawn within it, so that they land however fast the machine runs.
    """
    return lambda sampler: _references.run(sampler)[1]
