"""``optuna-checkpoint rekey``: re-sign a study under a new key, both read from the environment."""

from __future__ import annotations

from dataclasses import asdict
import os

import click

from optuna_checkpoint.cli._common import Problem
from optuna_checkpoint.cli._common import emit_json
from optuna_checkpoint.cli._common import json_option
from optuna_checkpoint.cli._common import open_or_fail
from optuna_checkpoint.cli._common import storage_option
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.tools._rekey import NEW_KEY_ENV
from optuna_checkpoint.tools._rekey import OLD_KEY_ENV
from optuna_checkpoint.tools._rekey import rekey_study


_KEYS_NOTE = (
    f"The keys are read from the environment, and only from there (a key on the command line "
    f"would show in process lists): the current one from {OLD_KEY_ENV} (unset: the study is "
    f"unsigned), the new one from {NEW_KEY_ENV}."
)


@click.command(epilog=_KEYS_NOTE)
@storage_option
@click.option("--study-name", required=True, metavar="NAME", help="The study to re-sign.")
@click.option(
    "--unsigned",
    is_flag=True,
    help=f"Seal the study without a key (turn signing off) instead of reading {NEW_KEY_ENV}.",
)
@json_option
def rekey(storage: str, study_name: str, unsigned: bool, as_json: bool) -> None:
    """Re-sign a study's checkpoints and records under a new signing key.

    Every checkpoint, record of an interrupted or claimed trial and saved trial state is checked
    under the current key and sealed again under the new one; if one fails, nothing is changed.
    On SQL storages it is one transaction. Stop the study's workers first, and start them again
    with the new key. To turn signing on for an unsigned study, leave the current key unset.
    """
    old_key = os.environ.get(OLD_KEY_ENV) or None
    new_key = os.environ.get(NEW_KEY_ENV) or None
    if unsigned and new_key is not None:
        raise Problem(f"--unsigned seals without a key, but {NEW_KEY_ENV} is set: choose one")
    if not unsigned and new_key is None:
        raise Problem(
            f"set {NEW_KEY_ENV} to the new key (in the environment, never on the command line), "
            "or pass --unsigned to seal the study without a key",
            as_json=as_json,
        )
    opened = open_or_fail(storage, as_json=as_json)
    try:
        report = rekey_study(opened, study_name, old_key=old_key, new_key=new_key)
    except (CheckpointError, ValueError) as e:  # ValueError: a key that is too short
        raise Problem(str(e), as_json=as_json) from e
    if as_json:
        emit_json(asdict(report))
        return
    under = "the new key" if report.signed else "no key (unsigned)"
    click.echo(
        f"Re-signed study {study_name!r} under {under}: {report.checkpoints} checkpoint(s), "
        f"{report.interruptions} interrupted trial(s), {report.claims} claim(s) and "
        f"{report.trial_states} trial state(s). Start its workers with the new key."
    )
