from __future__ import annotations

from typing import Any

import pytest

from tests.kill_fuzz.harness import RunLog
from tests.kill_fuzz.harness import Trajectory
from tests.kill_fuzz.harness import run_to_completion
from tests.kill_fuzz.harness import sqlite_url
from tests.kill_fuzz.harness import trajectory


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The uninterrupted trajectory of each seeded configuration, computed once, on SQLite.

    Floats round-trip exactly through every supported server, so runs on PostgreSQL and
    MySQL/MariaDB are compared with these too.
    """
    from tests.kill_fuzz.test_kill_fuzz import _config

    cache: dict[str, Trajectory] = {}

    def get(sampler: str) -> Trajectory:
        if sampler not in cache:
            url = sqlite_url(tmp_path_factory.mktemp("reference") / f"{sampler}.db")
            run_to_completion(_config(sampler, url), RunLog())
            cache[sampler] = trajectory(url, wrapped=True)
        return cache[sampler]

    return get
