"""Checkpoint stores: the contract and its backends."""

from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import CheckpointStore
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._base import Owner
from optuna_checkpoint.stores._base import Stream
from optuna_checkpoint.stores._sql import SQLCheckpointStore


__all__ = [
    "Checkpoint",
    "CheckpointStore",
    "Interruption",
    "Owner",
    "SQLCheckpointStore",
    "Stream",
]
