"""The state one checkpoint holds: the wrapped sampler's, and the study's pruner's beside it.

The pruner's part rides in the sampler's payload under one reserved key, so it is committed in
the sampler's transaction and needs nothing new from the stores. Checkpoints without that key
(earlier releases, or studies without ``CheckpointingPruner``) load as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any
from typing import Protocol

from optuna_checkpoint._logging import get_logger
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import ConfigMismatchError


if TYPE_CHECKING:
    from optuna_checkpoint.state.adapters import StateAdapter


_logger = get_logger(__name__)

PRUNER_STATE_KEY = "optuna_checkpoint:pruner"
"""The key of the pruner's part in a checkpoint's state dict; no sampler adapter uses it."""


class PrunerState(Protocol):
    """What a checkpointed pruner (``CheckpointingPruner``) offers the checkpoint."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Any) -> None: ...


def sampler_part(state: dict[str, Any]) -> dict[str, Any]:
    """The wrapped sampler's part of a checkpoint's state dict."""
    return {k: v for k, v in state.items() if k != PRUNER_STATE_KEY}


class CheckpointState:
    """The sampler's adapter and the study's pruner, captured and restored together.

    Args:
        adapter: The wrapped sampler's state adapter.
    """

    def __init__(self, adapter: StateAdapter) -> None:
        self.adapter = adapter
        # The study's CheckpointingPruner, set when the sampler attaches to the study; else
        # the name of its pruner, which keeps no state worth saving.
        self.pruner: PrunerState | None = None
        self.bare_pruner_name = "none"

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state dict, with the pruner's part added when there is a pruner."""
        state = self.adapter.state_dict()
        if self.pruner is None:
            return state
        if PRUNER_STATE_KEY in state:
            raise CheckpointError(
                f"the sampler's state dict uses the key {PRUNER_STATE_KEY!r}, which "
                "optuna-checkpoint reserves for the pruner's state; rename it in state_dict()."
            )
        return {**state, PRUNER_STATE_KEY: self.pruner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the pruner's part, then the sampler's.

        A checkpoint without a pruner's part leaves the pruner as constructed, as a restart
        always did.

        Raises:
            ConfigMismatchError: The checkpoint holds a pruner's state but the study has no
                ``CheckpointingPruner``, or one configured differently.
        """
        pruner = self.pruner
        if PRUNER_STATE_KEY not in state:
            if pruner is not None:
                _logger.warning(
                    "The checkpoint was written without a CheckpointingPruner: %r starts as "
                    "constructed, so its decisions after this resume may differ from an "
                    "uninterrupted run's; the next checkpoints include its state.",
                    pruner,
                )
            self.adapter.load_state_dict(state)
            return
        if pruner is None:
            raise ConfigMismatchError(
                f"the study was checkpointed with the state of its pruner "
                f"{_pruner_name(state[PRUNER_STATE_KEY])}, but its pruner now is "
                f"{self.bare_pruner_name}, which keeps none. Create the study with the same "
                "pruner as before, or pass start_new_stream=True to CheckpointingSampler to "
                "discard the checkpoints."
            )
        pruner.load_state_dict(state[PRUNER_STATE_KEY])
        self.adapter.load_state_dict(sampler_part(state))


def _pruner_name(saved: Any) -> str:
    """The class name in a saved pruner part (see ``CheckpointingPruner.state_dict``)."""
    described = saved.get("config") if isinstance(saved, dict) else None
    cls = described.get("class") if isinstance(described, dict) else None
    return str(cls).rpartition(":")[2] if cls else "(unknown)"
