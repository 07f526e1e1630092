"""optuna-checkpoint: exact, bit-identical resume of Optuna studies after any interruption."""

from optuna_checkpoint._pruner import CheckpointingPruner
from optuna_checkpoint._sampler import CheckpointingSampler
from optuna_checkpoint._version import __version__
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import CheckpointIncompleteError
from optuna_checkpoint.exceptions import ConfigMismatchError
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.exceptions import MissingCheckpointError
from optuna_checkpoint.exceptions import SignatureError
from optuna_checkpoint.exceptions import StreamOwnedError
from optuna_checkpoint.exceptions import StudyNotFoundError
from optuna_checkpoint.exceptions import UnsafeCheckpointError
from optuna_checkpoint.exceptions import UnsupportedPrunerError
from optuna_checkpoint.exceptions import UnsupportedSamplerError
from optuna_checkpoint.exceptions import VersionMismatchError
from optuna_checkpoint.record._retention import Retention
from optuna_checkpoint.state.adapters import Stateful
from optuna_checkpoint.state.adapters._registry import load_sampler_state_dict
from optuna_checkpoint.state.adapters._registry import sampler_state_dict
from optuna_checkpoint.tools._audit import DeterminismReport
from optuna_checkpoint.tools._audit import audit_determinism
from optuna_checkpoint.tools._fork import ForkReport
from optuna_checkpoint.tools._fork import fork_study
from optuna_checkpoint.tools._rekey import RekeyReport
from optuna_checkpoint.tools._rekey import rekey_study
from optuna_checkpoint.tools._seeding import seed_everything
from optuna_checkpoint.tools._seeding import trial_seed
from optuna_checkpoint.tools._trajectory import uninterrupted_trials
from optuna_checkpoint.tools._transfer import ImportReport
from optuna_checkpoint.tools._transfer import export_checkpoints
from optuna_checkpoint.tools._transfer import import_checkpoints
from optuna_checkpoint.tools._trial_checkpoint import TrialCheckpoint
from optuna_checkpoint.tools._trial_checkpoint import trial_checkpoint
from optuna_checkpoint.tools._verify import VerificationReport
from optuna_checkpoint.tools._verify import verify


__all__ = [
    "CheckpointError",
    "CheckpointIncompleteError",
    "CheckpointingPruner",
    "CheckpointingSampler",
    "ConfigMismatchError",
    "CorruptCheckpointError",
    "DeterminismReport",
    "ForkReport",
    "ImportReport",
    "MissingCheckpointError",
    "RekeyReport",
    "Retention",
    "SignatureError",
    "Stateful",
    "StreamOwnedError",
    "StudyNotFoundError",
    "TrialCheckpoint",
    "UnsafeCheckpointError",
    "UnsupportedPrunerError",
    "UnsupportedSamplerError",
    "VerificationReport",
    "VersionMismatchError",
    "__version__",
    "audit_determinism",
    "export_checkpoints",
    "fork_study",
    "import_checkpoints",
    "load_sampler_state_dict",
    "rekey_study",
    "sampler_state_dict",
    "seed_everything",
    "trial_checkpoint",
    "trial_seed",
    "uninterrupted_trials",
    "verify",
]
