"""``optuna-checkpoint export`` and ``import``: carry a study's checkpoints to a copy of it."""

from __future__ import annotations

from dataclasses import asdict
import json
import os
from pathlib import Path
import tempfile
from typing import IO
from typing import Any

import click

from optuna_checkpoint.cli._common import Problem
from optuna_checkpoint.cli._common import emit_json
from optuna_checkpoint.cli._common import json_option
from optuna_checkpoint.cli._common import open_or_fail
from optuna_checkpoint.cli._common import storage_option
import optuna_checkpoint.cli._render as _render
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import StudyNotFoundError
from optuna_checkpoint.tools._transfer import export_checkpoints
from optuna_checkpoint.tools._transfer import import_checkpoints


_KEY_NOTE = (
    "If the checkpoints are signed, the key is read from the environment variable "
    "OPTUNA_CHECKPOINT_SIGNING_KEY, and only from there: a key on the command line would show "
    "in process lists."
)


@click.command(epilog=_KEY_NOTE)
@storage_option
@click.option("--study-name", required=True, metavar="NAME", help="The study to export.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    metavar="FILE",
    help="Write the export to FILE (replaced only once the export is complete); default: "
    "standard output.",
)
def export(storage: str, study_name: str, output: Path | None) -> None:
    """Write a study's checkpoints as one JSON document, for a copy of the study.

    optuna.copy_study copies the trials but not the checkpoints. Copy the study, export its
    checkpoints from the original, and import them into the copy: a worker resumed on the copy
    then continues the original's trajectory exactly. Every checkpoint is checked (its
    signature, with a key) before it is exported, and sealed again so that the import can check
    it in the other storage.
    """
    opened = open_or_fail(storage, as_json=False)
    try:
        document = export_checkpoints(opened, study_name)
    except (CheckpointError, ValueError) as e:  # ValueError: a signing key that is too short
        raise Problem(str(e)) from e
    if output is None:
        click.echo(json.dumps(document))
        return
    try:
        _write_atomically(output, document)
    except OSError as e:
        raise Problem(f"cannot write {output}: {e}") from e
    streams = document["streams"]
    checkpoints = sum(len(s["checkpoints"]) for s in streams)
    click.echo(
        f"Exported {checkpoints} checkpoint(s) in {len(streams)} stream(s) of study "
        f"{study_name!r} to {output}.",
        err=True,  # stdout stays free for the document's readers
    )


@click.command("import", epilog=_KEY_NOTE)
@storage_option
@click.option(
    "--study-name",
    required=True,
    metavar="NAME",
    help="The study that receives the checkpoints: a copy of the exported study made with "
    "optuna.copy_study, without checkpoints of its own.",
)
@click.option(
    "--input",
    "source",
    required=True,
    type=click.File("r", encoding="utf-8"),
    metavar="FILE",
    help="The export to import ('-' for standard input).",
)
@json_option
def import_(storage: str, study_name: str, source: IO[str], as_json: bool) -> None:
    """Plant exported checkpoints into a copy of the study, made with optuna.copy_study.

    The study must hold the exported study's trials under the same numbers (optuna.copy_study
    makes it so) and have no checkpoint stream yet. The whole export is checked first (every
    checkpoint's seal or signature, and that every trial it names exists), and nothing is
    written unless all of it passes.
    """
    try:
        document: Any = json.load(source)
    except (ValueError, UnicodeDecodeError) as e:
        raise Problem(f"{source.name} is not a JSON document: {e}", as_json=as_json) from e
    opened = open_or_fail(storage, as_json=as_json)
    try:
        report = import_checkpoints(opened, study_name, document)
    except (StudyNotFoundError, CheckpointError, ValueError) as e:
        raise Problem(str(e), as_json=as_json) from e
    if as_json:
        emit_json(asdict(report))
    else:
        _render.imported(_render.make_console(), report)


def _write_atomically(path: Path, document: Any) -> None:
    """Write ``document`` to ``path`` so that a failure never leaves half a file there."""
    directory = path.parent
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(document, f)
            f.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
