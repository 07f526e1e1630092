"""``optuna-checkpoint fork`` and ``rewind``: a new study that continues from an earlier trial."""

from __future__ import annotations

from dataclasses import asdict

import click
import optuna

from optuna_checkpoint.cli._common import Problem
from optuna_checkpoint.cli._common import emit_json
from optuna_checkpoint.cli._common import json_option
from optuna_checkpoint.cli._common import load_sampler
from optuna_checkpoint.cli._common import open_or_fail
from optuna_checkpoint.cli._common import storage_option
import optuna_checkpoint.cli._render as _render
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.tools._fork import fork_study


_SAMPLER_HELP = (
    "The sampler the study's CheckpointingSampler wraps, constructed as in the study's script: "
    "an expression such as 'TPESampler(seed=42)', or module:factory."
)
_PICKLE_HELP = (
    "Load a checkpoint that holds pickles (runs code from the database: only if you trust "
    "every writer of it)."
)


def _fork(
    storage: str,
    study_name: str,
    trial: int,
    sampler_spec: str,
    new_name: str,
    to_storage: str | None,
    allow_pickle: bool,
    as_json: bool,
) -> None:
    sampler = load_sampler(sampler_spec)
    opened = open_or_fail(storage, as_json=as_json)
    try:
        study = optuna.load_study(study_name=study_name, storage=opened)
    except KeyError as e:
        raise Problem(f"the storage has no study named {study_name!r}", as_json=as_json) from e
    # The destination is written, so a new SQLite file is created there; opened after the
    # source, so a mistyped source leaves no file behind.
    target = (
        None
        if to_storage is None
        else open_or_fail(to_storage, as_json=as_json, option="--to-storage", create=True)
    )
    try:
        report = fork_study(
            study,
            sampler,
            at_trial=trial,
            to_study_name=new_name,
            to_storage=target,
            allow_pickle=allow_pickle,
        )
    except (CheckpointError, ValueError) as e:  # ValueError: a key too short
        raise Problem(str(e), as_json=as_json) from e
    if as_json:
        emit_json(asdict(report))
    else:
        _render.forked(_render.make_console(), report, to_storage or storage)


@click.command()
@storage_option
@click.option("--study-name", required=True, metavar="NAME", help="The study to fork.")
@click.option("--at-trial", required=True, type=int, metavar="K", help="Continue after trial K.")
@click.option("--sampler", "sampler_spec", required=True, metavar="SPEC", help=_SAMPLER_HELP)
@click.option("--to-study-name", required=True, metavar="NEW", help="The new study's name.")
@click.option(
    "--to-storage", metavar="URL", help="Create the new study there (default: --storage)."
)
@click.option("--allow-pickle", is_flag=True, help=_PICKLE_HELP)
@json_option
def fork(
    storage: str,
    study_name: str,
    at_trial: int,
    sampler_spec: str,
    to_study_name: str,
    to_storage: str | None,
    allow_pickle: bool,
    as_json: bool,
) -> None:
    """Create a study that continues from trial K of another, with the sampler's state there.

    The new study gets the trials of the uninterrupted run up to trial K and a checkpoint
    holding the sampler's state after it; run with the same sampler, it proposes what the
    original proposed next. Trial K must have a checkpoint (see prune).
    """
    _fork(
        storage,
        study_name,
        at_trial,
        sampler_spec,
        to_study_name,
        to_storage,
        allow_pickle,
        as_json,
    )


@click.command()
@storage_option
@click.option("--study-name", required=True, metavar="NAME", help="The study to rewind.")
@click.option("--to-trial", required=True, type=int, metavar="K", help="Go back to trial K.")
@click.option("--sampler", "sampler_spec", required=True, metavar="SPEC", help=_SAMPLER_HELP)
@click.option(
    "--as", "new_name", metavar="NEW", help="The rewound study's name (default: NAME@K)."
)
@click.option("--allow-pickle", is_flag=True, help=_PICKLE_HELP)
@json_option
def rewind(
    storage: str,
    study_name: str,
    to_trial: int,
    sampler_spec: str,
    new_name: str | None,
    allow_pickle: bool,
    as_json: bool,
) -> None:
    """Rewind a study to trial K, as a new study beside it; the original is left untouched.

    Optuna cannot delete trials, so the study as it was at trial K is created under a new name
    in the same storage (a fork there).
    """
    name = new_name or f"{study_name}@{to_trial}"
    _fork(storage, study_name, to_trial, sampler_spec, name, None, allow_pickle, as_json)
