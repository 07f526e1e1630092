"""optuna-checkpoint: exact, bit-identical resume of Optuna studies after any interruption."""

from optuna_checkpoint._adapters import Stateful
from optuna_checkpoint._adapters._protocol import load_sampler_state_dict
from optuna_checkpoint._adapters._protocol import sampler_state_dict
from optuna_checkpoint._audit import DeterminismReport
from optuna_checkpoint._audit import audit_determinism
from optuna_checkpoint._pruner import CheckpointingPruner
from optuna_checkpoint._sampler import CheckpointingSampler
from optuna_checkpoint._seeding import seed_everything
from optuna_checkpoint._seeding import trial_seed
from optuna_checkpoint._trajectory import uninterrupted_trials
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import CheckpointIncompleteError
from optuna_checkpoint.exceptions import ConfigMismatchError
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.exceptions import StreamOwnedError
from optuna_checkpoint.exceptions import UnsafeCheckpointError
from optuna_checkpoint.exceptions import UnsupportedPrunerError
from optuna_checkpoint.exceptions import UnsupportedSamplerError


__version__ = "0.3.0"

__all__ = [
    "CheckpointError",
    "CheckpointIncompleteError",
    "CheckpointingPruner",
    "CheckpointingSampler",
    "ConfigMismatchError",
    "CorruptCheckpointError",
    "DeterminismReport",
    "Stateful",
    "StreamOwnedError",
    "UnsafeCheckpointError",
    "UnsupportedPrunerError",
    "UnsupportedSamplerError",
    "__version__",
    "audit_determinism",
    "load_sampler_state_dict",
    "sampler_state_dict",
    "seed_everything",
    "trial_seed",
    "uninterrupted_trials",
]
