"""``python -m optuna_checkpoint.demo``: the same as the ``optuna-checkpoint-demo`` command."""

import sys

from optuna_checkpoint.demo._cli import main


if __name__ == "__main__":
    sys.exit(main())
