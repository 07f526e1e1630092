"""The registry of sampler adapters, and the lookup that picks the adapter for a sampler.

Adapters for Optuna's samplers register themselves for their exact sampler type; a subclass
that adds no attributes to its base's is captured by the base's adapter. Samplers without one
are captured through the :class:`Stateful` protocol, or pickled when the user allowed it.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
import functools
from typing import Any
import warnings

from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage

from optuna_checkpoint.exceptions import UnsupportedSamplerError
from optuna_checkpoint.state.adapters._pickle import PickleAdapter
from optuna_checkpoint.state.adapters._protocol import ExactTypeRegistry
from optuna_checkpoint.state.adapters._protocol import StateAdapter
from optuna_checkpoint.state.adapters._protocol import Stateful
from optuna_checkpoint.state.adapters._stateful import StatefulAdapter


_REGISTRY: ExactTypeRegistry[StateAdapter] = ExactTypeRegistry()
# How to construct an instance of a registered type that needs arguments (else ``kind()``).
_REFERENCES: dict[type, Callable[[], BaseSampler]] = {}


def register(
    kind: type[BaseSampler], *, reference: Callable[[], BaseSampler] | None = None
) -> Callable[[type[StateAdapter]], type[StateAdapter]]:
    """Register an adapter class for exactly one sampler type (a class decorator).

    Args:
        kind: The sampler type the adapter captures.
        reference: Constructs an instance of ``kind``, whose attribute names a subclass is
            compared with; only needed when ``kind()`` needs arguments.
    """
    if reference is not None:
        _REFERENCES[kind] = reference
    return _REGISTRY.register(kind)


def carried_over(attrs: Mapping[str, Any], trial_ids: Mapping[int, int]) -> dict[str, Any]:
    """What every kind of adapter rewrites in a copied study's attributes (see ``carry_over``)."""
    changes: dict[str, Any] = {}
    for adapter_type in _REGISTRY.adapter_types():
        changes.update(adapter_type.carry_over(attrs, trial_ids))
    return changes


def carry_over_study(storage: BaseStorage, study_id: int, trial_ids: Mapping[int, int]) -> None:
    """Rewrite a copied study's attributes that name trials, for every kind of adapter."""
    attrs = storage.get_study_system_attrs(study_id)
    for key, value in carried_over(attrs, trial_ids).items():
        storage.set_study_system_attr(study_id, key, value)


def adapter_for(sampler: BaseSampler, *, allow_pickle: bool = False) -> StateAdapter:
    """Return the adapter that captures ``sampler``'s state.

    The exact class is looked up first, then the :class:`Stateful` protocol, then the nearest
    base class with an adapter, if the sampler's attributes are those of that base (see
    :func:`inherited_adapter`), then pickling when the user allowed it.

    Raises:
        UnsupportedSamplerError: Nothing can capture the sampler safely.
    """
    adapter_type = _REGISTRY.lookup(sampler)
    if adapter_type is not None:
        return adapter_type(sampler)
    if isinstance(sampler, Stateful):
        return StatefulAdapter(sampler)
    try:
        inherited = inherited_adapter(sampler)
    except UnsupportedSamplerError:
        if not allow_pickle:
            raise
        inherited = None
    if inherited is not None:
        return inherited
    if allow_pickle:
        return PickleAdapter(sampler)
    raise UnsupportedSamplerError(
        f"optuna-checkpoint has no state adapter for {type(sampler).__qualname__} (it knows "
        f"{_REGISTRY.known()}). Implement state_dict()/load_state_dict() on the sampler, or pass "
        "allow_pickle=True to CheckpointingSampler to store it with cloudpickle."
    )


def inherited_adapter(sampler: BaseSampler) -> StateAdapter | None:
    """Return the adapter of the sampler's nearest registered base, if the subclass adds no state.

    A subclass adds no state when, freshly constructed, it has exactly the instance attributes
    of its base (which Optuna's samplers set in ``__init__``, whatever the arguments, and never
    add later) and declares no ``__slots__``: its state is then the base's, in the same
    attributes, and the base's adapter captures all of it. Overridden methods and a changed
    ``__init__`` are fine; what they keep must live in the base's attributes.

    Returns:
        ``None`` if no base of the sampler has an adapter.

    Raises:
        UnsupportedSamplerError: The subclass has attributes its base has not, or lacks some.
    """
    base = _REGISTRY.nearest_base(sampler)
    if base is None:
        return None
    expected = _attribute_names(base)
    actual = set(vars(sampler))
    for kind in type(sampler).__mro__[: type(sampler).__mro__.index(base)]:
        slots = kind.__dict__.get("__slots__", ())
        actual.update([slots] if isinstance(slots, str) else slots)
    name, base_name = type(sampler).__qualname__, base.__qualname__
    extra, missing = sorted(actual - expected), sorted(expected - actual)
    if extra:
        raise UnsupportedSamplerError(
            f"{name} adds attributes to {base_name}, whose adapter cannot know whether they "
            f"hold state: {', '.join(extra)}. Declare its state: implement state_dict() and "
            f"load_state_dict() on {name}, covering {base_name}'s state too (see "
            "docs/adapters.md), or pass allow_pickle=True to CheckpointingSampler to store it "
            "with cloudpickle."
        )
    if missing:
        raise UnsupportedSamplerError(
            f"{name} lacks attributes every {base_name} has: {', '.join(missing)}; does its "
            f"__init__ call {base_name}.__init__? Implement state_dict() and load_state_dict() "
            "on it, or pass allow_pickle=True to CheckpointingSampler."
        )
    return _REGISTRY.lookup_type(base)(sampler)


@functools.cache
def _attribute_names(kind: type) -> frozenset[str]:
    """The instance attributes of a freshly constructed ``kind`` (constructed once, here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental samplers warn on construction
        reference = _REFERENCES.get(kind, kind)()
    return frozenset(vars(reference))


def adapter_of_held(sampler: BaseSampler, *, holder: str, role: str) -> StateAdapter:
    """Return the adapter of a sampler that another sampler holds (its ``role``).

    Raises:
        UnsupportedSamplerError: Nothing can capture it without pickling; pickling the whole
            holder is not offered, since its own adapter captures the holder.
    """
    try:
        return adapter_for(sampler)
    except UnsupportedSamplerError as e:
        raise UnsupportedSamplerError(
            f"{holder}'s {role} is a {type(sampler).__qualname__}, for which optuna-checkpoint "
            "has no state adapter. Implement state_dict() and load_state_dict() on it "
            "(optuna_checkpoint.Stateful; see docs/adapters.md); allow_pickle=True does not "
            f"reach a sampler held inside {holder}."
        ) from e


def sampler_state_dict(sampler: BaseSampler) -> dict[str, Any]:
    """Return the state of a sampler that optuna-checkpoint can capture, as a plain state dict.

    For samplers that hold other samplers: a :class:`Stateful` sampler wrapping, say, a
    ``TPESampler`` puts ``sampler_state_dict(self._inner)`` into its own ``state_dict()``, and
    hands it back with :func:`load_sampler_state_dict`. Works for every sampler
    ``CheckpointingSampler`` supports without pickling, :class:`Stateful` ones included.

    Args:
        sampler: A sampler held by the sampler being captured (not that sampler itself).

    Returns:
        A state dict of plain values and numpy arrays, as :class:`Stateful` requires.

    Raises:
        UnsupportedSamplerError: optuna-checkpoint cannot capture ``sampler`` without pickling.
    """
    return adapter_for(sampler).state_dict()


def load_sampler_state_dict(sampler: BaseSampler, state_dict: dict[str, Any]) -> None:
    """Restore a state returned by :func:`sampler_state_dict` into a freshly constructed sampler.

    Args:
        sampler: A sampler constructed exactly as the one whose state was captured.
        state_dict: What :func:`sampler_state_dict` returned for it.

    Raises:
        UnsupportedSamplerError: optuna-checkpoint cannot restore ``sampler`` without pickling.
        CorruptCheckpointError: ``state_dict`` is not a state of this kind of sampler.
    """
    adapter_for(sampler).load_state_dict(state_dict)
