"""The ``optuna-checkpoint`` command: the click group, and the one list of its verbs."""

from __future__ import annotations

import click
import optuna

from optuna_checkpoint import __version__
from optuna_checkpoint.cli._fork import fork
from optuna_checkpoint.cli._fork import rewind
from optuna_checkpoint.cli._prune import prune
from optuna_checkpoint.cli._rekey import rekey
from optuna_checkpoint.cli._status import status
from optuna_checkpoint.cli._transfer import export
from optuna_checkpoint.cli._transfer import import_
from optuna_checkpoint.cli._verify import verify


VERBS: tuple[click.Command, ...] = (status, prune, verify, fork, rewind, export, import_, rekey)
"""Every verb of the command: the one place a verb is registered (``--help`` sorts them)."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="optuna-checkpoint")
def main() -> None:
    """Inspect, verify, prune, fork, carry and re-sign the checkpoints of CheckpointingSampler.

    --storage takes a database URL, as Optuna's own command does (sqlite:///study.db,
    postgresql://..., mysql+pymysql://...), or the path of a JournalFileBackend journal file.
    """
    # Optuna's INFO lines (storage set-up) would mix with the report.
    optuna.logging.set_verbosity(optuna.logging.WARNING)


for _verb in VERBS:
    main.add_command(_verb)
