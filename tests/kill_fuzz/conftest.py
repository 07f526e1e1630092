from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.kill_fuzz.harness import Trajectory
from tests.kill_fuzz.harness import reference_run
from tests.kill_fuzz.harness import shared_directory


class _References:
    """The uninterrupted run of each seeded configuration, made once per session, on SQLite."""

    def __init__(self, directories: pytest.TempPathFactory) -> None:
        self._directory = shared_directory(directories)

    def run(self, sampler: str) -> tuple[Trajectory, float]:
        """The run's trajectory, and the seconds it lasted after the child said ``ready``."""
        from tests.kill_fuzz.test_kill_fuzz import _config

        made = reference_run(_config(sampler, ""), self._directory)
        return made.trajectory, made.seconds_after_ready


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
