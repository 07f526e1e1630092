"""Comparing two trajectories bit for bit, saying where and why they part; counting steps.

The steps are those of the objective's training that a kill made a run begin again.
"""

from __future__ import annotations

from collections.abc import Sequence

from optuna.trial import FrozenTrial

from optuna_checkpoint.demo._run import Run
from optuna_checkpoint.demo._worker import FINISHED


def exact(value: object) -> str:
    """Spell a value so that two spellings are equal exactly when the values are identical.

    Args:
        value: A parameter or objective value.

    Returns:
        ``float.hex`` of a float, ``repr`` of anything else.
    """
    return value.hex() if isinstance(value, float) else repr(value)


def same_step(a: FrozenTrial | None, b: FrozenTrial | None) -> bool:
    """Whether two trials match bit for bit: state, params, values and intermediate values."""

    def key(t: FrozenTrial) -> tuple[str, list[tuple[str, str]], list[str], list[str]]:
        params = [(name, exact(value)) for name, value in sorted(t.params.items())]
        reported = [f"{step} {exact(v)}" for step, v in sorted(t.intermediate_values.items())]
        return t.state.name, params, [exact(v) for v in t.values or ()], reported

    return a is not None and b is not None and key(a) == key(b)


def identical_prefix(reference: Sequence[FrozenTrial], other: Sequence[FrozenTrial]) -> int:
    """How many trials, from the first, two trajectories have in common."""
    count = 0
    while count < min(len(reference), len(other)) and same_step(reference[count], other[count]):
        count += 1
    return count


def why_different(
    expected: Sequence[FrozenTrial], trials: Sequence[FrozenTrial], index: int, run: Run
) -> str:
    """Say in a few words why the ``index``-th trial of ``run`` is not the reference's.

    Args:
        expected: The reference's trials.
        trials: The run's trials.
        index: The first logical trial where they differ.
        run: The run, whose kills say when its trials ran.

    Returns:
        For example ``repeated the params of logical trial 0 after kill 1``.
    """
    if index >= len(trials):
        return "it has fewer trials"
    trial = trials[index]
    if trial.state not in FINISHED:
        return f"trial {trial.number} was interrupted and is {trial.state.name}, not retried"
    if index < len(expected) and trial.params == expected[index].params:
        return "the same params, but another state, value or intermediate values"
    kills = [n for n, o in enumerate(run.outcomes, 1) if o.landed and o.n_trials <= trial.number]
    after = f"after kill {kills[-1]}" if kills else "before any kill"
    for earlier, previous in enumerate(trials[:index]):
        if previous.params == trial.params:
            return f"repeated the params of logical trial {earlier} {after}"
    return f"proposed other params {after}"


def retry_notes(
    trials: Sequence[FrozenTrial], kept: Sequence[FrozenTrial], run: Run
) -> dict[int, str]:
    """Say which interrupted attempts the rows of the resumed trajectory retried.

    A row is a logical trial; its note names trials by their stored numbers, as Optuna's log
    and the library's resume line do.

    Args:
        trials: All trials of the resumed run's study.
        kept: The same without the interrupted attempts.
        run: The resumed run, whose kills tell which signal interrupted which trial.

    Returns:
        A note by row, such as ``trial 15 retries trial 14 (SIGTERM)``.
    """
    kept_numbers = [t.number for t in kept]
    killed_by = {o.cut_off: o.kill.signal.name for o in run.outcomes if o.cut_off is not None}
    attempts: dict[int, list[str]] = {}
    for trial in trials:
        if trial.number not in kept_numbers:
            row = sum(n < trial.number for n in kept_numbers)
            signal_name = killed_by.get(trial.number, "killed")
            attempts.setdefault(row, []).append(f"{trial.number} ({signal_name})")
    notes = {}
    for row, texts in attempts.items():
        attempted = f"trial{'s' if len(texts) > 1 else ''} {', '.join(texts)}"
        if row < len(kept_numbers):
            notes[row] = f"trial {kept_numbers[row]} retries {attempted}"
        else:
            notes[row] = f"{attempted}, not retried"
    return notes


def steps_run_again(run: Run, trajectory: Sequence[FrozenTrial]) -> int:
    """Count the training steps a run began beyond those its trajectory needed.

    Each trial of the trajectory reported one intermediate value per step it needed (a retry
    reports again those of the attempt it resumes). Every other step the workers began was work
    that a kill threw away, and that was run again: in a resumed run, the steps after a
    trial's last save; without ``trial_checkpoint``, every step of a cut-off trial.

    Args:
        run: The run, whose workers logged each step they began.
        trajectory: Its finished trials, without the interrupted attempts.

    Returns:
        The number of steps begun beyond the trajectory's.
    """
    needed = sum(len(trial.intermediate_values) for trial in trajectory)
    return len(run.logged_steps()) - needed
