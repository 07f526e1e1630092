"""The state-adapter protocol: what an adapter does, and a registry class to find one by type.

An adapter is bound to one sampler object and moves that sampler's complete mutable state in and
out as a plain state dict (see :mod:`optuna_checkpoint.state._codec` for what "plain"
allows). Capture and restore sit side by side in each adapter and share their key constants.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any
from typing import ClassVar
from typing import Generic
from typing import Protocol
from typing import TypeVar
from typing import runtime_checkable

from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from optuna_checkpoint.exceptions import CorruptCheckpointError


@runtime_checkable
class Stateful(Protocol):
    """A sampler that exports and imports its own complete state as a plain state dict.

    Samplers that implement these two methods are checkpointed without an adapter and without
    pickling. Values must be ``None``, bools, ints, floats, strings, numpy arrays of plain dtypes
    (bool, uint8, uint32, uint64, int32, int64, float64), and lists, tuples and string-keyed dicts
    of those. The state of a sampler held inside is available through
    :func:`sampler_state_dict`. ``docs/adapters.md`` explains the contract, with an example.
    """

    def state_dict(self) -> dict[str, Any]:
        """Return the sampler's complete mutable state."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict` into a freshly constructed sampler."""


class StateAdapter:
    """Base class of the adapters for Optuna's own samplers.

    Subclasses set :attr:`name` (stored with every checkpoint) and :attr:`CACHE_ATTRS`, the
    attributes that are pure caches rebuilt from the study and so are neither state nor
    configuration. An adapter of a sampler that holds other samplers lists their adapters in
    :attr:`held` (see :func:`adapter_of_held`), and the study hooks reach them too.
    """

    name: ClassVar[str]
    CACHE_ATTRS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, sampler: BaseSampler) -> None:
        self.sampler = sampler
        self.held: tuple[StateAdapter, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        """Capture the sampler's complete mutable state."""
        raise NotImplementedError

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state captured by :meth:`state_dict` into the sampler."""
        raise NotImplementedError

    def bind_study(self, storage: BaseStorage, study_id: int, *, sole_stream: bool) -> None:
        """Tell the adapter which study its sampler runs on, before any capture or restore there.

        For samplers that keep part of their state in the study itself (``QMCSampler``'s
        position in its sequence): their adapter captures it from there and, on restore,
        writes it back, but only if ``sole_stream``. Other workers' samplers share such state,
        and writing it back would undo what they did since. The default passes the call on to
        the :attr:`held` adapters.

        Args:
            storage: The study's storage.
            study_id: The study's id.
            sole_stream: Whether this process's checkpoint stream is the study's only one.
        """
        for adapter in self.held:
            adapter.bind_study(storage, study_id, sole_stream=sole_stream)

    def forget_interrupted(
        self,
        storage: BaseStorage,
        study_id: int,
        trials: Iterable[FrozenTrial],
        hidden_trial_ids: Collection[int],
    ) -> None:
        """Withdraw what the sampler wrote to the study during trials that were interrupted.

        Called on resume, after the interrupted trials are closed and before the state is
        restored. What they wrote to their own trials needs nothing: those trials are hidden
        from the sampler. Study attributes are not, so an adapter whose sampler caches results
        there undoes those the uninterrupted run never wrote. Must be idempotent: a resume cut
        short runs again. The default passes the call on to the :attr:`held` adapters.

        Args:
            storage: The study's storage.
            study_id: The study's id.
            trials: All the study's trials, the interrupted ones included.
            hidden_trial_ids: The ids of the interrupted trials.
        """
        for adapter in self.held:
            adapter.forget_interrupted(storage, study_id, trials, hidden_trial_ids)

    @classmethod
    def carry_over(cls, attrs: Mapping[str, Any], trial_ids: Mapping[int, int]) -> dict[str, Any]:
        """What samplers of this kind keep in a study's attributes that names trials, rewritten.

        Called when a study's trials and attributes were copied into a new study (a fork, or
        ``optuna.copy_study`` followed by an import of the checkpoints), for every adapter
        kind, since the copy does not know which sampler ran the study. Computes, writes
        nothing: the caller writes the result (once, even if it runs again). Attributes naming
        a trial the copy lacks are withdrawn (``None``). The default changes nothing.

        Args:
            attrs: The new study's system attributes, as copied.
            trial_ids: The ids of the copied trials, from the old study's to the new one's.

        Returns:
            The attributes to set, by key.
        """
        return {}

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
_AdapterT = TypeVar("_AdapterT")


class ExactTypeRegistry(Generic[_AdapterT]):
    """Adapter classes by the exact type of the object they capture (samplers, pruners).

    Subclasses are not matched: a subclass may hold state its parent's adapter does not know.

    Args:
        adapters: Adapter classes to start with, by the type they capture.
    """

    def __init__(self, adapters: Mapping[type, type[_AdapterT]] | None = None) -> None:
        self._adapters: dict[type, type[_AdapterT]] = dict(adapters or {})

    def register(self, kind: type) -> Callable[[type[_AdapterT]], type[_AdapterT]]:
        """Return a class decorator that registers an adapter class for exactly ``kind``."""

        def decorator(adapter_type: type[_AdapterT]) -> type[_AdapterT]:
            self._adapters[kind] = adapter_type
            return adapter_type

        return decorator

    def lookup(self, obj: object) -> type[_AdapterT] | None:
        """Return the adapter class registered for ``type(obj)``, if any."""
        return self._adapters.get(type(obj))

    def nearest_base(self, obj: object) -> type | None:
        """Return the nearest proper base class of ``type(obj)`` that has an adapter, if any."""
        for base in type(obj).__mro__[1:]:
            if base in self._adapters:
                return base
        return None

    def lookup_type(self, kind: type) -> type[_AdapterT]:
        """Return the adapter class registered for exactly ``kind``."""
        return self._adapters[kind]

    def adapter_types(self) -> list[type[_AdapterT]]:
        """Return each registered adapter class once."""
        return list(dict.fromkeys(self._adapters.values()))

    def known(self) -> str:
        """Name the types that have an adapter, for error messages."""
        return ", ".join(sorted(kind.__name__ for kind in self._adapters))
