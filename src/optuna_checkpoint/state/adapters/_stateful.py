"""Adapter for samplers that implement ``state_dict()`` / ``load_state_dict()`` themselves.

The sampler's author, not this package, decides what its state is, so both directions are
checked here and a mistake is reported in the sampler's own terms: a value the checkpoint format
cannot hold is named by its path in the returned dict when it is captured, and a stored state the
sampler cannot load is reported as such, with the ways forward, when it is restored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.state._codec import _ALLOWED_DTYPES
from optuna_checkpoint.state.adapters._protocol import StateAdapter


# For messages: the dtypes the codec stores, by name.
_DTYPE_NAMES = ", ".join(sorted(np.dtype(code).name for code in _ALLOWED_DTYPES))


class StatefulAdapter(StateAdapter):
    """Delegates to the sampler's own ``state_dict()`` and ``load_state_dict()``."""

    name = "Stateful"

    def state_dict(self) -> dict[str, Any]:
        """Return the sampler's own state dict, checked against what a checkpoint can hold.

        Raises:
            CheckpointError: The sampler returned a value a checkpoint cannot hold.
        """
        state = self.sampler.state_dict()  # type: ignore[attr-defined]
        owner = f"{type(self.sampler).__qualname__}.state_dict()"
        if not isinstance(state, dict):
            raise CheckpointError(
                f"{owner} returned a {type(state).__name__}; it must return a dict with string "
                "keys (see docs/adapters.md)."
            )
        problem = find_unstorable(state, owner)
        if problem is not None:
            raise CheckpointError(
                f"{problem}. A sampler state may hold None, bool, int, float, str, numpy arrays "
                f"of dtype {_DTYPE_NAMES}, and lists, tuples and dicts with "
                "string keys of those; convert the value (e.g. a set to a sorted list, a numpy "
                "scalar to a Python number) or leave it out (see docs/adapters.md)."
            )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Hand the state dict back to the sampler.

        Raises:
            CorruptCheckpointError: The sampler could not load the stored state.
        """
        try:
            self.sampler.load_state_dict(state_dict)  # type: ignore[attr-defined]
        except (KeyError, IndexError, TypeError, ValueError) as e:
            # Most often the sampler's state format changed since the checkpoint was written.
            raise CorruptCheckpointError(
                f"{type(self.sampler).__qualname__}.load_state_dict() cannot load the stored "
                f"state ({type(e).__name__}: {e}); was its state format changed since the "
                "checkpoint was written?"
            ) from e


def find_unstorable(value: Any, path: str) -> str | None:
    """Describe the first value under ``value`` that the checkpoint codec cannot store, if any.

    Mirrors :func:`optuna_checkpoint.state._codec.encode` without pickles.

    Args:
        value: A state dict, or a value inside one.
        path: How to name ``value`` in the description, e.g. ``"MySampler.state_dict()"``.

    Returns:
        ``None`` if everything can be stored, else e.g. ``"MySampler.state_dict()['seen'] is a
        set"``.
    """
    if value is None or isinstance(value, (bool, int, float, str, np.integer, np.floating)):
        return None
    if isinstance(value, np.ndarray):
        if value.dtype.str in _ALLOWED_DTYPES:
            return None
        return f"{path} is a numpy array of dtype {value.dtype}"
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            problem = find_unstorable(item, f"{path}[{index}]")
            if problem is not None:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or key.startswith("$"):
                return f"{path} has the key {key!r}: keys must be strings not starting with '$'"
            problem = find_unstorable(item, f"{path}[{key!r}]")
            if problem is not None:
                return problem
        return None
    return f"{path} is a {type(value).__module__}.{type(value).__qualname__}"
