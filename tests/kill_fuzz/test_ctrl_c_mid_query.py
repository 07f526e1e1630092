"""Ctrl-C in the middle of a query stops a study on SQLite at once and leaves the file unlocked.

A real SIGINT reaches a real study (``ctrl_c_child.py``) right after a ``SELECT`` has run, at the
two instants a Ctrl-C can land there. Before ``stores/_sql_cursors.py`` closed the cursors such an
interrupt leaves open, the query kept SQLite's SHARED lock while the process unwound: Optuna's
write of the trial's failure waited five seconds and failed with "database is locked" (Optuna
then raised "Should not reach"), the trial stayed RUNNING, the lease was not released, and other
processes on the same file were locked out meanwhile.
"""

from __future__ import annotations

from pathlib import Path
import signal
import time

import optuna
import pytest
import sqlalchemy as sa

from optuna_checkpoint.stores._sql_schema import streams
from optuna_checkpoint.study._trials import CUT_OFF_BY_CTRL_C
from optuna_checkpoint.study._trials import INTERRUPTED_ATTR
from tests.kill_fuzz.harness import sqlite_url
from tests.kill_fuzz.harness import start_piped


CHILD = Path(__file__).with_name("ctrl_c_child.py")
TRIAL = 2  # the trial Ctrl-C cuts off
STOPS_WITHIN = 3.0  # seconds from the signal to the process's exit (it waited 5 s for the lock)


@pytest.mark.parametrize("instant", ["inside-execution", "after-execution"])
def test_ctrl_c_mid_query_stops_the_study_at_once_and_leaves_the_database_unlocked(
    tmp_path: Path, instant: str
) -> None:
    url = sqlite_url(tmp_path / "study.db")
    process = start_piped(CHILD, {"storage": url, "instant": instant, "trial": TRIAL})
    try:
        assert process.stdout is not None
        said = [process.stdout.readline().strip() for _ in range(2)]
        signalled = time.monotonic()
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    stopped_after = time.monotonic() - signalled
    assert said == ["ready", "signalled"], stderr

    assert process.returncode == -signal.SIGINT, stderr
    assert "database is locked" not in stderr and "Should not reach" not in stderr, stderr
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr
    assert stopped_after < STOPS_WITHIN, f"it stopped {stopped_after:.1f} s after Ctrl-C"
    # The trial was closed as cut off by Ctrl-C (the next run retries it) ...
    trials = optuna.load_study(study_name="ctrl-c", storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * TRIAL + ["FAIL"]
    assert trials[TRIAL].system_attrs[INTERRUPTED_ATTR] == CUT_OFF_BY_CTRL_C
    # ... and the lease released, so the next run resumes at once.
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        owners = connection.execute(sa.select(streams.c.owner_token)).scalars().all()
    engine.dispose()
    assert owners == [None]
