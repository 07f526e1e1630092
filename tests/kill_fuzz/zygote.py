"""A process that imports the child study's modules once and forks a child per run.

Starting ``child.py`` afresh spends about a second importing Optuna, NumPy and SQLAlchemy, and
the kill-fuzz tests start it hundreds of times. This zygote does those imports once; each run is
then a ``fork`` of it that calls ``child.main()``. The children are still real processes with
their own pid and start time, killed with real signals by the tests. What a fresh interpreter
would do on its own is done here explicitly: the crash plan is read from the run's environment,
stdout goes to a FIFO the test reads, stderr to a file, and on exit the ``atexit`` handlers run
(they release checkpoint leases) before the process ends.

Protocol, one JSON object per line: the harness writes ``{"argv", "env", "stdout", "stderr"}``
to stdin; the zygote answers ``{"pid": N}`` when the child runs and ``{"pid": N, "returncode":
R}`` when it ended, with ``R`` as :attr:`subprocess.Popen.returncode` gives it (``-signal`` for a
child killed by a signal). One child runs at a time.

Run as ``python zygote.py`` from this folder (so that ``child`` and its neighbours import).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import traceback
from typing import Any

# Imported here, once, for every child: this is what the zygote is for.
import child
import optuna  # noqa: F401
import scenarios
import sqlalchemy.dialects.mysql.pymysql
import sqlalchemy.dialects.postgresql.psycopg
import sqlalchemy.dialects.sqlite  # noqa: F401

from optuna_checkpoint import _faults


def _run_child(request: dict[str, Any]) -> None:
    """In the forked child: become the run ``request`` describes, and never return."""
    code = 1
    try:
        stdin = os.open(os.devnull, os.O_RDONLY)
        stdout = os.open(request["stdout"], os.O_WRONLY)
        stderr = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _faults.reload_plan()
        sys.argv = request["argv"]
        code = child.main() or 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        # As the interpreter ends on an uncaught KeyboardInterrupt: traceback, exit handlers,
        # then death by SIGINT.
        traceback.print_exc()
        _exit_handlers()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        traceback.print_exc()
        code = 1
    _exit_handlers()
    os._exit(code)


def _exit_handlers() -> None:
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def main() -> None:
    scenarios.all_scenarios()  # imports every scenario module now, not in each child
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the tests' signals go to children only
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _run_child(request)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(
            json.dumps({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)}), flush=True
        )


if __name__ == "__main__":
    main()
