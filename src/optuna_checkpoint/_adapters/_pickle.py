"""Opt-in adapter that stores a sampler's whole ``__dict__`` with cloudpickle.

Only used when the user passed ``allow_pickle=True``: restoring it executes code from the
database, which is acceptable only when every writer of that database is trusted.
"""

from __future__ import annotations

from typing import Any

from optuna_checkpoint._adapters._protocol import StateAdapter
from optuna_checkpoint._codec import PickledValue


OBJECT_STATE = "object_state"


class PickleAdapter(StateAdapter):
    """Captures ``vars(sampler)`` as one cloudpickled value."""

    name = "Pickle"

    def state_dict(self) -> dict[str, Any]:
        """Wrap the sampler's attributes for pickling."""
        return {OBJECT_STATE: PickledValue(dict(vars(self.sampler)))}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Replace the sampler's attributes with the unpickled ones."""
        vars(self.sampler).update(self.require(state_dict, OBJECT_STATE))
