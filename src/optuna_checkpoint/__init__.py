"""optuna-checkpoint: exact, bit-identical resume of Optuna studies after any interruption."""

from optuna_checkpoint._adapters import Stateful
from optuna_checkpoint._sampler import CheckpointingSampler
from optuna_checkpoint._trajectory import uninterrupted_trials
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import CheckpointIncompleteError
from optuna_checkpoint.exceptions import ConfigMismatchError
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.exceptions import StreamOwnedError
from optuna_checkpoint.exceptions import UnsafeCheckpointError
from optuna_checkpoint.exceptions import UnsupportedSamplerError


__version__ = "0.2.0"

__all__ = [
    "CheckpointError",
    "CheckpointIncompleteError",
    "CheckpointingSampler",
    "ConfigMismatchError",
    "CorruptCheckpointError",
    "Stateful",
    "StreamOwnedError",
    "UnsafeCheckpointError",
    "UnsupportedSamplerError",
    "__version__",
    "uninterrupted_trials",
]
