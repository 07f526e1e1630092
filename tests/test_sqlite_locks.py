"""SQLite's file lock after a Ctrl-C: what the interrupted process must not keep holding.

A Ctrl-C that lands after a query ran but before its rows were read used to leave the query's
cursor open, holding SQLite's SHARED lock for as long as the ``KeyboardInterrupt``'s traceback
lived (see ``stores/_sql_cursors.py``), so every later commit, of this process or another, waited
five seconds and failed with "database is locked". These tests raise the ``KeyboardInterrupt``
from SQLAlchemy's documented execution events, at the two instants a Ctrl-C can land there, keep
its traceback alive as Optuna does while it stores the trial's failure, and then write from
another connection. ``tests/kill_fuzz/test_ctrl_c_mid_query.py`` does the same with a real
SIGINT in a real study.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
from pathlib import Path
import sqlite3
import time
from typing import Any

import optuna
from optuna.storages import RDBStorage
import pytest
from sqlalchemy import event
from sqlalchemy import exc as sa_exc

from optuna_checkpoint.attach._lease import current_owner
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._sql import SQLCheckpointStore


# The instants, as SQLAlchemy events: the query has run, and SQLAlchemy's error handling is
# still around it (it then takes the interrupt for an exit and invalidates the connection); or
# its result is out, before the ORM reads a row (nothing in SQLAlchemy sees the interrupt).
INSTANTS = {"inside-execution": "after_cursor_execute", "after-execution": "after_execute"}

SHORT_WAIT = 0.1  # seconds the other connection waits for SQLite's lock


def _study_with_trials(url: str) -> tuple[RDBStorage, int]:
    storage = RDBStorage(url)
    SQLCheckpointStore.for_storage(storage)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=3)
    return storage, study._study_id


@contextlib.contextmanager
def _ctrl_c_after_next_select(storage: RDBStorage, instant: str) -> Iterator[None]:
    """Raise ``KeyboardInterrupt`` at ``instant`` of the next SELECT on ``storage``'s engine."""
    armed = [True]

    def interrupt(*args: Any) -> None:
        statement = args[2] if instant == "inside-execution" else args[1]
        if armed[0] and str(statement).lstrip().upper().startswith("SELECT"):
            armed[0] = False
            raise KeyboardInterrupt

    event.listen(storage.engine, INSTANTS[instant], interrupt)
    try:
        yield
    finally:
        event.remove(storage.engine, INSTANTS[instant], interrupt)


def _write_from_another_connection(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path, timeout=SHORT_WAIT)) as other:
        other.execute("UPDATE studies SET study_name = study_name")
        other.commit()


@pytest.mark.parametrize("instant", sorted(INSTANTS))
def test_ctrl_c_after_a_query_ran_leaves_no_lock_behind(tmp_path: Path, instant: str) -> None:
    path = tmp_path / "study.db"
    storage, study_id = _study_with_trials(f"sqlite:///{path}")
    with _ctrl_c_after_next_select(storage, instant), pytest.raises(KeyboardInterrupt) as caught:
        storage.get_all_trials(study_id)
    # ``caught`` keeps the traceback, and with it the query's cursor, alive, as Optuna keeps the
    # objective's KeyboardInterrupt while it stores the trial as failed.
    _write_from_another_connection(path)
    assert caught.value is not None
    assert len(storage.get_all_trials(study_id)) == 3  # the storage works on


class _CursorInterruptedOnFirstClose(sqlite3.Cursor):
    """Once armed, the first ``close()`` of such a cursor is cut short by a Ctrl-C."""

    armed = False
    interrupted = False

    def close(self) -> None:
        cls = _CursorInterruptedOnFirstClose
        if cls.armed and not cls.interrupted:
            cls.interrupted = True
            raise KeyboardInterrupt
        super().close()


class _ConnectionWithInterruptibleCursors(sqlite3.Connection):
    def cursor(self, factory: Any = _CursorInterruptedOnFirstClose) -> Any:
        return super().cursor(factory)


def test_second_ctrl_c_while_the_cursors_close_leaves_no_lock_behind(tmp_path: Path) -> None:
    path = tmp_path / "study.db"
    url = f"sqlite:///{path}"
    _study_with_trials(url)
    storage = RDBStorage(
        url, engine_kwargs={"connect_args": {"factory": _ConnectionWithInterruptibleCursors}}
    )
    SQLCheckpointStore.for_storage(storage)
    study_id = storage.get_all_studies()[0]._study_id
    # The first Ctrl-C leaves the query's cursor open; the second lands as the pool's reset
    # closes it, so SQLAlchemy closes the connection instead: the cursor must still be closed.
    _CursorInterruptedOnFirstClose.armed = True
    interrupted = _ctrl_c_after_next_select(storage, "after-execution")
    with pytest.raises(KeyboardInterrupt) as caught, interrupted:
        storage.get_all_trials(study_id)
    assert _CursorInterruptedOnFirstClose.interrupted
    _write_from_another_connection(path)
    assert caught.value is not None


def test_control_a_cursor_left_open_holds_the_lock(tmp_path: Path) -> None:
    """Without the cursors closed, the same write fails: the tests above can fail."""
    path = tmp_path / "study.db"
    _study_with_trials(f"sqlite:///{path}")
    with contextlib.closing(sqlite3.connect(path)) as reader:
        cursor = reader.execute("SELECT * FROM trials")  # run, no row read: SHARED lock held
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            _write_from_another_connection(path)
        cursor.close()
        _write_from_another_connection(path)


def test_lease_release_gives_up_quickly_while_the_database_is_locked(tmp_path: Path) -> None:
    path = tmp_path / "study.db"
    storage, study_id = _study_with_trials(f"sqlite:///{path}")
    store = SQLCheckpointStore.for_storage(storage)
    me = current_owner()
    initial = Checkpoint(
        trial_id=None,
        logical_number=-1,
        trial_state=None,
        trial_values=None,
        adapter="random",
        payload=b"state",
        checksum="0" * 64,
    )
    stream = store.create_stream(study_id, "uid", "main", {}, me, initial, first_trial_number=0)
    assert stream is not None
    with contextlib.closing(sqlite3.connect(path)) as reader:
        cursor = reader.execute("SELECT * FROM trials")  # another process reading, say
        started = time.monotonic()
        with pytest.raises(sa_exc.OperationalError, match="database is locked"):
            store.release(stream.stream_id, me.token)
        waited = time.monotonic() - started
        cursor.close()
    assert waited < 2.0, f"the release waited {waited:.1f} s for the lock"
    held = store.find_stream("uid", "main")
    assert held is not None and held.owner == me  # it gave up: the lease lapses instead
    store.release(stream.stream_id, me.token)
    released = store.find_stream("uid", "main")
    assert released is not None and released.owner is None
