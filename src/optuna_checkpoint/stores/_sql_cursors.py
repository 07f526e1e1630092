"""Cursors that a Ctrl-C left open on a SQLite connection, closed when the connection goes back.

A Ctrl-C that lands after a ``SELECT`` has run but before its rows are read leaves the cursor
open: SQLAlchemy closes a statement's cursor when an ``Exception`` interrupts it, but takes a
``KeyboardInterrupt`` for an exit and only invalidates the connection, and the ORM's loaders and
the pool's reset do not close it either. The cursor then lives on in the frames of the
``KeyboardInterrupt``'s traceback, which Optuna keeps while it stores the trial's failure and
Python keeps while the ``atexit`` handlers run. Since Python 3.11, ``sqlite3`` neither resets an
open cursor's statement when its connection rolls back nor finalizes it when the connection
closes (the closed connection lingers until the cursor is collected; CPython issue 135117), so
the statement keeps its SHARED lock on the database file.

A commit needs every other SHARED lock gone. So each later write of the interrupted process --
Optuna storing the trial as failed, this package recording the interruption and releasing its
lease at exit -- waits out SQLite's busy timeout (five seconds) and fails with "database is
locked", and while it waits it holds SQLite's PENDING lock, so every other process working on
the same file waits too and may fail the same way. Plain Optuna behaves the same.

The remedy here uses only SQLAlchemy's documented events on Optuna's engine: remember each
cursor a statement opens, on the pool entry of its connection, and close the ones still open
when the connection is reset on its return to the pool or closed. Closing a cursor resets its
statement, which releases the lock. A cursor that SQLAlchemy already closed closes again at no
cost; results are read before their connection goes back, so no cursor still in use is closed.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING
from typing import Any
import weakref

from sqlalchemy import event


if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.pool import ConnectionPoolEntry
    from sqlalchemy.pool import PoolResetState


_OPEN_CURSORS = "optuna_checkpoint_open_cursors"  # key in the pool entry's ``info``


def close_cursors_left_open(engine: sa.Engine) -> None:
    """Close the cursors a connection of ``engine`` left open whenever it returns to the pool.

    Only SQLite needs it: a server releases the locks of a session when its connection closes.
    Registering twice on one engine does nothing more.
    """
    if engine.dialect.name != "sqlite" or event.contains(
        engine, "before_cursor_execute", _remember_cursor
    ):
        return
    event.listen(engine, "before_cursor_execute", _remember_cursor)
    event.listen(engine, "reset", _close_on_reset)
    event.listen(engine, "close", _close_on_close)


def _remember_cursor(
    connection: sa.Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    # ``Connection.info`` is the pool entry's ``info``: what the reset and close events get.
    cursors = connection.info.get(_OPEN_CURSORS)
    if cursors is None:
        # Weak: a cursor closed and dropped in the usual way is forgotten with it.
        cursors = connection.info[_OPEN_CURSORS] = weakref.WeakSet()
    cursors.add(cursor)


def _close_on_reset(
    dbapi_connection: Any, entry: ConnectionPoolEntry, reset_state: PoolResetState
) -> None:
    _close_remembered(entry)


def _close_on_close(dbapi_connection: Any, entry: ConnectionPoolEntry) -> None:
    # Runs before the connection closes: a cursor of a closed connection can no longer close.
    _close_remembered(entry)


def _close_remembered(entry: ConnectionPoolEntry) -> None:
    cursors = entry.info.get(_OPEN_CURSORS)
    if not cursors:
        return
    for cursor in list(cursors):
        # A cursor that cannot close belongs to a broken connection, whose closing frees it.
        with contextlib.suppress(Exception):
            cursor.close()
    # Forgotten only once all are closed: when a second Ctrl-C cuts the reset short, SQLAlchemy
    # closes the connection, and the close event closes the rest.
    cursors.clear()
