"""Derive independent random streams from a sampler's state, reproducibly.

A worker other than ``main``, and a reseed that Optuna asks for, must not repeat the generator it
starts from, yet must give the same result on every run. Each generator found in an adapter's
state dict is replaced by one seeded with ``numpy.random.SeedSequence(entropy=<its own state>,
spawn_key=(<key of the name>, <generator index>))``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from optuna_checkpoint.state.adapters._rng import CACHED_GAUSSIAN
from optuna_checkpoint.state.adapters._rng import HAS_GAUSS
from optuna_checkpoint.state.adapters._rng import KEY
from optuna_checkpoint.state.adapters._rng import POS


def spawn_key(name: str) -> int:
    """A stable 63-bit number for a name, used as its ``SeedSequence`` spawn key."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1


def spawn_rng_states(state: Any, name: str) -> tuple[Any, int]:
    """Re-seed every RNG found in an adapter's state dict for ``name`` (a worker id, a reseed).

    RNG states are recognised by the keys :mod:`optuna_checkpoint.state.adapters._rng` writes. Each
    is replaced by the state of a generator seeded from its own words and ``name``, so the
    result depends only on the original seeds and the name.

    Returns:
        The new state dict and the number of generators re-seeded.
    """
    count = 0
    key = spawn_key(name)

    def walk(node: Any) -> Any:
        nonlocal count
        if isinstance(node, dict):
            if {KEY, POS, HAS_GAUSS, CACHED_GAUSSIAN} <= node.keys():
                count += 1
                return _spawned_rng_state(node, key, count)
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(state), count


def _spawned_rng_state(rng_state: dict[str, Any], key: int, index: int) -> dict[str, Any]:
    words = np.asarray(rng_state[KEY], dtype=np.uint32)
    entropy = [int(w) for w in words] + [int(rng_state[POS])]
    seed_sequence = np.random.SeedSequence(entropy, spawn_key=(key, index))
    generator = np.random.RandomState(np.random.MT19937(seed_sequence))
    _, spawned_key, pos, has_gauss, cached = generator.get_state()
    return {
        KEY: np.asarray(spawned_key, dtype=np.uint32),
        POS: int(pos),
        HAS_GAUSS: int(has_gauss),
        CACHED_GAUSSIAN: float(cached),
    }
