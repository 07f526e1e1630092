"""One run of the demo: a study file, and workers that optimize it, some of them killed."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
import random
import signal
import subprocess
import sys
import time

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_checkpoint.demo._worker import READY
from optuna_checkpoint.demo._worker import STUDY_NAME


SIGNALS = ("SIGKILL", "SIGTERM", "SIGINT")
"""The kills' signals, in turn. SIGINT is what Ctrl-C sends."""

WORKER_MODULE = "optuna_checkpoint.demo"
"""What the workers run with ``python -m``: the demo's command, with its hidden ``--worker``."""


class DemoError(Exception):
    """A worker failed in a way the demo did not cause."""


@dataclass(frozen=True)
class Kill:
    """A signal, sent a delay after the worker starts optimizing."""

    signal: signal.Signals
    delay: float


@dataclass(frozen=True)
class KillOutcome:
    """What a kill did to the study."""

    kill: Kill
    sent: bool
    """False if the worker finished before the kill was due."""
    landed: bool
    """Whether the signal ended the worker: it cut off a trial or stopped the process between
    trials. False if it was not sent, or reached a worker that was exiting anyway."""
    n_trials: int
    """Trials in the study after the kill, in any state."""
    n_complete: int
    """COMPLETE trials in the study after the kill."""
    cut_off: int | None
    """Number of the trial that the kill interrupted, if it interrupted one."""

    def describe(self, n_trials: int) -> str:
        """Say what happened, for a progress line, in a run of ``n_trials`` trials."""
        if not self.sent:
            return "not sent, the run finished first"
        if not self.landed:
            return f"{self.kill.signal.name} sent as the run was finishing; it stopped nothing"
        what = "between trials" if self.cut_off is None else f"cut off trial {self.cut_off}"
        then = "the run was ending" if self.n_complete >= n_trials else "resuming…"
        return (
            f"{self.kill.signal.name} after {self.kill.delay:.2f} s, {what}; "
            f"{self.n_complete} of {n_trials} trials complete, {then}"
        )


def kills_summary(outcomes: Sequence[KillOutcome], planned: int) -> str:
    """Say how many kills landed, with their signals, and of how many planned if fewer.

    Args:
        outcomes: What each kill did; a run stops killing once one does not land.
        planned: How many kills were planned.

    Returns:
        For example ``2 kills (SIGKILL, SIGTERM) of the 4 planned (the run finished first)``.
    """
    signals = [o.kill.signal.name for o in outcomes if o.landed]
    landed = len(signals)
    if landed > 5:
        signals = [f"{signals.count(name)} {name}" for name in SIGNALS if name in signals]
    text = f"{landed} kill{'' if landed == 1 else 's'}"
    text += f" ({', '.join(signals)})" if signals else ""
    if landed < planned:
        text += f" of the {planned} planned (the run finished first)"
    return text


NextKill = Callable[[int, int], Kill]
"""Choose kill ``i`` (from 0) when the study has ``n`` COMPLETE trials."""


@dataclass
class Run:
    """One of the demo's three runs: a study file, and workers that optimize it."""

    label: str
    directory: Path
    name: str
    sampler_name: str
    seed: int
    n_trials: int
    wrap: bool
    outcomes: list[KillOutcome] = field(default_factory=list)

    @property
    def storage(self) -> str:
        """The study's SQLAlchemy URL."""
        return f"sqlite:///{self.directory / (self.name + '.db')}"

    @property
    def log_path(self) -> Path:
        """Where the workers' stderr goes: mostly the tracebacks of interrupted workers."""
        return self.directory / (self.name + ".log")

    def remove_files(self) -> None:
        """Delete the study file and log of an earlier demo in the same directory."""
        for path in (self.directory / (self.name + ".db"), self.log_path):
            path.unlink(missing_ok=True)

    def say(self, text: str) -> None:
        """Print a progress line."""
        print(f"{'[' + self.label + ']':<14} {text}", flush=True)

    def study(self) -> optuna.Study:
        """The run's study, loaded from its file."""
        return optuna.load_study(study_name=STUDY_NAME, storage=self.storage)

    def trials(self) -> list[FrozenTrial]:
        """All trials of the study, as stored."""
        return self.study().get_trials()

    def start_worker(self) -> subprocess.Popen[str] | None:
        """Start a worker and wait until it optimizes; None if it found the study complete."""
        command = [sys.executable, "-m", WORKER_MODULE, "--worker", self.storage]
        command += ["--sampler", self.sampler_name, "--seed", str(self.seed)]
        command += ["--trials", str(self.n_trials), *([] if self.wrap else ["--unwrapped"])]
        with self.log_path.open("a") as log:
            worker = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
        assert worker.stdout is not None
        if worker.stdout.readline().strip() == READY:
            return worker
        self.finish_worker(worker)
        return None

    def finish_worker(self, worker: subprocess.Popen[str], killed: bool = False) -> None:
        """Wait for a worker to end; raise DemoError if it failed without being killed."""
        worker.communicate()
        if worker.returncode != 0 and not killed:
            log = self.log_path.read_text().splitlines()[-12:]
            raise DemoError(
                f"a {self.label} worker exited with code {worker.returncode}; the end of "
                f"{self.log_path}:\n  " + "\n  ".join(log)
            )

    def run_to_end(self) -> float:
        """Run a worker until the study is complete; return how long it optimized, in seconds."""
        worker = self.start_worker()
        started = time.perf_counter()
        if worker is not None:
            self.finish_worker(worker)
        return time.perf_counter() - started

    def run_and_kill(self, kill: Kill) -> KillOutcome:
        """Run a worker, send it ``kill.signal`` after ``kill.delay`` seconds, see the damage."""
        worker = self.start_worker()
        if worker is None:
            return KillOutcome(kill, False, False, self.n_trials, self.n_trials, None)
        sent = False
        try:
            worker.wait(timeout=kill.delay)
        except subprocess.TimeoutExpired:
            worker.send_signal(kill.signal)
            sent = True
        self.finish_worker(worker, killed=sent)
        trials = self.trials()
        n_complete = sum(t.state == TrialState.COMPLETE for t in trials)
        last = trials[-1] if trials else None
        cut_off = last.number if last is not None and last.state != TrialState.COMPLETE else None
        landed = sent and worker.returncode != 0
        return KillOutcome(kill, sent, landed, len(trials), n_complete, cut_off)

    def run(self, n_kills: int, next_kill: NextKill) -> None:
        """Run workers until the study is complete, killing the first ``n_kills`` of them.

        Args:
            n_kills: How many workers to kill.
            next_kill: Chooses each kill, given its index and how many trials are complete.
        """
        n_complete = 0
        for index in range(n_kills):
            outcome = self.run_and_kill(next_kill(index, n_complete))
            self.outcomes.append(outcome)
            n_complete = outcome.n_complete
            self.say(f"kill {index + 1}/{n_kills}: {outcome.describe(self.n_trials)}")
            if not outcome.landed:
                return
        self.run_to_end()
        self.say(f"{self.n_trials} trials complete")


def random_kills(n_kills: int, n_trials: int, reference_seconds: float) -> NextKill:
    """Plan kills that land at random instants spread over the run.

    The time the uninterrupted run took for the trials still missing is shared out among the
    kills to come and the final run; each delay is drawn around its share, so that the kills
    spread over the run and rarely miss its end.

    Args:
        n_kills: How many kills there will be.
        n_trials: How many COMPLETE trials the run ends with.
        reference_seconds: How long the uninterrupted run optimized.

    Returns:
        A function choosing kill ``i`` when ``n`` trials are complete.
    """
    rng = random.Random()

    def next_kill(index: int, n_complete: int) -> Kill:
        remaining = reference_seconds * (n_trials - n_complete) / n_trials
        delay = remaining * rng.uniform(0.4, 1.2) / (n_kills - index + 1)
        return Kill(signal.Signals[SIGNALS[index % len(SIGNALS)]], delay)

    return next_kill
