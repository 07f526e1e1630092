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
import threading
import time
from typing import IO

import optuna
from optuna.trial import FrozenTrial

from optuna_checkpoint.demo._worker import FINISHED
from optuna_checkpoint.demo._worker import READY
from optuna_checkpoint.demo._worker import STARTS
from optuna_checkpoint.demo._worker import STEPS
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
    n_finished: int
    """Finished (COMPLETE or PRUNED) trials in the study after the kill."""
    cut_off: int | None
    """Number of the trial that the kill interrupted, if it interrupted one."""
    cut_off_step: int = 0
    """The last step that the interrupted trial began, 0 if it began none."""

    def describe(self, n_trials: int) -> str:
        """Say what happened, for a progress line, in a run of ``n_trials`` trials."""
        if not self.sent:
            return "not sent, the run finished first"
        if not self.landed:
            return f"{self.kill.signal.name} sent as the run was finishing; it stopped nothing"
        if self.cut_off is None:
            what = "between trials"
        elif self.cut_off_step == 0:
            what = f"cut off trial {self.cut_off} before its first step"
        else:
            what = f"cut off trial {self.cut_off} at step {self.cut_off_step} of {STEPS}"
        then = "the run was ending" if self.n_finished >= n_trials else "resuming…"
        return (
            f"{self.kill.signal.name} after {self.kill.delay:.2f} s, {what}; "
            f"{self.n_finished} of {n_trials} trials finished, {then}"
        )


def describe_start(
    number: int, first_step: int, cut_off: Sequence[KillOutcome], resumable: bool
) -> str | None:
    """Say how the first trial after a kill goes on from the trials that kills cut off.

    Args:
        number: The trial that starts training.
        first_step: The step it starts at.
        cut_off: The kills that cut off a trial since the last one that started training.
        resumable: Whether the trials save their state with ``trial_checkpoint`` and are
            retried; if not (plain Optuna), a cut-off trial is not retried.

    Returns:
        For example ``trial 9 retries trial 8 (SIGKILL) and resumes at step 7 of 10``; None if
        no trial was cut off.
    """
    if not cut_off:
        return None
    attempts = [f"{o.cut_off} ({o.kill.signal.name})" for o in cut_off]
    which = f"trial{'s' if len(attempts) > 1 else ''} {', '.join(attempts)}"
    if not resumable:
        lost = sum(o.cut_off_step for o in cut_off)
        verb = "is" if len(attempts) == 1 else "are"
        return (
            f"trial {number} starts at step 1; {which} {verb} not retried: "
            f"{lost} step{'' if lost == 1 else 's'} lost"
        )
    if first_step > STEPS:
        return f"trial {number} retries {which}, whose {STEPS} steps were all saved"
    if first_step == 1:
        return f"trial {number} retries {which} from step 1: it had saved no step"
    return f"trial {number} retries {which} and resumes at step {first_step} of {STEPS}"


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
"""Choose kill ``i`` (from 0) when the study has ``n`` finished trials."""


@dataclass
class Worker:
    """A worker process that optimizes, and the thread that reads what it prints."""

    process: subprocess.Popen[str]
    reader: threading.Thread | None = None


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
    unresumed: list[KillOutcome] = field(default_factory=list)
    """The kills that cut off a trial since the last trial that started training."""

    @property
    def storage(self) -> str:
        """The study's SQLAlchemy URL."""
        return f"sqlite:///{self.directory / (self.name + '.db')}"

    @property
    def log_path(self) -> Path:
        """Where the workers' stderr goes: mostly the tracebacks of interrupted workers."""
        return self.directory / (self.name + ".log")

    @property
    def step_log_path(self) -> Path:
        """Where the workers log each training step as it begins: ``trial-number step``."""
        return self.directory / (self.name + ".steps")

    def remove_files(self) -> None:
        """Delete the study file and logs of an earlier demo in the same directory."""
        for path in (self.directory / (self.name + ".db"), self.log_path, self.step_log_path):
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

    def logged_steps(self) -> list[tuple[int, int]]:
        """Every step the workers began, as (trial number, step), in order."""
        if not self.step_log_path.exists():
            return []
        lines = self.step_log_path.read_text().splitlines()
        return [(int(number), int(step)) for number, step in (line.split() for line in lines)]

    def start_worker(self) -> Worker | None:
        """Start a worker and wait until it optimizes; None if it found the study complete."""
        command = [sys.executable, "-m", WORKER_MODULE, "--worker", self.storage]
        command += ["--sampler", self.sampler_name, "--seed", str(self.seed)]
        command += ["--trials", str(self.n_trials), "--step-log", str(self.step_log_path)]
        command += [] if self.wrap else ["--unwrapped"]
        with self.log_path.open("a") as log:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
        assert process.stdout is not None
        if process.stdout.readline().strip() != READY:
            self.finish_worker(Worker(process))
            return None
        # What the worker prints next tells as it happens where each trial starts training.
        reader = threading.Thread(target=self.follow, args=(process.stdout,), daemon=True)
        reader.start()
        return Worker(process, reader)

    def follow(self, stdout: IO[str]) -> None:
        """Read a worker's output and say how a trial starts after kills cut off others."""
        for line in stdout:
            words = line.split()
            if len(words) != 3 or words[0] != STARTS:
                continue
            number, first_step = int(words[1]), int(words[2])
            text = describe_start(number, first_step, self.unresumed, self.wrap)
            if text is not None:
                self.say(text)
            self.unresumed.clear()

    def finish_worker(self, worker: Worker, killed: bool = False) -> None:
        """Wait for a worker to end; raise DemoError if it failed without being killed."""
        if worker.reader is None:
            worker.process.communicate()
        else:
            worker.process.wait()
            worker.reader.join()
        if worker.process.returncode != 0 and not killed:
            log = self.log_path.read_text().splitlines()[-12:]
            raise DemoError(
                f"a {self.label} worker exited with code {worker.process.returncode}; the end "
                f"of {self.log_path}:\n  " + "\n  ".join(log)
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
            worker.process.wait(timeout=kill.delay)
        except subprocess.TimeoutExpired:
            worker.process.send_signal(kill.signal)
            sent = True
        self.finish_worker(worker, killed=sent)
        trials = self.trials()
        n_finished = sum(t.state in FINISHED for t in trials)
        last = trials[-1] if trials else None
        cut_off = last.number if last is not None and last.state not in FINISHED else None
        step = max((s for number, s in self.logged_steps() if number == cut_off), default=0)
        landed = sent and worker.process.returncode != 0
        return KillOutcome(kill, sent, landed, len(trials), n_finished, cut_off, step)

    def run(self, n_kills: int, next_kill: NextKill) -> None:
        """Run workers until the study is complete, killing the first ``n_kills`` of them.

        Args:
            n_kills: How many workers to kill.
            next_kill: Chooses each kill, given its index and how many trials are finished.
        """
        n_finished = 0
        for index in range(n_kills):
            outcome = self.run_and_kill(next_kill(index, n_finished))
            self.outcomes.append(outcome)
            n_finished = outcome.n_finished
            self.say(f"kill {index + 1}/{n_kills}: {outcome.describe(self.n_trials)}")
            if not outcome.landed:
                return
            if outcome.cut_off is not None:
                self.unresumed.append(outcome)
        self.run_to_end()
        self.say(f"{self.n_trials} trials finished")


def random_kills(n_kills: int, n_trials: int, reference_seconds: float) -> NextKill:
    """Plan kills that land at random instants spread over the run.

    The time the uninterrupted run took for the trials still missing is shared out among the
    kills to come and the final run; each delay is drawn around its share, so that the kills
    spread over the run and rarely miss its end.

    Args:
        n_kills: How many kills there will be.
        n_trials: How many finished trials the run ends with.
        reference_seconds: How long the uninterrupted run optimized.

    Returns:
        A function choosing kill ``i`` when ``n`` trials are finished.
    """
    rng = random.Random()

    def next_kill(index: int, n_finished: int) -> Kill:
        remaining = reference_seconds * (n_trials - n_finished) / n_trials
        delay = remaining * rng.uniform(0.4, 1.2) / (n_kills - index + 1)
        return Kill(signal.Signals[SIGNALS[index % len(SIGNALS)]], delay)

    return next_kill
