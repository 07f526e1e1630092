"""CheckpointingPruner: a pruner wrapper whose state rides in the sampler's checkpoints.

The pruner is the second thing in a study that can hold state (Hyperband's brackets, the
minimum resource ``SuccessiveHalvingPruner`` estimates) and read trial numbers (Hyperband's
bracket of a trial is a hash of its number). The wrapper

* hands the pruner the logical study, the one the wrapped sampler sees: interrupted attempts
  hidden, later trials renumbered (the sampler that attaches it decides under its lock);
* offers its state as ``state_dict()`` / ``load_state_dict()``, which the sampler's checkpoint
  carries under one reserved key (:mod:`optuna_checkpoint.state._composite`);
* shows the sampler the per-bracket study Optuna shows it under a bare Hyperband
  (:meth:`CheckpointingPruner.sampler_view`), since Optuna no longer recognises the pruner.

The sampler wraps a bare pruner that needs it in place (:func:`adopt_study_pruner`); see
``docs/pruners.md`` for why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any
from typing import Protocol

from optuna.pruners import BasePruner
from optuna.study import Study

from optuna_checkpoint._logging import get_logger
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import ConfigMismatchError
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.exceptions import UnsupportedPrunerError
from optuna_checkpoint.state._fingerprint import describe
from optuna_checkpoint.state._fingerprint import differences
from optuna_checkpoint.state.adapters._pruners import pruner_adapter_for


if TYPE_CHECKING:
    from optuna.samplers import BaseSampler
    from optuna.trial import FrozenTrial


_logger = get_logger(__name__)

CONFIG = "config"  # the pruner's description when it was constructed
STATE = "state"  # its adapter's state dict


class Decide(Protocol):
    """How the attached sampler runs a pruning decision: on its logical study, under its lock."""

    def __call__(
        self, prune: Callable[[Study, FrozenTrial], bool], study: Study, trial: FrozenTrial
    ) -> bool: ...


class CheckpointingPruner(BasePruner):
    """Wrap a pruner so that a study resumed by :class:`CheckpointingSampler` prunes exactly.

    After an interruption, ``HyperbandPruner`` and ``SuccessiveHalvingPruner`` (and a
    ``PatientPruner`` wrapping one) would decide differently from an uninterrupted run. The
    wrapper saves the pruner's state in the sampler's checkpoints, in the same transaction, and
    shows the pruner the study an uninterrupted run would have, with the trial numbers it would
    have. Without interruptions it decides exactly as the bare pruner.

    ``CheckpointingSampler`` puts this wrapper around Optuna's stateful pruners itself, on its
    first trial, so passing them bare is equivalent. Write it for a pruner of your own that has
    ``state_dict()`` / ``load_state_dict()``. ``MedianPruner``, ``PercentilePruner``,
    ``ThresholdPruner``, ``WilcoxonPruner`` and ``NopPruner`` resume exactly without it
    (wrapping them is harmless).

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
        self._sampler: BaseSampler | None = None
        self._decide: Decide | None = None

    @property
    def pruner(self) -> BasePruner:
        """The wrapped pruner."""
        return self._pruner

    def __repr__(self) -> str:
        return f"CheckpointingPruner({self._pruner!r})"

    def _attach(self, sampler: BaseSampler, decide: Decide) -> None:
        """Called by the study's ``CheckpointingSampler`` when it attaches to the study."""
        self._sampler = sampler
        self._decide = decide

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        """Decide with the wrapped pruner on the study as the wrapped sampler sees it.

        Raises:
            CheckpointError: The study's sampler is not the :class:`CheckpointingSampler` this
                pruner was attached to.
        """
        decide = self._decide
        if decide is None or study.sampler is not self._sampler:
            raise CheckpointError(
                "CheckpointingPruner works together with CheckpointingSampler, which saves the "
                "pruner's state with its own: create the study with "
                "sampler=CheckpointingSampler(...) as well, and give each study a pruner of "
                "its own."
            )
        return decide(self._adapter.prune, study, trial)

    def sampler_view(self, study: Study, trial: FrozenTrial) -> Study:
        """The study the wrapped sampler is shown (per-bracket under Hyperband)."""
        return self._adapter.sampler_view(study, trial)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped pruner's state, with its configuration to check on restore."""
        return {CONFIG: self._config, STATE: self._adapter.state_dict()}

    def load_state_dict(self, saved: Any) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            CorruptCheckpointError: The saved state is incomplete.
            ConfigMismatchError: It was saved by a pruner configured differently.
        """
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


def adopt_study_pruner(study: Study, *, required: bool) -> CheckpointingPruner | None:
    """Return the study's :class:`CheckpointingPruner`, wrapping its pruner in place if needed.

    A bare pruner that would not resume exactly (Hyperband, successive halving, a
    ``PatientPruner`` around one) is wrapped in place, so that ``pruner=HyperbandPruner()``
    resumes as ``pruner=CheckpointingPruner(HyperbandPruner())`` does: both save the same state
    and decide alike. Pruners that resume exactly by themselves (``MedianPruner``, Optuna's
    default, and the others in docs/pruners.md) are left as they are, unless ``required``.

    Called on the sampler's first hook in a process, before the objective runs, so the pruner
    has not decided anything yet. A pruner no adapter knows is reported with a warning, not an
    error: without interruptions it behaves as it always did.

    Args:
        study: The study the sampler attaches to (not Optuna's per-bracket view of it).
        required: Wrap every pruner, exact or not (the deterministic mode needs every decision
            made on the trial's fixed history).

    Raises:
        UnsupportedPrunerError: ``required``, and no adapter knows the pruner.
    """
    pruner = study.pruner
    if isinstance(pruner, CheckpointingPruner):
        return pruner
    name = type(pruner).__name__
    try:
        exact = pruner_adapter_for(pruner).exact_unwrapped()
    except UnsupportedPrunerError:
        if required:
            raise
        _logger.warning(
            "optuna-checkpoint cannot tell whether the study's pruner %s decides after an "
            "interruption as in an uninterrupted run. If it keeps state between trials or "
            "reads trial numbers, give it state_dict() and load_state_dict() and create the "
            "study with pruner=CheckpointingPruner(%s(...)).",
            name,
            name,
        )
        return None
    if exact and not required:
        return None
    wrapped = CheckpointingPruner(pruner)
    study.pruner = wrapped
    _logger.debug("The study's pruner %s now saves its state with the sampler's.", name)
    return wrapped


def unfiltered_study(study: Study) -> Study:
    """The study itself, where Optuna handed the sampler its per-bracket view of it.

    Under a bare ``HyperbandPruner``, Optuna shows the sampler's hooks a ``_BracketStudy``
    (``optuna.pruners._filter_study``) that keeps the study it filters as ``_study``; the first
    hook of a process sees one, before :func:`adopt_study_pruner` wraps the pruner. A view of
    another shape is returned as it is (``test_optuna_internals`` fails if Optuna's changes).
    """
    if type(study).__name__ != "_BracketStudy":
        return study
    inner = getattr(study, "_study", None)
    return inner if isinstance(inner, Study) else study


def study_for_hooks(given: Study) -> Study:
    """The study to show the wrapped sampler's hooks in place of the one Optuna gave them.

    Once the study's pruner is a :class:`CheckpointingPruner`, Optuna shows the hooks the study
    itself, and the sampler adds the bracket view (as ``_filter_study`` would); the first hook,
    called before the pruner was wrapped, is given the same.
    """
    study = unfiltered_study(given)
    return study if isinstance(study.pruner, CheckpointingPruner) else given
