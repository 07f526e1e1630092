"""The side-by-side table: the reference trajectory, row by row against the resumed run's."""

from __future__ import annotations

from collections.abc import Sequence

from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_checkpoint.demo._compare import exact
from optuna_checkpoint.demo._compare import same_step


MAX_ROWS = 30
"""Longer tables show only their first and last rows, and every row that differs."""


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
        if trial.state == TrialState.PRUNED and trial.intermediate_values:
            # Its value is the last intermediate value; the step says where the pruner stopped it.
            value = f"PRUNED at step {max(trial.intermediate_values)}"
        else:
            value = exact(trial.values[0]) if trial.values else trial.state.name
        return [str(index), *shown, value if value.startswith("-") else " " + value]

    n_rows = max(len(reference), len(resumed))
    pairs = [
        (reference[i] if i < len(reference) else None, resumed[i] if i < len(resumed) else None)
        for i in range(n_rows)
    ]
    header = ["logical trial", *names, " value (float.hex)"]
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
