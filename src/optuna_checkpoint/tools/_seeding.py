"""Seeds for the objective: the same for a trial's position in the study, however often resumed.

A checkpointed sampler proposes the same parameters after a resume, but the trajectory is only
the same if the objective returns the same values for them. An objective that draws random
numbers (weight initialisation, data shuffling, dropout) must therefore draw them from a seed
that belongs to the trial's place in the study, not to the process or to the trial's stored
number: a retried trial is a new trial with a new number (``docs/design.md``, section 4).

The seed of a trial is derived from the study's name, the trial's *logical number* and an
optional stream name. The logical number is the trial's index in
:func:`optuna_checkpoint.uninterrupted_trials`: its number minus the interrupted attempts
numbered before it, i.e. the number it has in the run that never stopped. See
``docs/objective.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import sys
from typing import Any
import weakref

import numpy as np
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import InMemoryStorage
from optuna.study import Study
from optuna.trial import BaseTrial
from optuna.trial import FixedTrial
from optuna.trial import FrozenTrial
from optuna.trial import Trial

from optuna_checkpoint._sampler import CheckpointingSampler
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.study._identity import first_trial
from optuna_checkpoint.study._logical import HiddenTrials
from optuna_checkpoint.tools._trajectory import recorded_interruptions


SEED_NUMBER_ATTR = "optuna_checkpoint:seed_number"
"""System attribute recording the logical number a trial's seeds were derived from."""

SEED_BITS = 32
"""Seeds are unsigned 32-bit integers: the widest that ``numpy.random.RandomState`` accepts."""

# Versioned, so a future change of the derivation cannot silently reuse old seeds.
_DOMAIN = "optuna-checkpoint/trial-seed/v1"

# The logical number each live trial got on its first call, so that every later call for the
# same trial agrees even if an interruption elsewhere is recorded meanwhile.
_given: weakref.WeakKeyDictionary[Trial, int] = weakref.WeakKeyDictionary()


class ReplayTrial(FixedTrial):
    """A :class:`~optuna.trial.FixedTrial` that stands in for one of a study's trials.

    It has the trial's parameters and number, and :func:`trial_seed` gives it the seeds the
    trial got when it ran, so an objective re-evaluated with it draws the same random numbers.
    """

    def __init__(
        self, params: dict[str, Any], *, number: int, study_name: str, seed_number: int
    ) -> None:
        """Stand in for trial ``number`` of ``study_name``, seeded as logical ``seed_number``."""
        super().__init__(params, number)
        self.study_name = study_name
        self.seed_number = seed_number

    @classmethod
    def of(cls, study: Study, trial: FrozenTrial) -> ReplayTrial:
        """Return the stand-in for ``trial`` of ``study``."""
        seed_number = _recorded(trial.system_attrs)
        if seed_number is None:  # the objective never asked for a seed; number it as it would
            seed_number = _hidden_trials(study).logical_number(trial.number)
        return cls(
            dict(trial.params),
            number=trial.number,
            study_name=study.study_name,
            seed_number=seed_number,
        )


def trial_seed(trial: Trial | FixedTrial, stream: str = "") -> int:
    """Return a seed for the objective's randomness in this trial, stable across resumes.

    The seed is derived (SHA-256) from the study's name, the trial's logical number and
    ``stream``. The logical number is the number the trial has in the uninterrupted run, so a
    trial retried after an interruption gets the seed of the attempt it repeats, and a study
    resumed in a new process gets the same seeds as one that never stopped. It does not depend
    on the process (unlike Python's ``hash``), the storage, or the study's id, so a study copied
    with ``optuna.copy_study`` under the same name keeps its seeds.

    The first call for a trial records the logical number in the trial's system attribute
    ``optuna_checkpoint:seed_number``; :func:`audit_determinism` reads it back, and later calls
    for the same trial return the same seed.

    Args:
        trial: The trial given to the objective. A plain :class:`~optuna.trial.FixedTrial`
            belongs to no study: its seed is derived from its ``number`` alone, so an objective
            that calls ``trial_seed`` can be tested with one; it is not the seed any study's
            trial got (re-evaluate those with :func:`audit_determinism`).
        stream: A name for an independent seed of the same trial, e.g. ``"data"`` for the data
            loader and ``"init"`` for the model's weights.

    Returns:
        An integer in ``[0, 2**32)``: accepted by ``random.seed``,
        ``numpy.random.RandomState``, ``numpy.random.default_rng``, ``torch.manual_seed`` and
        ``tf.random.set_seed``. Distinct trials can share a seed by chance (probability about
        ``n**2 / 2**33`` over ``n`` trials): harmless, the trials merely draw alike.

    Raises:
        TypeError: ``trial`` is not a trial an objective is called with, or ``stream`` is not a
            string.
    """
    if not isinstance(stream, str):
        raise TypeError(f"stream must be a string naming the seed, got {type(stream).__name__}")
    study_name, number = _seed_key(trial)
    key = json.dumps([_DOMAIN, study_name, number, stream], separators=(",", ":"))
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[: SEED_BITS // 8], "big")


def seed_everything(
    trial_or_seed: Trial | FixedTrial | int, *, stream: str = "", deterministic: bool = False
) -> int:
    """Seed Python's ``random``, NumPy's global generator, and PyTorch / TensorFlow if imported.

    PyTorch (``torch.manual_seed``, which covers the CPU and every CUDA device, and
    ``torch.cuda.manual_seed_all``) and TensorFlow (``tf.random.set_seed``) are seeded only if
    the objective's process has **already imported** them: this function never imports them,
    since importing PyTorch alone takes seconds. Call it at the start of the objective, after
    your own imports. Generators you create yourself (``numpy.random.default_rng()``,
    ``torch.Generator``) are not touched: build them from :func:`trial_seed` instead.

    ``PYTHONHASHSEED`` (the order of sets of strings) can only be set before Python starts, so
    it is not set here; see ``docs/objective.md``.

    Args:
        trial_or_seed: The objective's trial (seeded with :func:`trial_seed`), or a seed in
            ``[0, 2**32)``.
        stream: Passed to :func:`trial_seed` when given a trial.
        deterministic: Also make PyTorch and TensorFlow, if imported, choose deterministic
            kernels: ``torch.backends.cudnn.deterministic = True``,
            ``torch.backends.cudnn.benchmark = False``,
            ``torch.use_deterministic_algorithms(True)`` (PyTorch then raises on operations
            that have no deterministic implementation), the ``CUBLAS_WORKSPACE_CONFIG``
            environment variable CUDA's cuBLAS needs for it (unless already set), and
            ``tf.config.experimental.enable_op_determinism()``. These are process-wide
            settings that can slow training down, so they are off unless asked for.

    Returns:
        The seed used.

    Raises:
        ValueError: The seed is outside ``[0, 2**32)``.
        TypeError: ``trial_or_seed`` is neither a trial nor an integer.
    """
    if isinstance(trial_or_seed, BaseTrial):
        seed = trial_seed(trial_or_seed, stream)
    elif isinstance(trial_or_seed, (int, np.integer)) and not isinstance(trial_or_seed, bool):
        seed = int(trial_or_seed)
        if not 0 <= seed < 2**SEED_BITS:
            raise ValueError(
                f"seed must be in [0, 2**32) (numpy.random.RandomState's range), got {seed}"
            )
    else:
        raise TypeError(
            "seed_everything takes the objective's trial or an integer seed, got "
            f"{type(trial_or_seed).__name__}"
        )
    random.seed(seed)
    np.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        _seed_torch(torch, seed, deterministic)
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is not None:
        _seed_tensorflow(tensorflow, seed, deterministic)
    return seed


def _seed_torch(torch: Any, seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    cuda = getattr(torch, "cuda", None)
    if cuda is not None and hasattr(cuda, "manual_seed_all"):
        cuda.manual_seed_all(seed)  # lazy: does not initialise CUDA if it is unused
    if deterministic:
        # Read when cuBLAS creates its handle; without it deterministic matmuls raise on CUDA.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)


def _seed_tensorflow(tensorflow: Any, seed: int, deterministic: bool) -> None:
    tensorflow.random.set_seed(seed)
    if deterministic:
        tensorflow.config.experimental.enable_op_determinism()


def _seed_key(trial: BaseTrial) -> tuple[str | None, int]:
    """The study name and logical number a trial's seeds derive from."""
    if isinstance(trial, ReplayTrial):
        return trial.study_name, trial.seed_number
    if isinstance(trial, FixedTrial):
        return None, trial.number
    if isinstance(trial, Trial):
        return trial.study.study_name, _seed_number(trial)
    raise TypeError(
        f"trial_seed takes the trial the objective is called with (optuna.Trial, or a "
        f"FixedTrial), got {type(trial).__name__}; to re-evaluate a stored trial with its "
        "seeds, use optuna_checkpoint.audit_determinism(study, objective, trials=[number])."
    )


def _seed_number(trial: Trial) -> int:
    """The logical number of a live trial, fixed at the first call and recorded on the trial."""
    number = _given.get(trial)
    if number is not None:
        return number
    number = _recorded(trial.storage.get_trial_system_attrs(trial._trial_id))
    if number is None:
        number = _hidden_trials(trial.study).logical_number(trial.number)
        # Called after the trial was told, there is nothing more to record.
        with contextlib.suppress(UpdateFinishedTrialError):
            trial.storage.set_trial_system_attr(trial._trial_id, SEED_NUMBER_ATTR, number)
    _given[trial] = number
    return number


def _recorded(system_attrs: dict[str, Any]) -> int | None:
    """The logical number a trial's seeds were derived from, if it was recorded."""
    number = system_attrs.get(SEED_NUMBER_ATTR)
    if isinstance(number, int) and not isinstance(number, bool) and number >= 0:
        return number
    return None


def _hidden_trials(study: Study) -> HiddenTrials:
    """The study's interrupted attempts, as :func:`uninterrupted_trials` reads them.

    From the study's own ``CheckpointingSampler`` when it is attached to the study (what it
    showed the wrapped sampler for this trial; no I/O), else from the side table.
    """
    sampler = study.sampler
    if isinstance(sampler, CheckpointingSampler):
        attachment = sampler._attachment
        if (
            attachment is not None
            and not attachment.superseded
            and attachment.of(study._storage, study._study_id)
        ):
            return attachment.hidden
    storage = study._storage
    if isinstance(storage, InMemoryStorage):
        # Its checkpoints live in this process only: no sampler attached, none recorded.
        return HiddenTrials()
    try:
        first = first_trial(storage, study._study_id)
    except KeyError:  # no trial yet
        return HiddenTrials()
    # Checked with the key of the study's CheckpointingSampler, if it has one, else the
    # environment's: the objective that asks has no key of its own to give.
    sealer = (
        sampler._options.sealer
        if isinstance(sampler, CheckpointingSampler)
        else Sealer.from_option(None)
    )
    return HiddenTrials.of(recorded_interruptions(study, first, sealer))
