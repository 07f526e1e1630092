"""The demo proper: its three runs, the table comparing them, and the verdict."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path
import time

import optuna
from optuna.trial import FrozenTrial

from optuna_checkpoint import uninterrupted_trials
from optuna_checkpoint.demo._compare import identical_prefix
from optuna_checkpoint.demo._compare import retry_notes
from optuna_checkpoint.demo._compare import steps_run_again
from optuna_checkpoint.demo._compare import why_different
from optuna_checkpoint.demo._run import Run
from optuna_checkpoint.demo._run import kills_summary
from optuna_checkpoint.demo._run import random_kills
from optuna_checkpoint.demo._table import print_table
from optuna_checkpoint.demo._worker import FINISHED
from optuna_checkpoint.demo._worker import SAMPLER_CLASSES
from optuna_checkpoint.demo._worker import STEPS


def run_demo(sampler_name: str, seed: int, n_trials: int, n_kills: int, directory: Path) -> int:
    """Run the three runs in ``directory``, print the comparison and return the exit code.

    Args:
        sampler_name: The sampler to use, a key of :data:`SAMPLER_CLASSES`.
        seed: The sampler's seed.
        n_trials: How many finished (COMPLETE or PRUNED) trials each run ends with.
        n_kills: How many times the interrupted runs are killed.
        directory: Where the runs' SQLite files and logs go.

    Returns:
        0 if the checkpointed run matched the uninterrupted run bit for bit and redid at most
        one training step per kill, 1 if not.
    """
    sampler_class = SAMPLER_CLASSES[sampler_name]
    sampler = f"{sampler_class}(seed={seed})"
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def new_run(label: str, wrap: bool) -> Run:
        run = Run(label, directory, f"demo-{label}", sampler_name, seed, n_trials, wrap)
        run.remove_files()
        return run

    reference = new_run("reference", wrap=True)
    checkpointed = new_run("checkpointed", wrap=True)
    unwrapped = new_run("unwrapped", wrap=False)

    print(f"optuna-checkpoint demo: {n_trials} trials per run, SQLite files in {directory}")
    print(f"  reference:     CheckpointingSampler({sampler}), never interrupted")
    print(
        f"  checkpointed:  the same script, killed up to {n_kills} times at random instants "
        "and run again after each"
    )
    print(f"  unwrapped:     plain {sampler}, killed in the same way (the control)")
    print(f"Each trial trains a small numpy model for {STEPS} steps and reports each step to a")
    print("MedianPruner. With CheckpointingSampler it saves its state after each step with")
    print("trial_checkpoint, so the retry of a trial cut off mid-training resumes at its last")
    print("save; plain Optuna does not retry a cut-off trial.")
    print(flush=True)

    started = time.perf_counter()
    seconds = reference.run_to_end()
    reference.say(f"{n_trials} trials finished in {seconds:.2f} s, never interrupted")
    checkpointed.run(n_kills, random_kills(n_kills, n_trials, seconds))
    kills = [outcome.kill for outcome in checkpointed.outcomes]
    unwrapped.run(len(kills), lambda index, _: kills[index])
    elapsed = time.perf_counter() - started

    expected = reference.trials()
    all_resumed = checkpointed.trials()
    resumed = uninterrupted_trials(checkpointed.study())

    print()
    print("The reference run's trials beside the checkpointed run's, compared bit for bit")
    print("(float.hex): = identical params, value and intermediate values, ≠ different. Rows")
    print("are logical trials: a trial's place in the run that was never interrupted. \"trial m")
    print('retries trial n": a kill cut off trial n of the checkpointed run, and its trial m ran')
    print("that logical trial again (trial numbers as Optuna stores and logs them).")
    print()
    print_table(expected, resumed, retry_notes(all_resumed, resumed, checkpointed))
    print()

    ok = print_verdict(
        expected, all_resumed, resumed, checkpointed, unwrapped, sampler_class, n_kills
    )
    print(f"\n(ran in {elapsed:.1f} s)", flush=True)
    return 0 if ok else 1


def print_verdict(
    expected: Sequence[FrozenTrial],
    all_resumed: Sequence[FrozenTrial],
    resumed: Sequence[FrozenTrial],
    checkpointed: Run,
    unwrapped: Run,
    sampler_class: str,
    n_kills: int,
) -> bool:
    """Say whether each interrupted run followed the reference, and how many steps it redid.

    Where a run parted from the reference, say where and why.

    Args:
        expected: The reference run's trials.
        all_resumed: All trials of the checkpointed run's study.
        resumed: The same without the interrupted attempts.
        checkpointed: The run with CheckpointingSampler, killed.
        unwrapped: The run with the plain sampler, killed in the same way.
        sampler_class: The plain sampler's class name.
        n_kills: How many kills were planned.

    Returns:
        Whether the checkpointed run is identical to the reference and redid at most one
        training step per kill.
    """
    control = [t for t in unwrapped.trials() if t.state.is_finished()]
    n = len(expected)
    n_retried = len(all_resumed) - len(resumed)
    control_label = f"unwrapped {sampler_class}:"
    width = len(control_label) + 2

    def report(label: str, *lines: str) -> None:
        for text in lines:
            print(f"{label:<{width}}{text}")
            label = ""

    same = identical_prefix(expected, resumed)
    ok = same == n == len(resumed)
    kills = kills_summary(checkpointed.outcomes, n_kills)
    after = f"after {kills} and {n_retried} retried trial{'' if n_retried == 1 else 's'}"
    if ok:
        report(
            "resumed run:",
            f"{n}/{n} trials identical to the uninterrupted run, bit for bit,",
            f"intermediate values included, {after}",
        )
    else:
        why = why_different(expected, resumed, same, checkpointed)
        report(
            "resumed run:",
            f"diverged at logical trial {same} ({why})",
            f"{same}/{n} identical, {after}",
        )

    same = identical_prefix(expected, control)
    if same == n == len(control):
        report(control_label, f"{n}/{n} trials identical too")
    else:
        why = why_different(expected, control, same, unwrapped)
        report(
            control_label,
            f"diverged at logical trial {same} ({why})",
            f"{same}/{n} identical: a sampler rebuilt from its seed restarts its RNG",
        )
    return print_steps_redone(checkpointed, resumed, unwrapped, report) and ok


def print_steps_redone(
    checkpointed: Run,
    resumed: Sequence[FrozenTrial],
    unwrapped: Run,
    report: Callable[..., None],
) -> bool:
    """Say how many training steps the kills made each interrupted run do again.

    Args:
        checkpointed: The run with CheckpointingSampler and trial_checkpoint, killed.
        resumed: Its trials without the interrupted attempts.
        unwrapped: The run with the plain sampler, killed in the same way.
        report: Prints a label and its lines.

    Returns:
        Whether the resumed run redid at most one step per kill, as trial_checkpoint promises.
    """
    landed = sum(outcome.landed for outcome in checkpointed.outcomes)
    redone = steps_run_again(checkpointed, resumed)
    within = redone <= landed
    how = (
        "at most 1 per kill: each retry resumed at its trial's last save"
        if within
        else "more than 1 per kill: a retry did not resume at its trial's last save"
    )
    control = [t for t in unwrapped.trials() if t.state in FINISHED]
    lost = steps_run_again(unwrapped, control)
    report(
        "steps redone:",
        f"{redone} in the resumed run ({how})",
        f"{lost} in the unwrapped run (every step of its cut-off trials, which are not retried)",
    )
    return within
