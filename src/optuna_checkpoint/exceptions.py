"""Errors raised by optuna-checkpoint.

Every error derives from :class:`CheckpointError`, and every message ends with what to do next.
"""

from __future__ import annotations


class CheckpointError(Exception):
    """Base class of every error raised by optuna-checkpoint."""


class ConfigMismatchError(CheckpointError):
    """The sampler resuming a stream is configured differently from the one that wrote it."""


class CorruptCheckpointError(CheckpointError):
    """A stored checkpoint failed its checksum or could not be decoded."""


class MissingCheckpointError(CorruptCheckpointError):
    """Finished trials of a stream are newer than its newest checkpoint: checkpoints were lost.

    A trial's end is never stored without its checkpoint, so resuming from the older state
    would silently leave the trajectory. The error names the trials.
    """


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds a pickled object and loading pickles was not allowed."""


class SignatureError(CheckpointError):
    """A checkpoint's signature cannot be checked: it is unsigned, or no key was given.

    With a signing key configured, unsigned checkpoints are refused; a signed checkpoint is
    refused when no key is configured to check it.
    """


class VersionMismatchError(CheckpointError):
    """A checkpoint was written under library versions whose state cannot be trusted here."""


class StudyNotFoundError(CheckpointError, LookupError):
    """The storage has no study of that name."""


class StreamOwnedError(CheckpointError):
    """Another live process owns the study's checkpoint stream."""


class UnsupportedSamplerError(CheckpointError):
    """No state adapter knows the wrapped sampler and pickling was not allowed."""


class UnsupportedPrunerError(CheckpointError):
    """No adapter knows the pruner given to ``CheckpointingPruner``."""


class CheckpointIncompleteError(CheckpointError):
    """A trial's final state was about to be committed without its checkpoint.

    Raised inside Optuna's commit so that the trial stays RUNNING and is retried on resume,
    instead of being stored as finished with the sampler state of an earlier trial.
    """
