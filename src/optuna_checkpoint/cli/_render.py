"""Rich tables for the verbs' reports, printed to stdout, and the consoles they print on."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from optuna_checkpoint.tools._fork import ForkReport
from optuna_checkpoint.tools._inspect import InterruptedTrial
from optuna_checkpoint.tools._inspect import PruneReport
from optuna_checkpoint.tools._inspect import StreamStatus
from optuna_checkpoint.tools._inspect import StudyStatus
from optuna_checkpoint.tools._inspect import StudySummary
from optuna_checkpoint.tools._transfer import ImportReport
from optuna_checkpoint.tools._verify import VerificationReport


_UNBOUNDED_WIDTH = 100_000
"""The width of a console that is not a terminal: wider than any line a report prints."""


def make_console(*, stderr: bool = False) -> Console:
    """The console a verb prints on: stdout, or stderr for progress bars.

    On a terminal, rich fits tables to the window. Anywhere else (a pipe, a file, a test
    runner) rich would assume 80 columns and cut or wrap the cells of wider tables; there is no
    window to fit there, so tables take the width of their content and no line is wrapped.
    """
    on_terminal = Console(stderr=stderr)
    if on_terminal.is_terminal:
        return on_terminal
    return Console(stderr=stderr, width=_UNBOUNDED_WIDTH)


def size(n: int) -> str:
    """A byte count for people: ``512 B``, ``5.6 KB``, ``12.0 MB``."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def age(seconds: float) -> str:
    """A duration for people: ``42 s``, ``7 min``, ``3.5 h``, ``2.0 d``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def studies(console: Console, found: list[StudySummary]) -> None:
    """One row per study of the storage."""
    if not found:
        console.print("The storage has no study.")
        return
    table = Table(title="Studies")
    table.add_column("study")
    for name in ("trials", "streams", "checkpoints", "size"):
        table.add_column(name, justify="right")
    for s in found:
        table.add_row(
            Text(s.study_name),
            str(s.trials),
            str(s.streams),
            str(s.checkpoints),
            size(s.payload_bytes),
        )
    console.print(table)


def _owner(stream: StreamStatus) -> Text:
    if stream.owner_host is None:
        return Text("released")
    state = "live" if stream.lease_alive else "gone"
    return Text(f"pid {stream.owner_pid} on {stream.owner_host} ({state})")


def _newest(stream: StreamStatus) -> str:
    if stream.newest_trial_number is None:
        return "initial" if stream.checkpoints else "none"
    if stream.newest_logical_number == stream.newest_trial_number:
        return str(stream.newest_trial_number)
    return f"{stream.newest_trial_number} (logical trial {stream.newest_logical_number})"


def _interrupted(title: str, trials: list[InterruptedTrial], unknown_stream: str = "-") -> Table:
    """Interrupted trials: the trial (stored number), the logical trial its retry takes, why."""
    table = Table(title=title)
    table.add_column("trial", justify="right")
    table.add_column("logical\ntrial", justify="right")
    table.add_column("stream")
    table.add_column("why")
    for i in trials:
        stream = Text(i.stream or unknown_stream)
        table.add_row(str(i.number), str(i.logical_number), stream, Text(i.reason))
    return table


def status(console: Console, report: StudyStatus) -> None:
    """A study's streams, interrupted trials, and the verdict on its resume."""
    console.print(Text(f"Study {report.study_name!r}: {report.trials} trials"))
    if report.streams:
        table = Table(title="Checkpoint streams")
        table.add_column("stream", min_width=6)
        table.add_column("owner", min_width=12)  # the column that wraps on a narrow terminal
        for name in ("heart-\nbeat", "first\ntrial", "check-\npoints", "size", "newest\ntrial"):
            table.add_column(name, justify="right", no_wrap=True)
        for s in report.streams:
            table.add_row(
                Text(s.name),
                _owner(s),
                f"{age(s.heartbeat_age)} ago",
                str(s.first_trial_number),
                str(s.checkpoints),
                size(s.payload_bytes),
                _newest(s),
            )
        console.print(table)
    else:
        console.print("No checkpoint stream.")
    if report.interrupted:
        console.print(_interrupted("Interrupted trials (hidden and retried)", report.interrupted))
    if report.to_retry:
        table = _interrupted("Trials a re-run will retry", report.to_retry, "first to resume")
        console.print(table)
        console.print(
            "The next run takes them for interrupted, hides them and retries each at its "
            "logical trial."
        )
    if report.trial_states:
        console.print(_trial_states(report))
    start = report.checkpointed_from
    if start:
        console.print(
            Text(
                f"Trials 0 to {start - 1} ran without optuna-checkpoint: the guarantee holds "
                f"from trial {start} on, which is where a resume reproduces the run."
            )
        )
    if report.resume_exact:
        console.print("Resume: exact (bit-identical), as far as checked here.")
    else:
        console.print("Resume: not guaranteed bit-identical:")
        for reason in report.reasons:
            console.print(Text(f"  - {reason}"))


_KEPT_FOR = {
    "running": "its trial is running",
    "retry": "the retry of its trial loads it",
    "kept": "kept (keep_trial_checkpoints)",
}


def _trial_states(report: StudyStatus) -> Table:
    states = report.trial_states
    total = size(sum(s.payload_bytes for s in states))
    table = Table(title=f"Trial states saved with trial_checkpoint ({len(states)}, {total})")
    table.add_column("logical trial", justify="right")
    table.add_column("saved by trial", justify="right")
    table.add_column("size", justify="right")
    table.add_column("why it is kept")
    for s in states:
        table.add_row(
            str(s.logical_trial), str(s.saved_by), size(s.payload_bytes), _KEPT_FOR[s.kept_for]
        )
    return table


def pruned(console: Console, report: PruneReport) -> None:
    """Checkpoints deleted per stream."""
    if not report.streams:
        console.print(Text(f"Study {report.study_name!r} has no checkpoint stream."))
        return
    verb = "would delete" if report.dry_run else "deleted"
    table = Table(title=f"Pruned study {report.study_name!r}" + (" (dry run)" * report.dry_run))
    table.add_column("stream")
    table.add_column("checkpoints", justify="right")
    table.add_column(verb, justify="right")
    table.add_column("kept", justify="right")
    for s in report.streams:
        table.add_row(
            Text(s.name), str(s.checkpoints), str(s.deleted), str(s.checkpoints - s.deleted)
        )
    console.print(table)
    console.print(f"{verb.capitalize()} {report.deleted} checkpoints in all.")


def verification(console: Console, report: VerificationReport) -> None:
    """The verdict and its reason on the first line, then the details, each once."""
    style = {"verified": "bold green", "NOT verified": "bold red"}.get(report.verdict, "bold")
    console.print(Text.assemble((report.verdict, style), f": {report.reason}"), soft_wrap=True)
    for line in report.details():
        console.print(Text(line, style="dim" if line.startswith("Note: ") else ""), soft_wrap=True)


def imported(console: Console, report: ImportReport) -> None:
    """What an import wrote into the study."""
    console.print(
        Text(
            f"Imported into study {report.study_name!r}: {report.streams} stream(s) with "
            f"{report.checkpoints} checkpoint(s), {report.interruptions} interrupted trial(s), "
            f"{report.claims} claimed trial(s)."
        )
    )
    console.print("A worker resumed on this study continues the exported trajectory.")


def forked(console: Console, report: ForkReport, storage: str) -> None:
    """What a fork created, in both numberings, and how to continue it."""
    last = report.trials_copied - 1  # the logical trial of the one forked at
    copied = (
        "logical trial 0, numbered 0"
        if last == 0
        else f"{report.trials_copied} logical trials 0 to {last}, numbered 0 to {last}"
    )
    console.print(
        Text(
            f"Created study {report.study_name!r} from study {report.source_study!r} up to its "
            f"trial {report.at_trial} (logical trial {last}): its {copied} in the new study, "
            "and the sampler's state after them."
        )
    )
    worker = "" if report.stream == "main" else f", worker_id={report.stream!r}"
    console.print(
        Text(
            f"Continue it with study_name={report.study_name!r}, storage={storage!r} and "
            f"CheckpointingSampler(<the same sampler>{worker}): it proposes what "
            f"{report.source_study!r} proposed after its trial {report.at_trial}."
        )
    )
