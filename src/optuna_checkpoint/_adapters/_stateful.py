"""Adapter for samplers that implement ``state_dict()`` / ``load_state_dict()`` themselves."""

from __future__ import annotations

from typing import Any

from optuna_checkpoint._adapters._protocol import StateAdapter


class StatefulAdapter(StateAdapter):
    """Delegates to the sampler's own ``state_dict()`` and ``load_state_dict()``."""

    name = "Stateful"

    def state_dict(self) -> dict[str, Any]:
        """Return the sampler's own state dict."""
        state: dict[str, Any] = self.sampler.state_dict()  # type: ignore[attr-defined]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Hand the state dict back to the sampler."""
        self.sampler.load_state_dict(state_dict)  # type: ignore[attr-defined]
