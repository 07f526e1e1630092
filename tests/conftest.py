from __future__ import annotations

from collections.abc import Iterator

import optuna
import pytest


@pytest.fixture(autouse=True)
def _quiet_optuna() -> Iterator[None]:
    """Keep Optuna's per-trial INFO lines out of the test output."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(previous)


from tests.servers import database_url  # noqa: E402, F401 - fixtures for every test module
from tests.servers import mysql_url  # noqa: E402, F401
from tests.servers import postgres_url  # noqa: E402, F401
from tests.servers import redis_url  # noqa: E402, F401
