"""A process that imports the child study's modules once and forks a child per run.

Starting ``child.py`` afresh spends about a second importing Optuna, NumPy and SQLAlchemy, and
opening its first study another 0.3 s (Optuna's schema check imports alembic and reads its
migrations; SQLAlchemy configures its mappers), and the kill-fuzz tests start it hundreds of
times. This zygote does those imports once, and opens and runs a throwaway study of plain
Optuna (no ``CheckpointingSampler``, so that no lease, stream or exit handler of the library
exists before a fork); each run is then a ``fork`` of it that calls ``child.main()`` (or
``worker_child.main()``, ``deterministic_child.main()``, ``ctrl_c_child.main()``). The children
are still real processes with their own pid and start time, killed with real signals by the
tests. What a fresh interpreter would do on its own is done here explicitly: the crash plan is
read from the run's environment, stdout goes to a FIFO the test reads (or a file), stderr to a
file, and on exit the ``atexit`` handlers run (they release checkpoint leases) before the
process ends.

Protocol, one JSON object per line: the harness writes ``{"argv", "env", "stdout", "stderr",
"main"}`` to stdin (``main``: a name in ``MAINS``; ``stderr`` may be the ``stdout``
file); the zygote answers ``{"pid": N}`` when the child runs and, whenever it ends, ``{"pid":
N, "returncode": R}``, with ``R`` as :attr:`subprocess.Popen.returncode` gives it (``-signal``
for a child killed by a signal). Several children may run at once (the workers' fleet); their
ends are answered in the order they happen. Before it forks the run of a scenario that names
modules to ``preload`` (GPSampler's torch), the zygote imports them, once.

Run as ``python zygote.py`` from this folder (so that ``child`` and its neighbours import).
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
from pathlib import Path
import select
import shutil
import signal
import sys
import tempfile
import traceback
from typing import Any

# Imported here, once, for every child: this is what the zygote is for. (Wrapping a CMA-ES
# sampler imports cmaes, and SciPy's statistics with it: 0.6 s a child.)
import child
import cmaes  # noqa: F401
import ctrl_c_child
import deterministic_child
import optuna
import scenarios
import sqlalchemy.dialects.mysql.pymysql
import sqlalchemy.dialects.postgresql.psycopg
import sqlalchemy.dialects.sqlite  # noqa: F401
import worker_child

from optuna_checkpoint import _faults


MAINS = {
    "child": child.main,
    "worker_child": worker_child.main,
    "deterministic_child": deterministic_child.main,
    "ctrl_c_child": ctrl_c_child.main,
}
_wakeup: tuple[int, int] | None = None  # the pipe SIGCHLD wakes the main loop through


def _run_child(request: dict[str, Any]) -> None:
    """In the forked child: become the run ``request`` describes, and never return."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if _wakeup is not None:
            for fd in _wakeup:
                os.close(fd)
        stdin = os.open(os.devnull, os.O_RDONLY)
        # A FIFO the test reads (opening it blocks until the test has), or a file.
        stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT, 0o644)
        if not Path(request["stdout"]).is_fifo():
            os.ftruncate(stdout, 0)
        if request["stderr"] == request["stdout"]:
            stderr = os.dup(stdout)
        else:
            stderr = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _faults.reload_plan()
        sys.argv = request["argv"]
        code = MAINS[request.get("main", "child")]() or 0
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


def _preload(argv: list[str]) -> None:
    """Import what the run's scenario will import anyway, here, so that its children share it."""
    name = json.loads(argv[1]).get("scenario") if len(argv) > 1 else None
    if name:
        for module in scenarios.scenario(name).preload:
            importlib.import_module(module)


def _warm_up() -> None:
    """Open and run a throwaway study of plain Optuna on SQLite, and close everything of it.

    What a child's first study costs once per process (lazy imports, mapper configuration,
    alembic's migration scripts) is then paid here, once. Seeded, so that no global generator
    is drawn from; without the library's sampler, so that none of its state exists yet.
    """
    folder = tempfile.mkdtemp(prefix="kill-fuzz-zygote-warm-up-")
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{folder}/warm-up.db")
        study = optuna.create_study(
            study_name="warm-up", storage=storage, sampler=optuna.samplers.TPESampler(seed=0)
        )
        study.optimize(lambda trial: child.objective(trial, 0.0), n_trials=2)
        optuna.load_study(study_name="warm-up", storage=storage).get_trials(deepcopy=False)
        storage.remove_session()
        storage.engine.dispose()
        del study, storage
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _report_ended() -> None:
    """Reap every child that has ended, and answer each one's return code."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        answer = {"pid": pid, "returncode": os.waitstatus_to_exitcode(status)}
        print(json.dumps(answer), flush=True)


def main() -> None:
    global _wakeup
    scenarios.all_scenarios()  # imports every scenario module now, not in each child
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    _warm_up()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the tests' signals go to children only
    _wakeup = os.pipe()
    for fd in _wakeup:
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(_wakeup[1])
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes select() below
    unread = b""
    while True:
        ready, _, _ = select.select([0, _wakeup[0]], [], [])
        if _wakeup[0] in ready:
            while True:
                try:
                    if not os.read(_wakeup[0], 4096):
                        break
                except BlockingIOError:
                    break
        _report_ended()
        if 0 not in ready:
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            break  # the harness closed its end: it is done
        unread += chunk
        while b"\n" in unread:
            line, _, unread = unread.partition(b"\n")
            request = json.loads(line)
            _preload(request["argv"])
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                _run_child(request)
            print(json.dumps({"pid": pid}), flush=True)
    while True:  # children still running when the harness left
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break


if __name__ == "__main__":
    main()
