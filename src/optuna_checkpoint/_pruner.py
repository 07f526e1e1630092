"""CheckpointingPruner: a pruner wrapper whose state rides in the sampler's checkpoints.

The pruner is the second thing in a study that can hold state (Hyperband's brackets, the
minimum resource ``SuccessiveHalvingPruner`` estimates) and read trial numbers (Hyperband's
bracket of a trial is a hash of its number). The wrapper

* hands the pruner the logical study, the one the wrapped sampler sees: interrupted attempts
  hidden, later trials renumbered (:meth:`CheckpointingSampler._prune_logically`);
* stores the pruner's state in the sampler's checkpoint payload, under one reserved key
  (:func:`with_pruner_state`, :func:`restore_pruner`), so it commits in the sampler's
  transaction and needs nothing new from the stores; checkpoints without that key, written by
  earlier releases or without the wrapper, load as before;
* shows the sampler the per-bracket study Optuna shows it under a bare Hyperband
  (:meth:`CheckpointingPruner._sampler_view`), since Optuna no longer recognises the pruner.

See ``docs/pruners.md`` for why the pruner is wrapped explicitly.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from typing import Any

from optuna.pruners import BasePruner

from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import ConfigMismatchError
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.exceptions import UnsupportedPrunerError
from optuna_checkpoint.state._fingerprint import describe
from optuna_checkpoint.state._fingerprint import differences
from optuna_checkpoint.state.adapters._pruners import pruner_adapter_for


if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from optuna_checkpoint._sampler import CheckpointingSampler


_logger = logging.getLogger(__name__)

PRUNER_STATE_KEY = "optuna_checkpoint:pruner"
"""The key of the pruner's part in a checkpoint's state dict; no sampler adapter uses it."""

CONFIG = "config"  # the pruner's description when it was constructed
STATE = "state"  # its adapter's state dict


class CheckpointingPruner(BasePruner):
    """Wrap a pruner so that a study resumed by :class:`CheckpointingSampler` prunes exactly.

    Use it for ``HyperbandPruner`` and ``SuccessiveHalvingPruner`` (and a ``PatientPruner``
    wrapping one): after an interruption the bare pruners decide differently from an
    uninterrupted run. The wrapper saves the pruner's state in the sampler's checkpoints, in the
    same transaction, and shows the pruner the study an uninterrupted run would have, with the
    trial numbers it would have. Without interruptions it decides exactly as the bare pruner.

    ``MedianPruner``, ``PercentilePruner``, ``ThresholdPruner``, ``WilcoxonPruner`` and
    ``NopPruner`` resume exactly without it (wrapping them is harmless).

    Example:

        .. code-block:: python

            import optuna
            from optuna_checkpoint import CheckpointingPruner, CheckpointingSampler

            study = optuna.create_study(
                study_name="demo", storage="sqlite:///demo.db", load_if_exists=True,
                sampler=CheckpointingSampler(optuna.samplers.TPESampler(seed=42)),
                pruner=CheckpointingPruner(optuna.pruners.HyperbandPruner()),
            )

    Args:
        pruner: The pruner to wrap, freshly constructed with the same arguments on every run.
            A pruner of another type needs ``state_dict()`` and ``load_state_dict()``
            (:class:`optuna_checkpoint.Stateful`).

    Raises:
        UnsupportedPrunerError: No adapter knows the pruner's type.
    """

    def __init__(self, pruner: BasePruner) -> None:
        if isinstance(pruner, CheckpointingPruner):
            raise ValueError("the pruner is already a CheckpointingPruner; wrap it only once")
        if not isinstance(pruner, BasePruner):
            raise UnsupportedPrunerError(
                f"CheckpointingPruner wraps an optuna.pruners.BasePruner, got "
                f"{type(pruner).__qualname__}."
            )
        self._pruner = pruner
        self._adapter = pruner_adapter_for(pruner)
        # Described now, while the pruner is fresh: "auto" resources are still "auto".
        self._config = describe(pruner)
        # Set by the sampler when it attaches to the study (its first hook).
        self._sampler: CheckpointingSampler | None = None

    @property
    def pruner(self) -> BasePruner:
        """The wrapped pruner."""
        return self._pruner

    def __repr__(self) -> str:
        return f"CheckpointingPruner({self._pruner!r})"

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        """Decide with the wrapped pruner on the study as the wrapped sampler sees it.

        Raises:
            CheckpointError: The study's sampler is not the :class:`CheckpointingSampler` this
                pruner was attached to.
        """
        sampler = self._sampler
        if sampler is None or study.sampler is not sampler:
            raise CheckpointError(
                "CheckpointingPruner works together with CheckpointingSampler, which saves the "
                "pruner's state with its own: create the study with "
                "sampler=CheckpointingSampler(...) as well, and give each study a pruner of "
                "its own."
            )
        return sampler._prune_logically(self._adapter.prune, study, trial)

    def _sampler_view(self, study: Study, trial: FrozenTrial) -> Study:
        """The study the wrapped sampler is shown (per-bracket under Hyperband)."""
        return self._adapter.sampler_view(study, trial)

    def _checkpoint_state(self) -> dict[str, Any]:
        return {CONFIG: self._config, STATE: self._adapter.state_dict()}

    def _restore_state(self, saved: Any) -> None:
        if not isinstance(saved, dict) or CONFIG not in saved or STATE not in saved:
            raise CorruptCheckpointError("the pruner's part of the checkpoint is incomplete")
        if saved[CONFIG] != self._config:
            lines = differences(saved[CONFIG], self._config)
            shown = "\n  ".join(lines[:20]) + ("\n  ..." if len(lines) > 20 else "")
            raise ConfigMismatchError(
                "the study was checkpointed with a pruner configured differently from this "
                f"one:\n  {shown}\nResume with the pruner constructed exactly as before, or "
                "pass start_new_stream=True to CheckpointingSampler to discard the "
                "checkpoints and continue with this configuration."
            )
        if not isinstance(saved[STATE], dict):
            raise CorruptCheckpointError("the pruner's state in the checkpoint is not a dict")
        self._adapter.load_state_dict(saved[STATE])


def attach_pruner(study: Study, sampler: CheckpointingSampler) -> CheckpointingPruner | None:
    """Return the study's :class:`CheckpointingPruner`, now attached to ``sampler``.

    A bare pruner that would not resume exactly is reported with a warning, not an error:
    without interruptions it behaves as it always did.
    """
    pruner = study.pruner
    if isinstance(pruner, CheckpointingPruner):
        pruner._sampler = sampler
        return pruner
    name = type(pruner).__name__
    try:
        exact = pruner_adapter_for(pruner).exact_unwrapped()
    except UnsupportedPrunerError:
        _logger.warning(
            "optuna-checkpoint cannot tell whether the study's pruner %s decides after an "
            "interruption as in an uninterrupted run. If it keeps state between trials or "
            "reads trial numbers, give it state_dict() and load_state_dict() and create the "
            "study with pruner=CheckpointingPruner(%s(...)).",
            name,
            name,
        )
        return None
    if not exact:
        _logger.warning(
            "The study's pruner %s keeps state or reads trial numbers, so after an "
            "interruption it would not decide as in an uninterrupted run. Create the study "
            "with pruner=CheckpointingPruner(%s(...)) to resume it exactly.",
            name,
            name,
        )
    return None


def with_pruner_state(state: dict[str, Any], pruner: CheckpointingPruner | None) -> dict[str, Any]:
    """Add the pruner's part to a sampler's state dict, for one checkpoint payload."""
    if pruner is None:
        return state
    if PRUNER_STATE_KEY in state:
        raise CheckpointError(
            f"the sampler's state dict uses the key {PRUNER_STATE_KEY!r}, which "
            "optuna-checkpoint reserves for the pruner's state; rename it in state_dict()."
        )
    return {**state, PRUNER_STATE_KEY: pruner._checkpoint_state()}


def restore_pruner(state: dict[str, Any], pruner: CheckpointingPruner | None) -> dict[str, Any]:
    """Restore the pruner's part of a checkpoint's state dict; return the sampler's part.

    A checkpoint without a pruner's part (an earlier release, or a study run without
    :class:`CheckpointingPruner`) leaves the pruner as constructed, as a restart always did.

    Raises:
        ConfigMismatchError: The checkpoint holds a pruner's state but the study has no
            :class:`CheckpointingPruner`, or one configured differently.
    """
    if PRUNER_STATE_KEY not in state:
        if pruner is not None:
            _logger.warning(
                "The checkpoint was written without a CheckpointingPruner: %r starts as "
                "constructed, so its decisions after this resume may differ from an "
                "uninterrupted run's; the next checkpoints include its state.",
                pruner,
            )
        return state
    sampler_state = {k: v for k, v in state.items() if k != PRUNER_STATE_KEY}
    if pruner is None:
        raise ConfigMismatchError(
            "the study was checkpointed with a CheckpointingPruner, but its pruner now is not "
            "one. Create the study with pruner=CheckpointingPruner(...) around the same "
            "pruner as before, or pass start_new_stream=True to CheckpointingSampler to "
            "discard the checkpoints."
        )
    pruner._restore_state(state[PRUNER_STATE_KEY])
    return sampler_state
