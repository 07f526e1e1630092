"""The registry of sampler adapters, and the lookup that picks the adapter for a sampler.

Adapters for Optuna's samplers register themselves for their exact sampler type; samplers
without one are captured through the :class:`Stateful` protocol, or pickled when the user
allowed it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage

from optuna_checkpoint.exceptions import UnsupportedSamplerError
from optuna_checkpoint.state.adapters._pickle import PickleAdapter
from optuna_checkpoint.state.adapters._protocol import ExactTypeRegistry
from optuna_checkpoint.state.adapters._protocol import StateAdapter
from optuna_checkpoint.state.adapters._protocol import Stateful
from optuna_checkpoint.state.adapters._stateful import StatefulAdapter


_REGISTRY: ExactTypeRegistry[StateAdapter] = ExactTypeRegistry()
register = _REGISTRY.register
"""Register an adapter class for exactly one sampler type (a class decorator)."""


def carry_over_study(storage: BaseStorage, study_id: int, trial_ids: Mapping[int, int]) -> None:
    """Let every kind of adapter rewrite a copied study's attributes (see ``carry_over``)."""
    for adapter_type in _REGISTRY.adapter_types():
        adapter_type.carry_over(storage, study_id, trial_ids)


def adapter_for(sampler: BaseSampler, *, allow_pickle: bool = False) -> StateAdapter:
    """Return the adapter that captures ``sampler``'s state.

    The exact class is looked up first (a subclass may hold state its parent's adapter does not
    know), then the :class:`Stateful` protocol, then pickling when the user allowed it.

    Raises:
        UnsupportedSamplerError: Nothing can capture the sampler safely.
    """
    adapter_type = _REGISTRY.lookup(sampler)
    if adapter_type is not None:
        return adapter_type(sampler)
    if isinstance(sampler, Stateful):
        return StatefulAdapter(sampler)
    if allow_pickle:
        return PickleAdapter(sampler)
    raise UnsupportedSamplerError(
        f"optuna-checkpoint has no state adapter for {type(sampler).__qualname__} (it knows "
        f"{_REGISTRY.known()}). Implement state_dict()/load_state_dict() on the sampler, or pass "
        "allow_pickle=True to CheckpointingSampler to store it with cloudpickle."
    )


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
