"""``optuna-checkpoint-demo``: kill a study with real signals and show that it resumes exactly.

The demo runs one small optimization script three times, each in child processes on its own
SQLite file:

1. *reference*: with ``CheckpointingSampler(TPESampler(seed=S))``, never interrupted;
2. *checkpointed*: the same script, killed K times at random instants (SIGKILL, SIGTERM and
   SIGINT in turn) and run again after each kill until N trials are COMPLETE;
3. *unwrapped*: the control, the plain ``TPESampler(seed=S)`` killed in the same way.

It then compares the trajectories trial by trial, bit for bit (``float.hex``), and exits with 0
if the checkpointed run is identical to the reference, 1 otherwise.

The child processes run this module with the hidden ``--worker`` option, which is an ordinary
user script: it opens its study with ``load_if_exists=True`` and optimizes until N trials are
COMPLETE, so running it again after a kill continues the study.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
import io
import math
from pathlib import Path
import random
import signal
import subprocess
import sys
import tempfile
import time

import optuna
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import uninterrupted_trials


STUDY_NAME = "demo"

READY = "optimizing"
"""What a worker prints once its study is open, so that the kills land while it optimizes."""

OBJECTIVE_SECONDS = 0.005
"""How long the objective pretends to train a model, so that some kills land inside it."""

SAMPLER_CLASSES = {"tpe": "TPESampler", "cmaes": "CmaEsSampler", "random": "RandomSampler"}

SIGNALS = ("SIGKILL", "SIGTERM", "SIGINT")
"""The kills' signals, in turn. SIGINT is what Ctrl-C sends."""

MAX_ROWS = 30
"""Longer tables show only their first and last rows, and every row that differs."""


# -- the user's script, run in the child processes ------------------------------------------


def make_sampler(name: str, seed: int) -> BaseSampler:
    """Build a freshly seeded sampler, as a user's script does on every run.

    Args:
        name: ``tpe``, ``cmaes`` or ``random``.
        seed: The sampler's seed.

    Returns:
        The sampler.
    """
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "cmaes":
        # CMA-ES leaves the categorical parameter to its independent sampler, as intended here.
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.RandomSampler(seed=seed)


def objective(trial: optuna.Trial) -> float:
    """A deterministic function of a float, an integer and a categorical parameter.

    Args:
        trial: The trial to take the parameters from.

    Returns:
        The value to minimize.
    """
    x = trial.suggest_float("x", -5.0, 5.0)
    layers = trial.suggest_int("layers", 1, 8)
    activation = trial.suggest_categorical("activation", ["relu", "tanh", "gelu"])
    time.sleep(OBJECTIVE_SECONDS)
    penalty = {"relu": 0.0, "tanh": 0.5, "gelu": 0.25}[activation]
    return (x - 1.0) ** 2 + math.sin(3.0 * x) + 0.3 * (layers - 3) ** 2 + penalty


def run_worker(storage: str, sampler_name: str, seed: int, n_trials: int, wrap: bool) -> int:
    """Optimize the demo study until it has ``n_trials`` COMPLETE trials, continuing it if any.

    Args:
        storage: The study's database URL.
        sampler_name: The sampler to use, see :func:`make_sampler`.
        seed: The sampler's seed.
        n_trials: How many COMPLETE trials the study should have in the end.
        wrap: Whether to wrap the sampler in :class:`CheckpointingSampler`.

    Returns:
        The exit code, 0.
    """
    # Ctrl-C raises KeyboardInterrupt in a terminal, but a child of a non-interactive shell may
    # inherit SIGINT ignored: ask for the terminal's behaviour.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    sampler = make_sampler(sampler_name, seed)
    if wrap:
        sampler = CheckpointingSampler(sampler)
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=storage, load_if_exists=True, sampler=sampler
    )
    complete = (TrialState.COMPLETE,)
    if len(study.get_trials(deepcopy=False, states=complete)) >= n_trials:
        return 0  # done already: optimize() would still run one more trial
    print(READY, flush=True)
    study.optimize(
        objective, callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=complete)]
    )
    return 0


# -- running and killing the workers --------------------------------------------------------


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
    landed: bool
    """False if the worker finished before the kill."""
    n_trials: int
    """Trials in the study after the kill, in any state."""
    n_complete: int
    """COMPLETE trials in the study after the kill."""
    cut_off: int | None
    """Number of the trial that the kill interrupted, if it interrupted one."""

    def describe(self, n_trials: int) -> str:
        """Say what happened, for a progress line, in a run of ``n_trials`` trials."""
        if not self.landed:
            return "not sent, the run finished first"
        what = "between trials" if self.cut_off is None else f"cut off trial #{self.cut_off}"
        then = "the run was ending" if self.n_complete >= n_trials else "resuming…"
        return (
            f"{self.kill.signal.name} after {self.kill.delay:.2f} s, {what}; "
            f"{self.n_complete} trials complete, {then}"
        )


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

    def trials(self) -> list[FrozenTrial]:
        """All trials of the study, as stored."""
        return optuna.load_study(study_name=STUDY_NAME, storage=self.storage).get_trials()

    def start_worker(self) -> subprocess.Popen[str] | None:
        """Start a worker and wait until it optimizes; None if it found the study complete."""
        command = [sys.executable, "-m", "optuna_checkpoint._demo", "--worker", self.storage]
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
            return KillOutcome(kill, False, self.n_trials, self.n_trials, None)
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
        return KillOutcome(kill, landed, len(trials), n_complete, cut_off)

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


# -- comparing trajectories -----------------------------------------------------------------


def exact(value: object) -> str:
    """Spell a value so that two spellings are equal exactly when the values are identical.

    Args:
        value: A parameter or objective value.

    Returns:
        ``float.hex`` of a float, ``repr`` of anything else.
    """
    return value.hex() if isinstance(value, float) else repr(value)


def same_step(a: FrozenTrial | None, b: FrozenTrial | None) -> bool:
    """Whether two trials have the same state, params and values, bit for bit."""

    def key(t: FrozenTrial) -> tuple[str, list[tuple[str, str]], list[str]]:
        params = [(name, exact(value)) for name, value in sorted(t.params.items())]
        return t.state.name, params, [exact(v) for v in t.values or ()]

    return a is not None and b is not None and key(a) == key(b)


def identical_prefix(reference: Sequence[FrozenTrial], other: Sequence[FrozenTrial]) -> int:
    """How many trials, from the first, two trajectories have in common."""
    count = 0
    while count < min(len(reference), len(other)) and same_step(reference[count], other[count]):
        count += 1
    return count


def why_different(trials: Sequence[FrozenTrial], index: int, run: Run) -> str:
    """Say in a few words why the ``index``-th trial of ``run`` is not the reference's."""
    if index >= len(trials):
        return "it has fewer trials"
    trial = trials[index]
    if trial.state != TrialState.COMPLETE:
        return f"trial #{trial.number} was interrupted and is {trial.state.name}, not retried"
    kills = [n for n, o in enumerate(run.outcomes, 1) if o.landed and o.n_trials <= trial.number]
    after = f"after kill {kills[-1]}" if kills else "before any kill"
    for earlier, previous in enumerate(trials[:index]):
        if previous.params == trial.params:
            return f"repeated the params of trial {earlier} {after}"
    return f"proposed other params {after}"


# -- the report -----------------------------------------------------------------------------


def retry_notes(
    trials: Sequence[FrozenTrial], kept: Sequence[FrozenTrial], run: Run
) -> dict[int, str]:
    """Say which interrupted attempts the rows of the resumed trajectory retried.

    Args:
        trials: All trials of the resumed run's study.
        kept: The same without the interrupted attempts.
        run: The resumed run, whose kills tell which signal interrupted which trial.

    Returns:
        A note by row, such as ``retry of #14 (SIGTERM)``.
    """
    kept_numbers = [t.number for t in kept]
    killed_by = {o.cut_off: o.kill.signal.name for o in run.outcomes if o.cut_off is not None}
    attempts: dict[int, list[str]] = {}
    for trial in trials:
        if trial.number not in kept_numbers:
            row = sum(n < trial.number for n in kept_numbers)
            signal_name = killed_by.get(trial.number, "killed")
            attempts.setdefault(row, []).append(f"#{trial.number} ({signal_name})")
    return {row: "retry of " + ", ".join(texts) for row, texts in attempts.items()}


def print_table(
    reference: Sequence[FrozenTrial], resumed: Sequence[FrozenTrial], notes: dict[int, str]
) -> None:
    """Print the reference trajectory, marking each row = or ≠ by the resumed run's trial.

    A row that differs is followed by the resumed run's trial. Tables longer than
    :data:`MAX_ROWS` leave out identical rows in the middle.

    Args:
        reference: The uninterrupted run's trials.
        resumed: The resumed run's trials, without its interrupted attempts.
        notes: Text to show after some rows, by row.
    """
    names = list(dict.fromkeys(name for t in [*reference, *resumed] for name in t.params))
    numeric = [
        all(isinstance(t.params.get(name), (int, float)) for t in reference) for name in names
    ]
    right_aligned = [True, *numeric, False]

    def cells(index: int, trial: FrozenTrial | None) -> list[str]:
        if trial is None:
            return [str(index), *("" for _ in names), "(missing)"]
        params = [trial.params.get(name, "") for name in names]
        shown = [f"{p:.6g}" if isinstance(p, float) else str(p) for p in params]
        value = exact(trial.values[0]) if trial.values else trial.state.name
        return [str(index), *shown, value if value.startswith("-") else " " + value]

    n_rows = max(len(reference), len(resumed))
    pairs = [
        (reference[i] if i < len(reference) else None, resumed[i] if i < len(resumed) else None)
        for i in range(n_rows)
    ]
    header = ["trial", *names, " value (float.hex)"]
    widths = [len(text) for text in header]
    for index, (ref, res) in enumerate(pairs):
        for row in (cells(index, ref), cells(index, res)):
            widths = [max(w, len(text)) for w, text in zip(widths, row, strict=True)]

    def line(texts: Sequence[str], mark: str = " ", note: str = "") -> str:
        columns = zip(texts, widths, right_aligned, strict=True)
        padded = [text.rjust(w) if right else text.ljust(w) for text, w, right in columns]
        return f"{'  '.join(padded)}  {mark:^7}  {note}".rstrip()

    def elision(rows: list[int]) -> str:
        retried = sum(row in notes for row in rows)
        also = f", {retried} of them retried" if retried else ""
        return f"{'⋮':>{widths[0]}}  ({len(rows)} more identical rows{also})"

    print(line(header, "resumed"))
    middle = range(MAX_ROWS * 2 // 3, n_rows - MAX_ROWS // 3) if n_rows > MAX_ROWS else range(0)
    skipped: list[int] = []
    for index, (ref, res) in enumerate(pairs):
        same = same_step(ref, res)
        if same and index in middle:
            skipped.append(index)
            continue
        if skipped:
            print(elision(skipped))
            skipped = []
        print(line(cells(index, ref), "=" if same else "≠", notes.get(index, "")))
        if not same and res is None:
            print(f"{'':{widths[0]}}  ← the resumed run has no such trial")
        elif not same:
            print(line(["", *cells(index, res)[1:]], "", "← the resumed run has this instead"))
    if skipped:
        print(elision(skipped))


# -- the command line -----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="optuna-checkpoint-demo",
        description=(
            "Kill an Optuna study with SIGKILL, SIGTERM and SIGINT (Ctrl-C), resume it each "
            "time, and compare its trials bit for bit with a run that was never interrupted, "
            "with and without CheckpointingSampler."
        ),
    )
    parser.add_argument("--trials", type=int, default=30, help="COMPLETE trials per run (30)")
    parser.add_argument("--kills", type=int, default=4, help="kills per interrupted run (4)")
    parser.add_argument(
        "--sampler", choices=list(SAMPLER_CLASSES), default="tpe", help="sampler (tpe)"
    )
    parser.add_argument("--seed", type=int, default=42, help="the sampler's seed (42)")
    parser.add_argument(
        "--dir", type=Path, help="keep the SQLite files here (default: a temporary directory)"
    )
    parser.add_argument("--worker", metavar="STORAGE", help=argparse.SUPPRESS)
    parser.add_argument("--unwrapped", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.trials < 1 or args.kills < 0:
        parser.error("--trials must be at least 1, and --kills at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the demo or, with the hidden ``--worker`` option, one of its workers.

    Args:
        argv: The arguments, without the program name; ``sys.argv[1:]`` if None.

    Returns:
        0 if the checkpointed run matched the uninterrupted run bit for bit, 1 if not, 2 if the
        demo could not run, 130 if it was interrupted.
    """
    args = parse_args(argv)
    if args.worker is not None:
        return run_worker(args.worker, args.sampler, args.seed, args.trials, not args.unwrapped)
    if not hasattr(signal, "SIGKILL"):
        print(
            "optuna-checkpoint-demo kills processes with POSIX signals: run it on Linux or macOS."
        )
        return 2
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")  # for terminals that cannot show "≠" or "…"
    try:
        if args.dir is not None:
            args.dir.mkdir(parents=True, exist_ok=True)
            return run_demo(args, args.dir.resolve())
        with tempfile.TemporaryDirectory(prefix="optuna-checkpoint-demo-") as directory:
            return run_demo(args, Path(directory))
    except DemoError as e:
        print(f"\nThe demo could not run: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C reaches the worker too, and ends it
        print("\nInterrupted.", file=sys.stderr)
        return 130


def run_demo(args: argparse.Namespace, directory: Path) -> int:
    """Run the three runs in ``directory``, print the comparison and return the exit code."""
    n_trials, n_kills = args.trials, args.kills
    sampler_class = SAMPLER_CLASSES[args.sampler]
    sampler = f"{sampler_class}(seed={args.seed})"
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def new_run(label: str, wrap: bool) -> Run:
        run = Run(label, directory, f"demo-{label}", args.sampler, args.seed, n_trials, wrap)
        run.remove_files()
        return run

    reference = new_run("reference", wrap=True)
    checkpointed = new_run("checkpointed", wrap=True)
    unwrapped = new_run("unwrapped", wrap=False)

    print(f"optuna-checkpoint demo: {n_trials} trials per run, SQLite files in {directory}")
    print(f"  reference:     CheckpointingSampler({sampler}), never interrupted")
    print(f"  checkpointed:  the same script, killed {n_kills} times and run again after each")
    print(f"  unwrapped:     plain {sampler}, killed in the same way (the control)")
    print(flush=True)

    started = time.perf_counter()
    seconds = reference.run_to_end()
    reference.say(f"{n_trials} trials complete in {seconds:.2f} s, never interrupted")
    checkpointed.run(n_kills, random_kills(n_kills, n_trials, seconds))
    kills = [outcome.kill for outcome in checkpointed.outcomes]
    unwrapped.run(len(kills), lambda index, _: kills[index])
    elapsed = time.perf_counter() - started

    expected = reference.trials()
    all_resumed = checkpointed.trials()
    resumed = uninterrupted_trials(
        optuna.load_study(study_name=STUDY_NAME, storage=checkpointed.storage)
    )
    control = [t for t in unwrapped.trials() if t.state.is_finished()]

    print()
    print("The reference run's trials beside the checkpointed run's, compared bit for bit")
    print('(float.hex): = identical params and value, ≠ different. "retry of #n": a kill cut off')
    print("attempt #n of the trial, and the resumed run ran it again.")
    print()
    print_table(expected, resumed, retry_notes(all_resumed, resumed, checkpointed))
    print()

    n = len(expected)
    signals = [o.kill.signal.name for o in checkpointed.outcomes if o.landed]
    if len(signals) > 5:
        signals = [f"{signals.count(name)} {name}" for name in SIGNALS if name in signals]
    kills_text = f"after {sum(o.landed for o in checkpointed.outcomes)} kills"
    kills_text += f" ({', '.join(signals)})" if signals else ""
    n_retried = len(all_resumed) - len(resumed)
    control_label = f"unwrapped {sampler_class}:"
    width = len(control_label) + 2

    def report(label: str, *lines: str) -> None:
        for text in lines:
            print(f"{label:<{width}}{text}")
            label = ""

    same = identical_prefix(expected, resumed)
    ok = same == n == len(resumed)
    if ok:
        report("resumed run:", f"{n}/{n} trials identical to the uninterrupted run, bit for bit,")
    else:
        why = why_different(resumed, same, checkpointed)
        report("resumed run:", f"diverged at trial {same} ({why})", f"{same}/{n} identical")
    report("", f"{kills_text} and {n_retried} retried trials")

    same = identical_prefix(expected, control)
    if same == n == len(control):
        report(control_label, f"{n}/{n} trials identical too")
    else:
        report(
            control_label,
            f"diverged at trial {same} ({why_different(control, same, unwrapped)})",
            f"{same}/{n} identical: a sampler rebuilt from its seed restarts its RNG",
        )
    print(f"\n(ran in {elapsed:.1f} s)", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
