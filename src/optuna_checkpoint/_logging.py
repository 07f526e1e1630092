"""The library's loggers, which sit in Optuna's logger tree.

Optuna's root logger, ``optuna``, has its own handler (stderr by default) and does not propagate,
so a logger outside its tree is not printed by default and ignores
``optuna.logging.set_verbosity``. Ours are children of it, under :data:`ROOT_LOGGER_NAME`: their
lines appear where Optuna's do, formatted alike, and Optuna's verbosity governs them.
"""

from __future__ import annotations

import logging

import optuna


ROOT_LOGGER_NAME = "optuna.optuna_checkpoint"
"""The parent of every logger of this library (``logging.getLogger`` it to filter ours)."""


def get_logger(module: str) -> logging.Logger:
    """The logger of the module named ``module`` (its ``__name__``), in Optuna's tree."""
    return optuna.logging.get_logger(f"optuna.{module}")
