"""Rich tables for the verbs' reports, printed to stdout."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from optuna_checkpoint.tools._inspect import PruneReport
from optuna_checkpoint.tools._inspect import StreamStatus
from optuna_checkpoint.tools._inspect import StudyStatus
from optuna_checkpoint.tools._inspect import StudySummary
from optuna_checkpoint.tools._transfer import ImportReport
from optuna_checkpoint.tools._verify import VerificationReport


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
    return f"{stream.newest_trial_number} (logical {stream.newest_logical_number})"


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
        table = Table(title="Interrupted trials (hidden and retried)")
        table.add_column("trial", justify="right")
        table.add_column("logical", justify="right")
        table.add_column("stream")
        table.add_column("reason")
        for i in report.interrupted:
            table.add_row(
                str(i.number), str(i.logical_number), Text(i.stream or "-"), Text(i.reason)
            )
        console.print(table)
    if report.resume_exact:
        console.print("Resume: exact (bit-identical), as far as checked here.")
    else:
        console.print("Resume: not guaranteed bit-identical:")
        for reason in report.reasons:
            console.print(Text(f"  - {reason}"))


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
