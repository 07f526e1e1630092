"""``optuna-checkpoint verify``: check every checkpoint, and replay the sampler when given."""

from __future__ import annotations

import click
import optuna
from rich.progress import Progress

from optuna_checkpoint.cli._common import PROBLEM
from optuna_checkpoint.cli._common import Problem
from optuna_checkpoint.cli._common import emit_json
from optuna_checkpoint.cli._common import json_option
from optuna_checkpoint.cli._common import load_sampler
from optuna_checkpoint.cli._common import open_or_fail
from optuna_checkpoint.cli._common import storage_option
import optuna_checkpoint.cli._render as _render
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.tools._verify import verify as verify_study


@click.command()
@storage_option
@click.option("--study-name", required=True, metavar="NAME", help="The study to verify.")
@click.option(
    "--sampler",
    "sampler_spec",
    metavar="SPEC",
    help="The sampler the study's CheckpointingSampler wraps, constructed as in the study's "
    "script: an expression such as 'TPESampler(seed=42)', or module:factory. Without it, only "
    "the checkpoints' integrity is checked.",
)
@click.option(
    "--allow-pickle",
    is_flag=True,
    help="Load checkpoints that hold pickles (runs code from the database: only if you trust "
    "every writer of it).",
)
@json_option
def verify(
    storage: str, study_name: str, sampler_spec: str | None, allow_pickle: bool, as_json: bool
) -> None:
    """Check every checkpoint of a study, that none is missing, and replay its sampler.

    Each checkpoint's seal is checked (its signature, when the environment variable
    OPTUNA_CHECKPOINT_SIGNING_KEY holds the key), and its payload decoded. A finished trial
    newer than its stream's newest checkpoint and without one of its own is reported as a
    missing checkpoint. With --sampler, the sampler is replayed over the recorded trials: a
    stream from its first checkpoint in the order of the uninterrupted run, or, in a study run
    with deterministic_workers, every position with its own random streams and fixed history.
    Every parameter must come out bit for bit as recorded, and the state after every trial
    must equal its checkpoint. The first line is the verdict and its reason; the details
    follow. Exits with 0 when everything checks out, 1 otherwise.
    """
    sampler = None if sampler_spec is None else load_sampler(sampler_spec)
    opened = open_or_fail(storage, as_json=as_json)
    try:
        study = optuna.load_study(study_name=study_name, storage=opened)
    except KeyError as e:
        raise Problem(f"the storage has no study named {study_name!r}", as_json=as_json) from e
    console = _render.make_console(stderr=True)
    with Progress(console=console, transient=True, disable=as_json) as bar:
        task = bar.add_task("replaying trials", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            report = verify_study(study, sampler, allow_pickle=allow_pickle, progress=progress)
        except (CheckpointError, ValueError) as e:  # ValueError: a key too short
            raise Problem(str(e), as_json=as_json) from e
    if as_json:
        emit_json(report.to_dict())
    else:
        _render.verification(_render.make_console(), report)
    if not report.ok:
        raise SystemExit(PROBLEM)
