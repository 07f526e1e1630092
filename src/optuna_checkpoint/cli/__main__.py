"""``python -m optuna_checkpoint.cli``: the same as the ``optuna-checkpoint`` command."""

from optuna_checkpoint.cli._main import main


if __name__ == "__main__":
    main(prog_name="optuna-checkpoint")
