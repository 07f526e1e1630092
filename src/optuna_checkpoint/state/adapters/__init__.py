"""State adapters: one per sampler type, picked by :func:`adapter_for`."""

from optuna_checkpoint.state.adapters import _brute_force  # noqa: F401  (registers the adapter)
from optuna_checkpoint.state.adapters import _cmaes  # noqa: F401
from optuna_checkpoint.state.adapters import _gp  # noqa: F401
from optuna_checkpoint.state.adapters import _grid  # noqa: F401
from optuna_checkpoint.state.adapters import _nsga  # noqa: F401
from optuna_checkpoint.state.adapters import _partial_fixed  # noqa: F401
from optuna_checkpoint.state.adapters import _qmc  # noqa: F401
from optuna_checkpoint.state.adapters import _random  # noqa: F401
from optuna_checkpoint.state.adapters import _tpe  # noqa: F401
from optuna_checkpoint.state.adapters._protocol import StateAdapter
from optuna_checkpoint.state.adapters._protocol import Stateful
from optuna_checkpoint.state.adapters._registry import adapter_for


__all__ = ["StateAdapter", "Stateful", "adapter_for"]
