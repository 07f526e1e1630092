"""Opt-in adapter that stores a sampler's attributes with cloudpickle.

Only used when the user passed ``allow_pickle=True``: restoring it executes code from the
database, which is acceptable only when every writer of that database is trusted. cloudpickle
stores classes and functions defined in a script (``__main__``) by value, so a sampler defined in
the script that runs the study is restored by the next run of that script.

What is pickled is what Python's own pickling would take: ``__getstate__()`` when the sampler's
class defines it, else its ``__dict__``; it is restored with ``__setstate__()`` when defined, else
into the ``__dict__`` of the freshly constructed sampler. So a sampler holding something that
cannot be pickled (a lock, an open file, a generator) can leave it out the standard way.

The attributes are pickled here rather than by the codec, so that a failure names the attribute;
the codec then stores the resulting bytes as its one pickled value. The sampler is pickled once at
construction, so an unpicklable sampler is refused before the study starts.
"""

from __future__ import annotations

from typing import Any

import cloudpickle
from optuna.samplers import BaseSampler

from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.exceptions import UnsupportedSamplerError
from optuna_checkpoint.state._codec import PickledValue
from optuna_checkpoint.state.adapters._protocol import StateAdapter


OBJECT_STATE = "object_state"

# Python 3.11 gave ``object`` a default ``__getstate__``; only an override changes what is taken.
_DEFAULT_GETSTATE = getattr(object, "__getstate__", None)


class PickleAdapter(StateAdapter):
    """Captures the sampler's pickling state (``__getstate__()`` or ``__dict__``) as bytes."""

    name = "Pickle"

    def __init__(self, sampler: BaseSampler) -> None:
        super().__init__(sampler)
        # Refuse an unpicklable sampler now rather than at its first checkpoint, mid-study.
        self.state_dict()

    def state_dict(self) -> dict[str, Any]:
        """Pickle the sampler's state.

        Raises:
            UnsupportedSamplerError: Part of the state cannot be pickled; the message names it.
        """
        state = _object_state(self.sampler)
        try:
            blob = cloudpickle.dumps(state)
        except Exception as e:
            raise UnsupportedSamplerError(_unpicklable_message(self.sampler, state, e)) from e
        return {OBJECT_STATE: PickledValue(blob)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Unpickle the state into the sampler (only reached when the user allowed pickles)."""
        stored = self.require(state_dict, OBJECT_STATE)
        if isinstance(stored, bytes):
            state = cloudpickle.loads(stored)
        elif isinstance(stored, dict):
            state = stored  # release 0.2.0 had the codec pickle the attribute dict itself
        else:
            raise CorruptCheckpointError(
                f"pickled sampler state is a {type(stored).__name__}, not bytes"
            )
        setstate = getattr(self.sampler, "__setstate__", None)
        if setstate is not None:
            setstate(state)
        elif isinstance(state, dict):
            vars(self.sampler).update(state)
        else:
            raise CorruptCheckpointError(
                f"pickled state of {type(self.sampler).__qualname__} is a "
                f"{type(state).__name__}, and the class defines no __setstate__ to load it"
            )


def _object_state(sampler: BaseSampler) -> Any:
    getstate = getattr(type(sampler), "__getstate__", None)
    if getstate is not None and getstate is not _DEFAULT_GETSTATE:
        return getstate(sampler)
    return dict(vars(sampler))


def _unpicklable_message(sampler: BaseSampler, state: Any, error: Exception) -> str:
    culprit = ""
    if isinstance(state, dict):
        for name, value in state.items():
            try:
                cloudpickle.dumps(value)
            except Exception as e:
                culprit = f" attribute {name!r} ({type(value).__qualname__}): {e}."
                break
    cls = type(sampler).__qualname__
    return (
        f"allow_pickle=True cannot store {cls}: its state cannot be pickled:"
        f"{culprit or f' {error}.'} Either leave that attribute out of pickling the standard "
        f"way (define __getstate__ to drop it and __setstate__ to re-create it), or implement "
        f"state_dict() and load_state_dict() on {cls} (optuna_checkpoint.Stateful; see "
        "docs/adapters.md), which needs no pickling at all."
    )
