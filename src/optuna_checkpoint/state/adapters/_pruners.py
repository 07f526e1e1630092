"""Pruner adapters: capture a pruner's state and let it decide on the logical study.

A pruner is called by Optuna with the real study and trial. Under :class:`CheckpointingPruner`
it is called instead with the *logical* study (interrupted attempts hidden, later trials
renumbered, see :mod:`optuna_checkpoint.study._logical`), through the adapter of its type, which

* moves the pruner's mutable state in and out as a plain state dict (saved in the sampler's
  checkpoint, so both commit together);
* decides on the logical study (:meth:`PrunerAdapter.prune`): most pruners read only what the
  study lists and can simply be handed the view, but Hyperband builds its per-bracket study from
  the storage itself, which would bypass the view;
* shows the sampler what Optuna's ``pruners._filter_study`` would show it for the bare pruner
  (:meth:`PrunerAdapter.sampler_view`): a per-bracket study under Hyperband;
* says whether the bare pruner resumes exactly anyway (:meth:`PrunerAdapter.exact_unwrapped`),
  so that the sampler can warn about a bare pruner that does not.

Adapters are looked up by exact type, like the sampler adapters: a subclass may hold state its
parent's adapter does not know.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any
from typing import ClassVar
import warnings

from optuna.exceptions import ExperimentalWarning
from optuna.pruners import BasePruner
from optuna.pruners import HyperbandPruner
from optuna.pruners import MedianPruner
from optuna.pruners import NopPruner
from optuna.pruners import PatientPruner
from optuna.pruners import PercentilePruner
from optuna.pruners import SuccessiveHalvingPruner
from optuna.pruners import ThresholdPruner
from optuna.pruners import WilcoxonPruner
from optuna.study import Study
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.exceptions import UnsupportedPrunerError
from optuna_checkpoint.state.adapters._protocol import ExactTypeRegistry
from optuna_checkpoint.state.adapters._protocol import Stateful


class PrunerAdapter:
    """Base class of the pruner adapters: a pruner without state that reads only its arguments.

    Subclasses set :attr:`name` and override what their pruner needs.
    """

    name: ClassVar[str] = "Stateless"

    def __init__(self, pruner: BasePruner) -> None:
        self.pruner = pruner

    def state_dict(self) -> dict[str, Any]:
        """Capture the pruner's mutable state (none by default)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state captured by :meth:`state_dict` into a freshly constructed pruner."""

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        """Decide whether to prune ``trial`` of the logical study ``study``."""
        return self.pruner.prune(study, trial)

    def sampler_view(self, study: Study, trial: FrozenTrial) -> Study:
        """Return the study the sampler is shown, as Optuna's ``_filter_study`` would make it."""
        return study

    def exact_unwrapped(self) -> bool:
        """Whether the bare pruner, given the real study, decides as in an uninterrupted run.

        True for pruners without state that read only the trial itself and COMPLETE trials:
        interrupted attempts are never COMPLETE, and trial numbers do not matter to them.
        """
        return True

    def require(self, state_dict: dict[str, Any], key: str) -> Any:
        """Return ``state_dict[key]``, or name the missing key and this adapter."""
        try:
            return state_dict[key]
        except KeyError:
            raise CorruptCheckpointError(
                f"checkpoint state for {self.name} has no {key!r} entry; it was written by "
                "another adapter or tampered with."
            ) from None


_REGISTRY: ExactTypeRegistry[PrunerAdapter] = ExactTypeRegistry(
    {
        # Stateless; they read the trial's own intermediate values and the COMPLETE trials
        # (Median, Percentile: their values per step; Wilcoxon: the best trial).
        NopPruner: PrunerAdapter,
        MedianPruner: PrunerAdapter,
        PercentilePruner: PrunerAdapter,
        ThresholdPruner: PrunerAdapter,
        WilcoxonPruner: PrunerAdapter,
    }
)
register_pruner = _REGISTRY.register
"""Register an adapter class for exactly one pruner type (a class decorator)."""


def pruner_adapter_for(pruner: BasePruner) -> PrunerAdapter:
    """Return the adapter for ``pruner``: by exact type, else the :class:`Stateful` protocol.

    Raises:
        UnsupportedPrunerError: No adapter knows the pruner's type and it has no
            ``state_dict()`` / ``load_state_dict()``.
    """
    adapter_type = _REGISTRY.lookup(pruner)
    if adapter_type is not None:
        return adapter_type(pruner)
    if isinstance(pruner, Stateful):
        return StatefulPrunerAdapter(pruner)
    raise UnsupportedPrunerError(
        f"optuna-checkpoint has no adapter for the pruner {type(pruner).__qualname__} (it knows "
        f"{_REGISTRY.known()}). Implement state_dict() and load_state_dict() on it (return "
        "{} from state_dict() if it keeps no state between trials): it is then checkpointed "
        "with the sampler and shown the study as the sampler sees it."
    )


class StatefulPrunerAdapter(PrunerAdapter):
    """A pruner that exports and imports its own state (:class:`optuna_checkpoint.Stateful`)."""

    name = "Stateful"

    def state_dict(self) -> dict[str, Any]:
        """Return the pruner's own state dict."""
        state: dict[str, Any] = self.pruner.state_dict()  # type: ignore[attr-defined]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Hand the state dict back to the pruner."""
        self.pruner.load_state_dict(state_dict)  # type: ignore[attr-defined]

    def exact_unwrapped(self) -> bool:
        """A user's pruner with state loses it on a restart when not wrapped."""
        return False


MIN_RESOURCE = "min_resource"  # SuccessiveHalvingPruner._min_resource: None until "auto" is set


def _check_int(value: Any, what: str, minimum: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise CorruptCheckpointError(
            f"pruner state {what} is {value!r}, not an integer of at least {minimum}"
        )


@register_pruner(SuccessiveHalvingPruner)
class SuccessiveHalvingAdapter(PrunerAdapter):
    """Captures ``_min_resource``, which ``min_resource="auto"`` sets from the trials once.

    Even with an explicit ``min_resource`` the bare pruner does not resume exactly: it compares
    the ``completed_rung_*`` system attributes of every trial, and an interrupted attempt may
    have written some before it died.
    """

    name = "SuccessiveHalvingPruner"
    pruner: SuccessiveHalvingPruner

    def state_dict(self) -> dict[str, Any]:
        """Capture the (estimated) minimum resource."""
        return {MIN_RESOURCE: self.pruner._min_resource}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the minimum resource."""
        value = self.require(state_dict, MIN_RESOURCE)
        _check_int(value, MIN_RESOURCE, 1, optional=True)
        self.pruner._min_resource = value

    def exact_unwrapped(self) -> bool:
        """Interrupted attempts' rung attributes compete with the retry; see the class."""
        return False


MAX_RESOURCE = "max_resource"  # "auto" until initialised from the first COMPLETE trial
N_BRACKETS = "n_brackets"
BUDGETS = "trial_allocation_budgets"
TOTAL_BUDGET = "total_trial_allocation_budget"
BRACKETS = "brackets"  # the SuccessiveHalvingPruner of each bracket, field by field
REDUCTION_FACTOR = "reduction_factor"
MIN_EARLY_STOPPING_RATE = "min_early_stopping_rate"
BOOTSTRAP_COUNT = "bootstrap_count"


@register_pruner(HyperbandPruner)
class HyperbandAdapter(PrunerAdapter):
    """Captures the brackets Hyperband builds lazily, and decides per bracket on the logical study.

    Hyperband builds its brackets at the first ``prune`` call that finds a COMPLETE trial (with
    ``max_resource="auto"`` it takes the maximum resource from the trials then), and assigns a
    trial to a bracket by ``crc32(f"{study_name}_{trial.number}")``. The brackets are captured
    as they are, field by field, not recomputed: a resume restores what the process had.
    """

    name = "HyperbandPruner"
    pruner: HyperbandPruner

    def state_dict(self) -> dict[str, Any]:
        """Capture the maximum resource, the bracket budgets and every bracket's pruner."""
        hyperband = self.pruner
        return {
            MAX_RESOURCE: hyperband._max_resource,
            N_BRACKETS: hyperband._n_brackets,
            BUDGETS: list(hyperband._trial_allocation_budgets),
            TOTAL_BUDGET: hyperband._total_trial_allocation_budget,
            BRACKETS: [
                {
                    MIN_RESOURCE: bracket._min_resource,
                    REDUCTION_FACTOR: bracket._reduction_factor,
                    MIN_EARLY_STOPPING_RATE: bracket._min_early_stopping_rate,
                    BOOTSTRAP_COUNT: bracket._bootstrap_count,
                }
                for bracket in hyperband._pruners
            ],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the brackets into a freshly constructed pruner."""
        max_resource = self.require(state_dict, MAX_RESOURCE)
        if max_resource != "auto":
            _check_int(max_resource, MAX_RESOURCE, 1)
        n_brackets = self.require(state_dict, N_BRACKETS)
        _check_int(n_brackets, N_BRACKETS, 1, optional=True)
        budgets = self.require(state_dict, BUDGETS)
        total = self.require(state_dict, TOTAL_BUDGET)
        brackets = self.require(state_dict, BRACKETS)
        if not isinstance(budgets, list) or not isinstance(brackets, list):
            raise CorruptCheckpointError("Hyperband state has no list of brackets")
        for budget in budgets:
            _check_int(budget, BUDGETS, 1)
        _check_int(total, TOTAL_BUDGET, 0)
        if (
            len(budgets) != len(brackets)
            or total != sum(budgets)
            or len(brackets) != (n_brackets or 0)
        ):
            raise CorruptCheckpointError("Hyperband state has inconsistent bracket budgets")
        pruners = [self._bracket_from(fields) for fields in brackets]
        hyperband = self.pruner
        hyperband._max_resource = max_resource
        hyperband._n_brackets = n_brackets
        hyperband._trial_allocation_budgets = list(budgets)
        hyperband._total_trial_allocation_budget = total
        hyperband._pruners = pruners

    def _bracket_from(self, fields: Any) -> SuccessiveHalvingPruner:
        if not isinstance(fields, dict):
            raise CorruptCheckpointError("a Hyperband bracket's state is not a dict")
        min_resource = self.require(fields, MIN_RESOURCE)
        try:
            return SuccessiveHalvingPruner(
                min_resource="auto" if min_resource is None else min_resource,
                reduction_factor=self.require(fields, REDUCTION_FACTOR),
                min_early_stopping_rate=self.require(fields, MIN_EARLY_STOPPING_RATE),
                bootstrap_count=self.require(fields, BOOTSTRAP_COUNT),
            )
        except (TypeError, ValueError) as e:
            raise CorruptCheckpointError(f"a Hyperband bracket's state is invalid: {e}") from e

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        """``HyperbandPruner.prune``, with the bracket's study made from the logical study."""
        hyperband = self.pruner
        if not hyperband._pruners:
            hyperband._try_initialization(study)
            if not hyperband._pruners:
                return False
        bracket_id = hyperband._get_bracket_id(study, trial)
        return hyperband._pruners[bracket_id].prune(
            BracketStudy(study, hyperband, bracket_id), trial
        )

    def sampler_view(self, study: Study, trial: FrozenTrial) -> Study:
        """The trial's bracket, as ``_filter_study`` shows it (bracket 0, all trials, at first)."""
        hyperband = self.pruner
        return BracketStudy(study, hyperband, hyperband._get_bracket_id(study, trial))

    def exact_unwrapped(self) -> bool:
        """A retried trial has a new number, hence another bracket; "auto" is state too."""
        return False


class BracketStudy(Study):
    """One Hyperband bracket of a (logical) study, listed as Optuna's own bracket study lists it.

    Optuna's ``_BracketStudy`` reads the trials from the storage, which would bypass the logical
    view. This one filters the view it wraps, by the same ``_get_bracket_id`` on the numbers the
    view gives, and like Optuna's only in ``get_trials``: ``_get_trials``, which Optuna's samplers
    use, lists every trial there too.
    """

    def __init__(self, study: Study, hyperband: HyperbandPruner, bracket_id: int) -> None:
        # Not ``Study.__init__``: that would look the study up in storage again.
        self.__dict__.update(object.__getattribute__(study, "__dict__"))
        self._inner = study
        self._hyperband = hyperband
        self._bracket_id = bracket_id

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        trials = self._inner.get_trials(deepcopy=deepcopy, states=states)
        bracket_of = self._hyperband._get_bracket_id
        return [t for t in trials if bracket_of(self, t) == self._bracket_id]

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        return self._inner._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)

    def stop(self) -> None:
        self._inner.stop()

    def __getstate__(self) -> dict[Any, Any]:
        return self._inner.__getstate__()


WRAPPED = "wrapped"  # the state of the pruner a PatientPruner wraps


@register_pruner(PatientPruner)
class PatientAdapter(PrunerAdapter):
    """PatientPruner has no state of its own; the pruner it wraps may have.

    It decides through a twin ``PatientPruner`` (same patience and tolerance) whose wrapped
    pruner is the wrapped pruner's adapter, so a wrapped Hyperband, too, decides on the
    logical study. The sampler is shown the study itself: Optuna's ``_filter_study`` makes a
    bracket study only when the study's pruner *is* a Hyperband.
    """

    name = "PatientPruner"
    pruner: PatientPruner

    def __init__(self, pruner: BasePruner) -> None:
        super().__init__(pruner)
        wrapped = self.pruner._wrapped_pruner
        self._wrapped = None if wrapped is None else pruner_adapter_for(wrapped)
        with warnings.catch_warnings():
            # The user was warned once already, when constructing the original.
            warnings.simplefilter("ignore", ExperimentalWarning)
            self._twin = PatientPruner(
                None if self._wrapped is None else _AdapterPruner(self._wrapped),
                patience=self.pruner._patience,
                min_delta=self.pruner._min_delta,
            )

    def state_dict(self) -> dict[str, Any]:
        """Capture the wrapped pruner's state."""
        return {WRAPPED: None if self._wrapped is None else self._wrapped.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the wrapped pruner's state."""
        wrapped = self.require(state_dict, WRAPPED)
        if self._wrapped is not None:
            if not isinstance(wrapped, dict):
                raise CorruptCheckpointError("PatientPruner state has no wrapped pruner state")
            self._wrapped.load_state_dict(wrapped)

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        """Decide as ``PatientPruner.prune``, the wrapped pruner through its adapter."""
        return self._twin.prune(study, trial)

    def exact_unwrapped(self) -> bool:
        """Exact when the wrapped pruner is."""
        return self._wrapped is None or self._wrapped.exact_unwrapped()


class _AdapterPruner(BasePruner):
    """A pruner that decides through an adapter, for the twin of a wrapping pruner."""

    def __init__(self, adapter: PrunerAdapter) -> None:
        self._adapter = adapter

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        return self._adapter.prune(study, trial)
