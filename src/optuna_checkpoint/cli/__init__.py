"""``optuna-checkpoint``: inspect, verify, prune, fork and carry the checkpoints of studies.

Each verb is one module defining one click command with the shared options of
:mod:`._common`, registered on :data:`main` below. The data comes from
:mod:`optuna_checkpoint.tools._inspect`, :mod:`optuna_checkpoint.record._retention` and
:mod:`optuna_checkpoint.tools._verify`; the verbs only render it (:mod:`._render`).

Exit codes: 0 when the report was made (and, for ``verify``, everything checked out); 1 when a
problem stopped it (no such study, a storage that cannot prune, a database that cannot be
reached) or ``verify`` found one; 2 for a usage error (click's own).
"""

from __future__ import annotations

import click
import optuna

from optuna_checkpoint import __version__
from optuna_checkpoint.cli._fork import fork
from optuna_checkpoint.cli._fork import rewind
from optuna_checkpoint.cli._prune import prune
from optuna_checkpoint.cli._status import status
from optuna_checkpoint.cli._transfer import export
from optuna_checkpoint.cli._transfer import import_
from optuna_checkpoint.cli._verify import verify


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="optuna-checkpoint")
def main() -> None:
    """Inspect, verify, prune, fork and carry the checkpoints of CheckpointingSampler.

    --storage takes a database URL, as Optuna's own command does (sqlite:///study.db,
    postgresql://..., mysql+pymysql://...), or the path of a JournalFileBackend journal file.
    """
    # Optuna's INFO lines (storage set-up) would mix with the report.
    optuna.logging.set_verbosity(optuna.logging.WARNING)


main.add_command(status)
main.add_command(prune)
main.add_command(verify)
main.add_command(fork)
main.add_command(rewind)
main.add_command(export)
main.add_command(import_)

__all__ = ["main"]
