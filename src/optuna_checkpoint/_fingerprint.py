"""Describe a sampler's configuration as plain data, so a resume can compare it with the stream's.

The description walks the sampler's attributes and renders each as JSON-compatible data:
functions and classes by qualified name, floats by ``float.hex``, objects by class and attributes.
Attributes that hold state (RNGs) or pure caches are skipped by the state adapter that knows them;
what remains is configuration, so any change to a constructor argument shows up as a difference.
"""

from __future__ import annotations

from collections.abc import Iterable
import enum
import hashlib
import json
import types
from typing import Any

import numpy as np
from optuna.samplers._lazy_random_state import LazyRandomState


_MAX_DEPTH = 6


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or "?"
    return f"{module}:{name}"


def describe_rng(lazy: LazyRandomState) -> str:
    """Describe an RNG by how it was seeded: a digest of its state, or ``"unseeded"``.

    Called on a freshly constructed sampler, the digest identifies the seed it was given.
    """
    rng = lazy._rng
    if rng is None:
        return "unseeded"
    _, key, pos, has_gauss, cached = rng.get_state(legacy=True)
    digest = hashlib.sha256(np.asarray(key, dtype=np.uint32).tobytes())
    digest.update(f"{pos}/{has_gauss}/{float(cached).hex()}".encode())
    return "seeded:" + digest.hexdigest()[:16]


def describe(value: Any, *, skip: Iterable[str] = (), _depth: int = 0) -> Any:
    """Render ``value`` as JSON-compatible data that is stable across processes.

    Args:
        value: Usually a sampler.
        skip: Attribute names of ``value`` to leave out (state and caches).

    Returns:
        Nested dicts, lists, strings, ints, bools and ``None``.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return {"float": value.hex()}
    if isinstance(value, enum.Enum):
        return f"{_qualname(type(value))}.{value.name}"
    if isinstance(value, np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()[:16]
        return {"ndarray": value.dtype.str, "shape": list(value.shape), "sha256": digest}
    if isinstance(value, LazyRandomState):
        return describe_rng(value)
    if _depth >= _MAX_DEPTH:
        return _qualname(type(value))
    if isinstance(value, (list, tuple)):
        return [describe(v, _depth=_depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): describe(v, _depth=_depth + 1) for k, v in sorted(value.items(), key=str)}
    if isinstance(value, type) or (callable(value) and not hasattr(value, "__dict__")):
        return _qualname(value)
    if callable(value) and hasattr(value, "__code__"):
        # A function or lambda: its name plus a digest of its code, so an edited one differs.
        return {"function": _qualname(value), "code": _code_digest(value.__code__)}
    attrs = getattr(value, "__dict__", None)
    if attrs is None:
        return _qualname(type(value))
    skipped = set(skip)
    return {
        "class": _qualname(type(value)),
        "attrs": {
            name: describe(attr, _depth=_depth + 1)
            for name, attr in sorted(attrs.items())
            if name not in skipped
        },
    }


def _code_digest(code: types.CodeType) -> str:
    # Nested code objects (lambdas, comprehensions) are digested recursively: their repr holds
    # a memory address, which differs from one process to the next.
    digest = hashlib.sha256(code.co_code)
    for const in code.co_consts:
        text = _code_digest(const) if isinstance(const, types.CodeType) else repr(const)
        digest.update(text.encode())
    return digest.hexdigest()[:16]


def digest(description: Any) -> str:
    """Return a short stable digest of a description."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def differences(stored: Any, current: Any, path: str = "") -> list[str]:
    """List human-readable differences between two descriptions, one line per leaf."""
    if _is_float(stored) or _is_float(current):
        return (
            [] if stored == current else [f"{path}: was {_short(stored)}, now {_short(current)}"]
        )
    if isinstance(stored, dict) and isinstance(current, dict):
        lines = []
        for key in sorted(set(stored) | set(current)):
            child = f"{path}.{key}" if path else key
            if key not in stored:
                lines.append(f"{child}: not present before, now {_short(current[key])}")
            elif key not in current:
                lines.append(f"{child}: was {_short(stored[key])}, now not present")
            else:
                lines.extend(differences(stored[key], current[key], child))
        return lines
    if isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current):
        lines = []
        for i, (a, b) in enumerate(zip(stored, current, strict=True)):
            lines.extend(differences(a, b, f"{path}[{i}]"))
        return lines
    if stored != current:
        return [f"{path or '<root>'}: was {_short(stored)}, now {_short(current)}"]
    return []


def _is_float(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"float"}


def _short(value: Any) -> str:
    if _is_float(value):
        return repr(float.fromhex(value["float"]))
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."
