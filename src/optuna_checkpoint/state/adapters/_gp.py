"""State adapter for :class:`optuna.samplers.GPSampler`.

Besides its two generators (its own, for the acquisition optimisation and QMC seeds, and that of
the independent sampler used for start-up trials), ``GPSampler`` keeps the Gaussian processes it
fitted last, one per objective and one per constraint, and starts the next kernel fit from their
hyperparameters. The fit is a local optimisation, so a different start gives different
hyperparameters and different proposals: restoring the generators alone diverges.

Only the hyperparameters are read from those cached regressors (``fit_kernel_params`` builds a new
regressor on the current trials from them), so they are what is stored, exactly: the inverse
squared length scales (a float64 array), the kernel scale and the noise variance (floats) of each.
On restore each becomes a regressor carrying those values and no training data.

torch is imported only when a stored cache is restored: this module is imported with the package,
whether or not torch is installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

import numpy as np
from optuna.samplers import GPSampler

from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.state.adapters._protocol import StateAdapter
from optuna_checkpoint.state.adapters._registry import adapter_of_held
from optuna_checkpoint.state.adapters._registry import register
from optuna_checkpoint.state.adapters._rng import load_rng_state_dict
from optuna_checkpoint.state.adapters._rng import rng_state_dict


if TYPE_CHECKING:
    from optuna._gp.gp import GPRegressor
    import torch  # type: ignore[import-not-found,unused-ignore]


RNG = "rng"  # GPSampler._rng
INDEPENDENT_SAMPLER = "independent_sampler"  # GPSampler._independent_sampler
GPRS = "gprs"  # GPSampler._gprs_cache_list
CONSTRAINTS_GPRS = "constraints_gprs"  # GPSampler._constraints_gprs_cache_list

# The kernel hyperparameters of one cached regressor: all that the next fit reads from it.
INVERSE_SQUARED_LENGTHSCALES = "inverse_squared_lengthscales"
KERNEL_SCALE = "kernel_scale"
NOISE_VAR = "noise_var"


@register(GPSampler)
class GPSamplerAdapter(StateAdapter):
    """Captures both generators and the kernel hyperparameters the next fit starts from."""

    name = "GPSampler"
    # Left out of the configuration fingerprint: the intersection search space is a pure
    # function of the study's trials, and the regressor caches are state, captured below.
    CACHE_ATTRS = (
        "_intersection_search_space",
        "_gprs_cache_list",
        "_constraints_gprs_cache_list",
    )
    sampler: GPSampler

    def __init__(self, sampler: GPSampler) -> None:
        super().__init__(sampler)
        # Resolved now, so an independent sampler nothing can capture is refused at construction.
        self._independent = adapter_of_held(
            sampler._independent_sampler, holder="GPSampler", role="independent_sampler"
        )
        self.held = (self._independent,)

    def state_dict(self) -> dict[str, Any]:
        """Capture the generators and the cached kernel hyperparameters."""
        return {
            RNG: rng_state_dict(self.sampler._rng),
            INDEPENDENT_SAMPLER: self._independent.state_dict(),
            GPRS: _hyperparameters_of(self.sampler._gprs_cache_list),
            CONSTRAINTS_GPRS: _hyperparameters_of(self.sampler._constraints_gprs_cache_list),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the generators and rebuild the cached regressors from their hyperparameters."""
        load_rng_state_dict(self.sampler._rng, self.require(state_dict, RNG))
        self._independent.load_state_dict(self.require(state_dict, INDEPENDENT_SAMPLER))
        self.sampler._gprs_cache_list = _regressors_from(self.require(state_dict, GPRS))
        self.sampler._constraints_gprs_cache_list = _regressors_from(
            self.require(state_dict, CONSTRAINTS_GPRS)
        )


def _hyperparameters_of(gprs: list[GPRegressor] | None) -> list[dict[str, Any]] | None:
    if gprs is None:
        return None
    return [
        {
            INVERSE_SQUARED_LENGTHSCALES: _float64(gpr.inverse_squared_lengthscales),
            # 0-d tensors, kept as Python floats (exact: they are float64).
            KERNEL_SCALE: float(_float64(gpr.kernel_scale)),
            NOISE_VAR: float(_float64(gpr.noise_var)),
        }
        for gpr in gprs
    ]


def _float64(tensor: torch.Tensor) -> np.ndarray:
    array = tensor.detach().cpu().numpy()
    if array.dtype != np.float64:
        # Converting would change the next fit's starting point; Optuna 5.0 only uses float64.
        raise CheckpointError(
            f"GPSampler holds a {array.dtype} kernel hyperparameter, where optuna-checkpoint "
            "expects float64; this Optuna version is not supported by the GPSampler adapter. "
            "Please report it with your Optuna version."
        )
    return np.array(array)  # a copy: the tensor's memory is torch's


def _regressors_from(stored: list[dict[str, Any]] | None) -> list[GPRegressor] | None:
    if stored is None:
        return None
    try:
        hyperparameters = [
            (
                np.asarray(entry[INVERSE_SQUARED_LENGTHSCALES], dtype=np.float64),
                float(entry[KERNEL_SCALE]),
                float(entry[NOISE_VAR]),
            )
            for entry in stored
        ]
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptCheckpointError(f"GPSampler kernel cache is incomplete: {e!r}") from e
    if any(lengthscales.ndim != 1 for lengthscales, _, _ in hyperparameters):
        raise CorruptCheckpointError("GPSampler kernel cache has length scales of the wrong shape")
    # Imported here: this module must import without torch, and a cache exists only once
    # GPSampler itself has used torch.
    from optuna._gp.gp import GPRegressor
    import torch  # type: ignore[import-not-found,unused-ignore]

    regressors = []
    for lengthscales, kernel_scale, noise_var in hyperparameters:
        dim = lengthscales.shape[0]
        # No training data: the next fit reads only the hyperparameters from a cached regressor
        # (and their number, to notice a changed search space).
        regressors.append(
            GPRegressor(
                is_categorical=torch.zeros(dim, dtype=torch.bool),
                X_train=torch.zeros((0, dim), dtype=torch.float64),
                y_train=torch.zeros(0, dtype=torch.float64),
                inverse_squared_lengthscales=torch.from_numpy(lengthscales),
                kernel_scale=torch.tensor(kernel_scale, dtype=torch.float64),
                noise_var=torch.tensor(noise_var, dtype=torch.float64),
            )
        )
    return regressors
