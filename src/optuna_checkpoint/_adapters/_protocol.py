"""The state-adapter protocol and the registry that picks an adapter for a sampler.

An adapter is bound to one sampler object and moves that sampler's complete mutable state in and
out as a plain state dict (see :mod:`optuna_checkpoint._codec` for what "plain" allows). Capture
and restore sit side by side in each adapter and share their key constants.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import ClassVar
from typing import Protocol
from typing import runtime_checkable

from optuna.samplers import BaseSampler

from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.exceptions import UnsupportedSamplerError


@runtime_checkable
class Stateful(Protocol):
    """A sampler that exports and imports its own complete state as a plain state dict.

    Samplers that implement these two methods are checkpointed without an adapter and without
    pickling. Values must be ``None``, bools, ints, floats, strings, numpy arrays of plain dtypes,
    and lists, tuples and string-keyed dicts of those.
    """

    def state_dict(self) -> dict[str, Any]:
        """Return the sampler's complete mutable state."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict` into a freshly constructed sampler."""


class StateAdapter:
    """Base class of the adapters for Optuna's own samplers.

    Subclasses set :attr:`name` (stored with every checkpoint) and :attr:`CACHE_ATTRS`, the
    attributes that are pure caches rebuilt from the study and so are neither state nor
    configuration.
    """

    name: ClassVar[str]
    CACHE_ATTRS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, sampler: BaseSampler) -> None:
        self.sampler = sampler

    def state_dict(self) -> dict[str, Any]:
        """Capture the sampler's complete mutable state."""
        raise NotImplementedError

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state captured by :meth:`state_dict` into the sampler."""
        raise NotImplementedError

    def require(self, state_dict: dict[str, Any], key: str) -> Any:
        """Return ``state_dict[key]``, or name the missing key and this adapter."""
        try:
            return state_dict[key]
        except KeyError:
            raise CorruptCheckpointError(
                f"checkpoint state for {self.name} has no {key!r} entry; it was written by "
                "another adapter or tampered with. Start a new stream with "
                "CheckpointingSampler(..., start_new_stream=True)."
            ) from None


AdapterFactory = Callable[[BaseSampler], StateAdapter]
_REGISTRY: dict[type[BaseSampler], type[StateAdapter]] = {}


def register(
    sampler_type: type[BaseSampler],
) -> Callable[[type[StateAdapter]], type[StateAdapter]]:
    """Register an adapter class for exactly ``sampler_type`` (subclasses are not matched)."""

    def decorator(adapter_type: type[StateAdapter]) -> type[StateAdapter]:
        _REGISTRY[sampler_type] = adapter_type
        return adapter_type

    return decorator


def adapter_for(sampler: BaseSampler, *, allow_pickle: bool = False) -> StateAdapter:
    """Return the adapter that captures ``sampler``'s state.

    The exact class is looked up first (a subclass may hold state its parent's adapter does not
    know), then the :class:`Stateful` protocol, then pickling when the user allowed it.

    Raises:
        UnsupportedSamplerError: Nothing can capture the sampler safely.
    """
    adapter_type = _REGISTRY.get(type(sampler))
    if adapter_type is not None:
        return adapter_type(sampler)
    if isinstance(sampler, Stateful):
        from optuna_checkpoint._adapters._stateful import StatefulAdapter

        return StatefulAdapter(sampler)
    if allow_pickle:
        from optuna_checkpoint._adapters._pickle import PickleAdapter

        return PickleAdapter(sampler)
    known = ", ".join(sorted(t.__name__ for t in _REGISTRY))
    raise UnsupportedSamplerError(
        f"optuna-checkpoint has no state adapter for {type(sampler).__qualname__} (it knows "
        f"{known}). Implement state_dict()/load_state_dict() on the sampler, or pass "
        "allow_pickle=True to CheckpointingSampler to store it with cloudpickle."
    )
