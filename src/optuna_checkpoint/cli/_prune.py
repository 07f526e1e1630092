"""``optuna-checkpoint prune``: delete the checkpoints a retention rule does not keep."""

from __future__ import annotations

from dataclasses import asdict

import click
from rich.progress import Progress
from rich.progress import TaskID

from optuna_checkpoint import Retention
from optuna_checkpoint.cli._common import Problem
from optuna_checkpoint.cli._common import emit_json
from optuna_checkpoint.cli._common import json_option
from optuna_checkpoint.cli._common import open_or_fail
from optuna_checkpoint.cli._common import storage_option
import optuna_checkpoint.cli._render as _render
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import StudyNotFoundError
from optuna_checkpoint.tools._inspect import prune_study


class _StreamProgress:
    """A progress bar on stderr, shown only when the study has several streams."""

    def __init__(self) -> None:
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __call__(self, done: int, total: int) -> None:
        if total < 2:
            return
        if self._bar is None:
            self._bar = Progress(console=_render.make_console(stderr=True), transient=True)
            self._bar.start()
            self._task = self._bar.add_task("pruning streams", total=total)
        assert self._task is not None
        self._bar.update(self._task, completed=done)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


@click.command()
@storage_option
@click.option("--study-name", required=True, metavar="NAME", help="The study to prune.")
@click.option(
    "--keep-last",
    type=int,
    metavar="K",
    help="Keep each stream's newest K trial checkpoints (K >= 2).",
)
@click.option(
    "--keep-every",
    type=int,
    metavar="M",
    help="Keep the checkpoints of every M-th logical trial (logical trial divisible by M).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@json_option
def prune(
    storage: str,
    study_name: str,
    keep_last: int | None,
    keep_every: int | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Delete a study's older checkpoints, keeping what --keep-last and --keep-every say.

    Give either option or both. Each stream's initial checkpoint and newest two are always
    kept (a resume needs them), so this is safe while workers run; checkpoints of interrupted
    trials are left alone. Not supported for JournalStorage, whose side record is append-only.
    """
    if keep_last is None and keep_every is None:
        raise click.UsageError("give --keep-last, --keep-every, or both")
    try:
        retention = Retention(keep_last=keep_last, keep_every=keep_every)
    except ValueError as e:
        hint = "--keep-last" if "keep_last" in str(e) else "--keep-every"
        raise click.BadParameter(str(e), param_hint=hint) from e
    opened = open_or_fail(storage, as_json=as_json)
    progress = _StreamProgress()
    try:
        report = prune_study(opened, study_name, retention, dry_run=dry_run, on_progress=progress)
    except (StudyNotFoundError, CheckpointError) as e:
        raise Problem(str(e), as_json=as_json) from e
    finally:
        progress.stop()
    if as_json:
        emit_json({**asdict(report), "deleted": report.deleted})
    else:
        _render.pruned(_render.make_console(), report)
