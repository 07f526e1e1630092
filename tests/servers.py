"""Real database servers for the tests: where to find them, and what to do when one is missing.

Each server is found through an environment variable holding its URL, with the loopback default
that CI and the development machines use:

==========================================  ===================================================
``OPTUNA_CHECKPOINT_TEST_POSTGRES``          ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``
``OPTUNA_CHECKPOINT_TEST_MYSQL``             ``mysql+pymysql://root@127.0.0.1:3306/test``
``OPTUNA_CHECKPOINT_TEST_REDIS``             ``redis://127.0.0.1:6379/0``
==========================================  ===================================================

The SQL URLs name a database the tests may connect to; each test creates a database of its own on
that server (named after its xdist worker and a random suffix) and drops it at the end. A server
that cannot be reached makes its tests skip with the reason, unless
``OPTUNA_CHECKPOINT_REQUIRE_SERVERS=1`` is set (as ``.ci/run`` does): then they fail, so CI
cannot go green by skipping them.
"""

from __future__ import annotations

from collections.abc import Iterator
import os
from pathlib import Path
import uuid

import pytest
import sqlalchemy as sa


POSTGRES_ENV = "OPTUNA_CHECKPOINT_TEST_POSTGRES"
MYSQL_ENV = "OPTUNA_CHECKPOINT_TEST_MYSQL"
REDIS_ENV = "OPTUNA_CHECKPOINT_TEST_REDIS"
REQUIRE_ENV = "OPTUNA_CHECKPOINT_REQUIRE_SERVERS"

DEFAULTS = {
    POSTGRES_ENV: "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    MYSQL_ENV: "mysql+pymysql://root@127.0.0.1:3306/test",
    REDIS_ENV: "redis://127.0.0.1:6379/0",
}


def server_url(env: str) -> str:
    """The URL configured for a server, or its loopback default."""
    return os.environ.get(env) or DEFAULTS[env]


def unavailable(what: str, env: str, error: BaseException) -> None:
    """Skip (or, when servers are required, fail) because a server cannot be reached."""
    message = (
        f"{what} is not reachable at {server_url(env)} ({type(error).__name__}: {error}); "
        f"start it, or point {env} at one"
    )
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(message + f" ({REQUIRE_ENV}=1, so this is an error)", pytrace=False)
    pytest.skip(message)


def _scratch_database(env: str, what: str) -> Iterator[str]:
    admin_url = sa.make_url(server_url(env))
    # Unique across the xdist workers and runs sharing the server; the worker, for whoever
    # finds one left behind.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"optuna_checkpoint_test_{worker}_{uuid.uuid4().hex[:12]}"
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        with admin.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
    except Exception as e:  # any driver or connection error means "not reachable"
        unavailable(what, env, e)
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            if admin_url.get_backend_name() == "postgresql":
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            else:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database, dropped after the test."""
    yield from _scratch_database(POSTGRES_ENV, "PostgreSQL")


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """URL of a fresh MySQL/MariaDB database, dropped after the test."""
    yield from _scratch_database(MYSQL_ENV, "MySQL/MariaDB")


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of a fresh database of each kind Optuna's RDBStorage supports."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'study.db'}"
    elif request.param == "postgresql":
        yield from _scratch_database(POSTGRES_ENV, "PostgreSQL")
    else:
        yield from _scratch_database(MYSQL_ENV, "MySQL/MariaDB")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a reachable Redis server (tests keep their keys under a prefix of their own)."""
    import redis

    url = server_url(REDIS_ENV)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as e:
        unavailable("Redis", REDIS_ENV, e)
    return url
