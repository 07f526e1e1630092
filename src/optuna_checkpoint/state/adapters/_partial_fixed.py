"""State adapter for :class:`optuna.samplers.PartialFixedSampler`.

The fixed parameters are configuration; all state is the base sampler's, captured by the base
sampler's own adapter.
"""

from __future__ import annotations

from typing import Any

from optuna.samplers import PartialFixedSampler
from optuna.samplers import RandomSampler

from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.state.adapters._protocol import StateAdapter
from optuna_checkpoint.state.adapters._registry import adapter_of_held
from optuna_checkpoint.state.adapters._registry import register


BASE_ADAPTER = "base_adapter"  # the name of the base sampler's adapter, checked on restore
BASE_SAMPLER = "base_sampler"  # PartialFixedSampler._base_sampler


@register(PartialFixedSampler, reference=lambda: PartialFixedSampler({}, RandomSampler()))
class PartialFixedSamplerAdapter(StateAdapter):
    """Delegates to the adapter of ``PartialFixedSampler._base_sampler``."""

    name = "PartialFixedSampler"
    sampler: PartialFixedSampler

    def __init__(self, sampler: PartialFixedSampler) -> None:
        super().__init__(sampler)
        self.base = adapter_of_held(
            sampler._base_sampler, holder="PartialFixedSampler", role="base_sampler"
        )
        self.held = (self.base,)

    def state_dict(self) -> dict[str, Any]:
        """Capture the base sampler's state."""
        return {BASE_ADAPTER: self.base.name, BASE_SAMPLER: self.base.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the base sampler's state."""
        written_by = self.require(state_dict, BASE_ADAPTER)
        if written_by != self.base.name:
            raise CorruptCheckpointError(
                f"the checkpoint holds the state of a {written_by} base sampler, but this "
                f"PartialFixedSampler wraps one captured by {self.base.name}"
            )
        self.base.load_state_dict(self.require(state_dict, BASE_SAMPLER))
