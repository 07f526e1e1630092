"""``optuna-checkpoint status``: the studies of a storage, or one study in detail."""

from __future__ import annotations

from dataclasses import asdict

import click

from optuna_checkpoint.cli._common import Problem
from optuna_checkpoint.cli._common import emit_json
from optuna_checkpoint.cli._common import json_option
from optuna_checkpoint.cli._common import open_or_fail
from optuna_checkpoint.cli._common import storage_option
import optuna_checkpoint.cli._render as _render
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.tools._inspect import list_studies
from optuna_checkpoint.tools._inspect import study_status


@click.command()
@storage_option
@click.option("--study-name", metavar="NAME", help="Show this study in detail.")
@json_option
def status(storage: str, study_name: str | None, as_json: bool) -> None:
    """Show the checkpoints of every study in the storage, or of one study in detail.

    In detail: each checkpoint stream (worker) with its lease, size and newest checkpoint, the
    interrupted trials, and whether a resume would be bit-identical, with the reasons if not.
    Exits with 1 if the study does not exist.
    """
    opened = open_or_fail(storage, as_json=as_json)
    try:
        if study_name is None:
            found = list_studies(opened)
            if as_json:
                emit_json({"studies": [asdict(s) for s in found]})
            else:
                _render.studies(_render.make_console(), found)
            return
        report = study_status(opened, study_name)
    except CheckpointError as e:  # no such study; tables of a newer format
        raise Problem(str(e), as_json=as_json) from e
    if as_json:
        emit_json(asdict(report))
    else:
        _render.status(_render.make_console(), report)
