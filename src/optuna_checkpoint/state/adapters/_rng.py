"""Move a :class:`LazyRandomState` in and out of a plain, numpy-version-portable state dict.

A pickled ``RandomState`` from numpy 2 does not load under numpy 1, but its ``get_state()``
tuple does, so that is what is stored: the 624-word MT19937 key and three scalars.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from optuna.samplers._lazy_random_state import LazyRandomState

from optuna_checkpoint.exceptions import CorruptCheckpointError


KEY = "key"
POS = "pos"
HAS_GAUSS = "has_gauss"
CACHED_GAUSSIAN = "cached_gaussian"

_MT_WORDS = 624


def rng_state_dict(lazy: LazyRandomState) -> dict[str, Any]:
    """Capture an RNG; an unseeded one is materialised first, exactly as its first use would."""
    algorithm, key, pos, has_gauss, cached_gaussian = lazy.rng.get_state()
    assert algorithm == "MT19937"
    return {
        KEY: np.asarray(key, dtype=np.uint32),
        POS: int(pos),
        HAS_GAUSS: int(has_gauss),
        CACHED_GAUSSIAN: float(cached_gaussian),
    }


def load_rng_state_dict(lazy: LazyRandomState, state: dict[str, Any]) -> None:
    """Restore an RNG captured by :func:`rng_state_dict`."""
    try:
        key = np.asarray(state[KEY], dtype=np.uint32)
        pos, has_gauss, cached = int(state[POS]), int(state[HAS_GAUSS]), state[CACHED_GAUSSIAN]
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptCheckpointError(f"RNG state is incomplete: {e!r}") from e
    if key.shape != (_MT_WORDS,) or not 0 <= pos <= _MT_WORDS:
        raise CorruptCheckpointError("RNG state has the wrong shape for MT19937")
    lazy.rng.set_state(("MT19937", key, pos, has_gauss, float(cached)))
