"""Run the child study, kill it, resume it, and compare trajectories bit for bit.

A trajectory is the list of a study's trials as the uninterrupted run records them: for each,
its state, its parameters and its values, floats written with ``float.hex`` so that equality is
bit-for-bit equality.
"""

from __future__ import annotations

import atexit
from collections.abc import Iterator
import contextlib
from dataclasses import dataclass
from dataclasses import field
import fcntl
import hashlib
import json
import os
from pathlib import Path
import pickle
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any
from typing import TextIO

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import pytest

from optuna_checkpoint import uninterrupted_trials
from tests.kill_fuzz.storages import open_storage


CHILD = Path(__file__).with_name("child.py")
ZYGOTE = Path(__file__).with_name("zygote.py")
CHILD_TIMEOUT = 120.0
MAX_RUNS = 40

Trajectory = list[tuple[Any, ...]]


def _exact(value: Any) -> Any:
    return value.hex() if isinstance(value, float) else value


def trial_key(trial: FrozenTrial) -> tuple[Any, ...]:
    """A trial's state, params and values, exactly."""
    params = tuple(sorted((name, _exact(v)) for name, v in trial.params.items()))
    values = tuple(_exact(v) for v in trial.values) if trial.values is not None else None
    return (trial.state.name, params, values)


def trajectory(storage: str, *, wrapped: bool) -> Trajectory:
    """Read the finished trajectory of the study ``fuzz`` in ``storage``.

    For a wrapped run the interrupted attempts are left out (they were retried); for the
    unwrapped control every finished trial counts, as a user of plain Optuna would see them.
    """
    study = optuna.load_study(study_name="fuzz", storage=open_storage(storage))
    trials = uninterrupted_trials(study) if wrapped else study.get_trials()
    return [trial_key(t) for t in trials if t.state != TrialState.RUNNING]


def first_difference(actual: Trajectory, expected: Trajectory) -> str | None:
    """Describe the first trial where two trajectories differ, or ``None`` if equal."""
    for index, (a, e) in enumerate(zip(actual, expected, strict=False)):
        if a != e:
            return f"trial {index} differs:\n  resumed:       {a}\n  uninterrupted: {e}"
    if len(actual) != len(expected):
        return f"lengths differ: resumed {len(actual)}, uninterrupted {len(expected)} trials"
    return None


def assert_resumed_exactly(
    address: str, expected: Trajectory, log: RunLog, n_complete: int
) -> None:
    """Assert that the study at ``address`` resumed along ``expected``, bit for bit.

    The study is read without its interrupted attempts, and must hold ``n_complete`` COMPLETE
    trials, so that a run that stopped early cannot pass.
    """
    actual = trajectory(address, wrapped=True)
    difference = first_difference(actual, expected)
    assert difference is None, f"{difference}\n(after {log.kills_landed} kills: {log.signals})"
    assert sum(1 for state, *_ in actual if state == "COMPLETE") == n_complete


@dataclass
class RunLog:
    """What happened across the runs of one interrupted study."""

    runs: int = 0
    kills_landed: int = 0
    signals: list[str] = field(default_factory=list)
    # Of each run that said ``ready``: seconds from then until it exited.
    seconds_after_ready: list[float] = field(default_factory=list)


def _child_env(crash_at: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OPTUNA_CHECKPOINT_CRASH_AT", None)
    if crash_at:
        env["OPTUNA_CHECKPOINT_CRASH_AT"] = crash_at
    return env


class _Zygote:
    """The harness's side of ``zygote.py``: forks pre-imported children, as many as asked."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, str(ZYGOTE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ZYGOTE.parent,
        )
        self._unread = b""  # answers are read unbuffered, so select() sees what is pending
        self._ended: dict[int, int] = {}  # return codes answered, not yet asked for
        self._started = 0
        self._dir = Path(tempfile.mkdtemp(prefix="kill-fuzz-zygote-"))
        atexit.register(self.close)

    def start(
        self,
        argv: list[str],
        env: dict[str, str],
        *,
        main: str = "child",
        output: Path | None = None,
    ) -> _ForkedChild:
        """Fork a run of ``main`` (``child`` or ``worker_child``) with ``argv``.

        Its stdout comes back through a FIFO and its stderr through a file of the zygote's, or,
        with ``output``, both go to that file.
        """
        self._started += 1
        if output is None:
            stdout = self._dir / f"stdout-{self._started}"
            stderr = self._dir / f"stderr-{self._started}"
            os.mkfifo(stdout)
        else:
            stdout = stderr = output
        assert self._process.stdin is not None
        request = {
            "argv": argv,
            "env": env,
            "stdout": str(stdout),
            "stderr": str(stderr),
            "main": main,
        }
        self._process.stdin.write(json.dumps(request).encode() + b"\n")
        self._process.stdin.flush()
        answer = self._answer(None)
        while answer is not None and "returncode" in answer:  # another child ended meanwhile
            self._ended[answer["pid"]] = int(answer["returncode"])
            answer = self._answer(None)
        assert answer is not None
        if output is not None:
            return _ForkedChild(self, answer["pid"], None, None)
        # Opening blocks until the child has opened the FIFO's other end, its first act.
        return _ForkedChild(self, answer["pid"], open(stdout), stderr)

    def wait_for(self, pid: int, timeout: float | None) -> int | None:
        """The child's return code, or ``None`` if it is still running after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while pid not in self._ended:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            answer = self._answer(left)
            if answer is None:
                return None
            assert "returncode" in answer, answer
            self._ended[answer["pid"]] = int(answer["returncode"])
        return self._ended.pop(pid)

    def _answer(self, timeout: float | None) -> dict[str, Any] | None:
        assert self._process.stdout is not None
        fd = self._process.stdout.fileno()
        while b"\n" not in self._unread:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError("the kill-fuzz zygote died; set KILL_FUZZ_ZYGOTE=0 to debug")
            self._unread += chunk
        line, _, self._unread = self._unread.partition(b"\n")
        return dict(json.loads(line))

    def close(self) -> None:
        if self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            self._process.wait(timeout=30)
        shutil.rmtree(self._dir, ignore_errors=True)


class _ForkedChild:
    """The parts of :class:`subprocess.Popen` that the tests use, for a fork of the zygote."""

    def __init__(
        self, zygote: _Zygote, pid: int, stdout: TextIO | None, stderr: Path | None
    ) -> None:
        self._zygote = zygote
        self.pid = pid
        self.stdout = stdout
        self._stderr = stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote.wait_for(self.pid, 0)
        return self.returncode

    def send_signal(self, sig: signal.Signals) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._zygote.wait_for(self.pid, timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(str(CHILD), timeout or 0.0)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        stdout = stderr = ""
        if self.stdout is not None:
            stdout = self.stdout.read()
            self.stdout.close()
        if self._stderr is not None:
            stderr = self._stderr.read_text()
            self._stderr.unlink()
        return stdout, stderr


_zygote: _Zygote | None = None


ChildProcess = subprocess.Popen[Any] | _ForkedChild


def start_script(script: Path, config: dict[str, Any], output: Path) -> ChildProcess:
    """Start ``script`` (``worker_child.py``) with ``config``, its output going to ``output``.

    Forked from the zygote, several at once if asked, or run as a fresh interpreter.
    """
    argv = [str(script), json.dumps(config)]
    if not _use_zygote():
        with output.open("wb") as out:
            return subprocess.Popen(
                [sys.executable, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
    warm_up_zygote()
    assert _zygote is not None
    return _zygote.start(argv, dict(os.environ), main=script.stem, output=output)


def start_piped(script: Path, config: dict[str, Any]) -> ChildProcess:
    """Start ``script`` with ``config``, its stdout and stderr coming back as ``run_child``'s do.

    Forked from the zygote (whose ``MAINS`` must name the script), or a fresh interpreter.
    """
    argv = [str(script), json.dumps(config)]
    if not _use_zygote():
        return subprocess.Popen(
            [sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    warm_up_zygote()
    assert _zygote is not None
    return _zygote.start(argv, dict(os.environ), main=script.stem)


def _use_zygote() -> bool:
    return os.environ.get("KILL_FUZZ_ZYGOTE", "1") != "0"


def warm_up_zygote() -> None:
    """Start the zygote now, so that its imports overlap other work instead of the first run."""
    global _zygote
    if _zygote is None and _use_zygote():
        _zygote = _Zygote()


def _start_child(
    config: dict[str, Any], env: dict[str, str]
) -> subprocess.Popen[str] | _ForkedChild:
    """Start ``child.py`` with ``config``: forked from the zygote, or as a fresh interpreter."""
    argv = [str(CHILD), json.dumps(config)]
    if not _use_zygote():
        return subprocess.Popen(
            [sys.executable, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    global _zygote
    if _zygote is None:
        _zygote = _Zygote()
    return _zygote.start(argv, env)


SIGINT_REPEAT_AFTER = 1.0  # seconds a Ctrl-C'd child may take to stop before the next Ctrl-C


def interrupt_again_if_ignored(process: subprocess.Popen[str] | _ForkedChild) -> None:
    """Press Ctrl-C again, as a user would, while the child goes on after the first one.

    Python swallows a KeyboardInterrupt raised inside a finalizer or weakref callback, printing
    "Exception ignored in" (SQLAlchemy's ORM class registry runs such callbacks when garbage
    collection frees the model classes alembic defines; plain Optuna is interrupted the same
    way). The process then goes on as if never interrupted. Rare: once in 190 Ctrl-Cs at random
    instants. A fresh interpreter may also take over a second to end after the first (its final
    garbage collection); the second Ctrl-C then only ends that sooner.
    """
    for _ in range(5):
        deadline = time.monotonic() + SIGINT_REPEAT_AFTER
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)


def run_child(
    config: dict[str, Any],
    *,
    crash_at: str | None = None,
    kill_after: float | None = None,
    kill_signal: signal.Signals = signal.SIGKILL,
    log: RunLog | None = None,
) -> tuple[int, bool]:
    """Run the child once; return its exit code and whether it was killed by us or itself.

    Args:
        config: The child's configuration.
        crash_at: ``point:n[:SIG]`` for the library's deterministic crash points.
        kill_after: Seconds after the child reports ``ready`` at which to send ``kill_signal``.
        kill_signal: The signal for ``kill_after``.
        log: Where to note how long the run lasted after ``ready``.
    """
    process = _start_child(config, _child_env(crash_at))
    killed_by_us = False
    try:
        assert process.stdout is not None
        ready = process.stdout.readline().strip() == "ready"
        ready_at = time.perf_counter()
        if ready and kill_after is not None:
            time.sleep(kill_after)
            if process.poll() is None:
                process.send_signal(kill_signal)
                killed_by_us = True
                if kill_signal == signal.SIGINT:
                    interrupt_again_if_ignored(process)
        _, stderr = process.communicate(timeout=CHILD_TIMEOUT)
        if ready and log is not None:
            log.seconds_after_ready.append(time.perf_counter() - ready_at)
    except BaseException:
        process.kill()
        process.wait()
        raise
    code = process.returncode
    died = killed_by_us or (crash_at is not None and code != 0)
    if code != 0 and not died:
        raise AssertionError(f"child failed on its own (exit {code}):\n{stderr}")
    # SIGINT surfaces as KeyboardInterrupt; any other traceback is a real error in the child,
    # with one exception, the same with plain Optuna: a KeyboardInterrupt that lands inside
    # SQLAlchemy's session bookkeeping can leave the session's identity map invalid, so that
    # Optuna's next read fails ("identity map is no longer valid"). The process has then died
    # of our signal as surely as of a KeyboardInterrupt, and what matters, the resumed
    # trajectory, is checked by the caller. ("database is locked" is no longer one: the SQL
    # store closes the cursors an interrupt leaves open, stores/_sql_cursors.py.)
    interrupted = kill_signal == signal.SIGINT and killed_by_us
    swallowed = interrupted and "identity map is no longer valid" in stderr
    if code != 0 and "Traceback" in stderr and "KeyboardInterrupt" not in stderr and not swallowed:
        raise AssertionError(f"child crashed with an unexpected error:\n{stderr}")
    return code, died


def run_to_completion(config: dict[str, Any], log: RunLog) -> None:
    """Re-run the child without interference until its study is complete."""
    code, _ = run_child(config, log=log)
    log.runs += 1
    assert code == 0


def run_with_random_kills(
    config: dict[str, Any],
    *,
    kills: int,
    signals: list[signal.Signals],
    rng: random.Random,
    max_delay: float,
    min_delay: float = 0.0,
) -> RunLog:
    """Kill the child ``kills`` times at random instants, cycling ``signals``, then finish it.

    If the study on a SQLite file finished before the first kill (the machine ran it faster
    than the window assumed), it starts again on a new file with half the window, up to
    twice, so that a kill lands.
    """
    for _ in range(3):
        log = RunLog()
        while log.kills_landed < kills and log.runs < MAX_RUNS:
            sig = signals[log.kills_landed % len(signals)]
            delay = rng.uniform(min_delay, max_delay)
            _, died = run_child(config, kill_after=delay, kill_signal=sig)
            log.runs += 1
            if died:
                log.kills_landed += 1
                log.signals.append(sig.name)
            else:
                break  # the study finished before the kill: nothing left to interrupt
        if log.kills_landed or not _start_again(config):
            break
        max_delay = min_delay + (max_delay - min_delay) / 2
    run_to_completion(config, log)
    return log


def _start_again(config: dict[str, Any]) -> bool:
    """Delete the study's SQLite file, if it is on one; whether it was."""
    storage = str(config["storage"])
    if not storage.startswith("sqlite:///"):
        return False
    path = Path(storage.removeprefix("sqlite:///"))
    for leftover in (path, path.with_name(path.name + "-journal")):
        leftover.unlink(missing_ok=True)
    return True


def run_with_crash_points(config: dict[str, Any], crash_plan: list[str]) -> RunLog:
    """Run the child once per entry of ``crash_plan`` (``point:n[:SIG]``), then finish it."""
    log = RunLog()
    for crash_at in crash_plan:
        _, died = run_child(config, crash_at=crash_at)
        log.runs += 1
        if died:
            log.kills_landed += 1
            log.signals.append(crash_at)
    run_to_completion(config, log)
    return log


def scenario_config(
    scenario: str, storage: str, *, seed: int | None, n_complete: int, **extra: Any
) -> dict[str, Any]:
    """The child's configuration for a named scenario of ``scenarios_*.py``."""
    return {
        "scenario": scenario,
        "seed": seed,
        "storage": storage,
        "n_complete": n_complete,
        **extra,
    }


@dataclass(frozen=True)
class Reference:
    """An uninterrupted run of the child: where it is, what it did, and how long it lasted."""

    url: str  # a SQLite file, complete; read it, never write it (other workers read it too)
    trajectory: Trajectory  # read as wrapped or not as the configuration's ``wrap`` says
    seconds_after_ready: float


def shared_directory(directories: pytest.TempPathFactory) -> Path:
    """A folder of this session's base temp folder that every xdist worker of it shares."""
    base = directories.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / "kill-fuzz-references"
    path.mkdir(exist_ok=True)
    return path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


_references: dict[tuple[Path, str], Reference] = {}


def reference_run(config: dict[str, Any], directory: Path) -> Reference:
    """The uninterrupted run of ``config`` (its storage aside), made once per test session.

    The first worker to need it runs it on a SQLite file in ``directory`` while holding a file
    lock on it; the others wait for that lock and read what it left.
    """
    key = json.dumps({k: v for k, v in config.items() if k != "storage"}, sort_keys=True)
    if (directory, key) in _references:
        return _references[directory, key]
    name = hashlib.sha256(key.encode()).hexdigest()[:20]
    folder, done = directory / name, directory / f"{name}.pickle"
    with _locked(directory / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker died making it
            folder.mkdir()
            url = sqlite_url(folder / "study.db")
            log = RunLog()
            run_to_completion({**config, "storage": url}, log)
            made = Reference(
                url, trajectory(url, wrapped=config.get("wrap", True)), log.seconds_after_ready[-1]
            )
            partial = done.with_suffix(".partial")
            partial.write_bytes(pickle.dumps(made))
            partial.replace(done)
    reference = pickle.loads(done.read_bytes())
    assert isinstance(reference, Reference)
    _references[directory, key] = reference
    return reference


class ReferenceRuns:
    """Uninterrupted runs of the child, each made once per session and shared by its tests.

    A run is identified by its configuration without the storage, and runs on a SQLite file of
    its own (:func:`reference_run`, shared by the xdist workers); whether its trajectory is read
    as wrapped follows the configuration's ``wrap``.
    """

    def __init__(self, directories: pytest.TempPathFactory) -> None:
        self._directory = shared_directory(directories)

    def url(self, config: dict[str, Any]) -> str:
        """The storage of the uninterrupted run of ``config``."""
        return reference_run(config, self._directory).url

    def trajectory(self, config: dict[str, Any]) -> Trajectory:
        """The trajectory of the uninterrupted run of ``config``."""
        return reference_run(config, self._directory).trajectory


def sqlite_url(path: Path) -> str:
    """The storage URL of a SQLite file."""
    return f"sqlite:///{path}"
