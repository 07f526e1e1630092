"""Describe a sampler's configuration as plain data, so a resume can compare it with the stream's.

The description walks the sampler's attributes and renders each as JSON-compatible data:
functions and classes by qualified name, floats by ``float.hex``, objects by class and attributes.
Attributes that hold state (RNGs) or pure caches are skipped by the state adapter that knows them;
what remains is configuration, so any change to a constructor argument shows up as a difference.
A large part (e.g. CMA-ES ``source_trials``) is stored as its length and a digest, so the stored
fingerprint stays small.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Iterator
import enum
import functools
import hashlib
import json
import types
from typing import Any
from typing import cast

import numpy as np
from optuna.samplers import BaseSampler
from optuna.samplers._lazy_random_state import LazyRandomState

from optuna_checkpoint.exceptions import UnsupportedSamplerError
from optuna_checkpoint.state.adapters import StateAdapter
from optuna_checkpoint.state.adapters import adapter_for


_MAX_DEPTH = 6
# A part whose description is longer than this (in JSON characters) is summarised by a digest.
_MAX_INLINE = 2048


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or "?"
    return f"{module}:{name}"


def describe_rng(lazy: LazyRandomState) -> str:
    """Describe an RNG by how it was seeded: ``"seed:42"``, a digest, or ``"unseeded"``.

    Called on a freshly constructed sampler. A generator seeded with an integer, as samplers'
    ``seed=`` arguments are, is described by that integer, so that a mismatch can show the
    seeds; any other seeding by a digest of the state (``"seeded:<digest>"``, which is also how
    releases up to 0.4 described every seeded generator: :func:`same_configuration` treats the
    two forms of one seed as equal).
    """
    rng = lazy._rng
    if rng is None:
        return "unseeded"
    seed = _integer_seed(rng)
    return f"seed:{seed}" if seed is not None else _rng_digest(rng)


def _rng_digest(rng: np.random.RandomState) -> str:
    _, key, pos, has_gauss, cached = rng.get_state(legacy=True)
    digest = hashlib.sha256(np.asarray(key, dtype=np.uint32).tobytes())
    digest.update(f"{pos}/{has_gauss}/{float(cached).hex()}".encode())
    return "seeded:" + digest.hexdigest()[:16]


def _integer_seed(rng: np.random.RandomState) -> int | None:
    """The integer ``rng`` was seeded with and has not drawn from since, if it was one.

    Seeding with an integer s puts s first in the Mersenne Twister's key (numpy's
    ``init_genrand``), so one candidate is enough to check.
    """
    _, key, pos, has_gauss, _ = rng.get_state(legacy=True)
    if pos != 624 or has_gauss:
        return None
    candidate = int(key[0])
    expected = cast("tuple[Any, ...]", np.random.RandomState(candidate).get_state(legacy=True))
    return candidate if np.array_equal(key, expected[1]) else None


def comparable(description: Any) -> Any:
    """``description`` with every ``"seed:<n>"`` in its digest form, for comparing."""
    if isinstance(description, str) and description.startswith("seed:"):
        return _rng_digest(np.random.RandomState(int(description[len("seed:") :])))
    if isinstance(description, dict):
        return {key: comparable(value) for key, value in description.items()}
    if isinstance(description, list):
        return [comparable(value) for value in description]
    return description


def same_configuration(stored: Any, current: Any) -> bool:
    """Whether two fingerprints describe the same configuration (old and new seed forms alike)."""
    return bool(stored == current or comparable(stored) == comparable(current))


def sampler_fingerprint(sampler: BaseSampler, adapter: StateAdapter) -> dict[str, Any]:
    """Return what a stream records of the configuration of ``sampler``, freshly constructed.

    Called while the sampler is fresh, so that seeded RNGs still show their seed.
    """
    return {"adapter": adapter.name, "sampler": describe(sampler, skip=adapter.CACHE_ATTRS)}


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
    if isinstance(value, types.ModuleType):
        return {"module": value.__name__}
    if _depth >= _MAX_DEPTH:
        return _qualname(type(value))
    description = _describe_composite(value, skip, _depth)
    if _depth == 0 or not isinstance(description, (dict, list)):
        return description
    text = json.dumps(description, sort_keys=True, separators=(",", ":"))
    if len(text) <= _MAX_INLINE:
        return description
    return {
        "summary": _qualname(type(value)),
        "length": len(value) if isinstance(value, (list, tuple, dict)) else None,
        "sha256": hashlib.sha256(text.encode()).hexdigest()[:16],
    }


def _describe_composite(value: Any, skip: Iterable[str], depth: int) -> Any:
    if isinstance(value, (list, tuple)):
        return [describe(v, _depth=depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): describe(v, _depth=depth + 1) for k, v in sorted(value.items(), key=str)}
    if isinstance(value, functools.partial):
        return {
            "partial": describe(value.func, _depth=depth + 1),
            "args": describe(list(value.args), _depth=depth + 1),
            "keywords": describe(value.keywords, _depth=depth + 1),
        }
    if isinstance(value, type) or (callable(value) and not hasattr(value, "__dict__")):
        return _qualname(value)
    if callable(value) and hasattr(value, "__code__"):
        return _describe_function(value, depth)
    attrs = getattr(value, "__dict__", None)
    if attrs is None:
        return _qualname(type(value))
    skipped = set(skip)
    if depth > 0 and isinstance(value, BaseSampler):
        # A sampler inside the sampler (PartialFixed's base, QMC's independent sampler): its
        # own adapter says which of its attributes are state or caches, as at the top level.
        skipped.update(_cache_attrs(value))
    return {
        "class": _qualname(type(value)),
        "attrs": {
            name: describe(attr, _depth=depth + 1)
            for name, attr in sorted(attrs.items())
            if name not in skipped
        },
    }


def _cache_attrs(sampler: BaseSampler) -> tuple[str, ...]:
    try:
        return adapter_for(sampler).CACHE_ATTRS
    except UnsupportedSamplerError:
        return ()


def _describe_function(function: Any, depth: int) -> Any:
    """A function or lambda: its name, a digest of its code, and the values it closes over.

    So an edited function differs, and so does a closure over another value
    (``make_constraint(0.5)`` and ``make_constraint(0.7)`` share their code).
    """
    description: dict[str, Any] = {
        "function": _qualname(function),
        "code": _code_digest(function.__code__),
    }
    cells = getattr(function, "__closure__", None) or ()
    names = function.__code__.co_freevars
    if cells:
        description["closure"] = {
            name: describe(_cell_contents(cell), _depth=depth + 1)
            for name, cell in zip(names, cells, strict=False)
        }
    defaults = getattr(function, "__defaults__", None)
    kwdefaults = getattr(function, "__kwdefaults__", None)
    if defaults:
        description["defaults"] = describe(list(defaults), _depth=depth + 1)
    if kwdefaults:
        description["kwdefaults"] = describe(kwdefaults, _depth=depth + 1)
    return description


def _cell_contents(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # a cell not yet assigned
        return None


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


_ABSENT = object()  # a key one description has and the other has not


def differences(stored: Any, current: Any, path: str = "") -> list[str]:
    """List human-readable differences between two descriptions, one line per leaf."""
    lines = []
    for where, was, now in _differing(stored, current, path):
        if was is _ABSENT:
            lines.append(f"{where}: not present before, now {_short(now)}")
        elif now is _ABSENT:
            lines.append(f"{where}: was {_short(was)}, now not present")
        else:
            lines.append(f"{where}: was {_short(was)}, now {_short(now)}")
    return lines


def _differing(stored: Any, current: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    """Each differing leaf as ``(path, stored, current)``; a missing side is ``_ABSENT``."""
    if _is_float(stored) or _is_float(current):
        if stored != current:
            yield path, stored, current
        return
    if isinstance(stored, dict) and isinstance(current, dict):
        for key in sorted(set(stored) | set(current)):
            child = f"{path}.{key}" if path else key
            yield from _differing(stored.get(key, _ABSENT), current.get(key, _ABSENT), child)
        return
    if isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current):
        for i, (a, b) in enumerate(zip(stored, current, strict=True)):
            yield from _differing(a, b, f"{path}[{i}]")
        return
    if stored != current and comparable(stored) != comparable(current):
        yield path or "<root>", stored, current


def readable_differences(stored: Any, current: Any) -> list[str]:
    """The differences between two fingerprints as their user reads them, each once.

    Named as the constructor argument is (``n_startup_trials``, not
    ``sampler.attrs._n_startup_trials``), a generator by its seed, and a seed that a sampler
    passes on to the sampler it holds (TPE's to its ``RandomSampler``) shown once, e.g.
    ``"seed: recorded 42, given 43"``.
    """
    shown: dict[tuple[str, str, str], str] = {}
    for where, was, now in _differing(stored, current, ""):
        parts = [p.lstrip("_") for p in where.split(".") if p != "attrs"]
        if parts[:1] == ["sampler"] and len(parts) > 1:
            parts = parts[1:]
        if parts[-1].endswith("rng") and any(_is_seed(v) for v in (was, now)):
            parts[-1] = "seed"
        key = (parts[-1], _readable(was), _readable(now))
        name = ".".join(parts)
        if key not in shown or len(name) < len(shown[key]):
            shown[key] = name
    return [f"{name}: recorded {was}, given {now}" for (_, was, now), name in shown.items()]


def sampler_named(fingerprint: Any) -> str:
    """The sampler a fingerprint describes as its constructor call starts: ``TPESampler(seed=1)``.

    Only the class and an integer seed are shown. The seed is that of the sampler's own
    generator, else of the sampler it holds (``QMCSampler`` passes its seed on).
    """
    description = fingerprint.get("sampler") if isinstance(fingerprint, dict) else None
    if not isinstance(description, dict) or not isinstance(description.get("class"), str):
        return str(fingerprint.get("adapter", "a sampler"))
    name = description["class"].rsplit(":", 1)[-1].rsplit(".", 1)[-1]
    seed = _integer_seed_of(description) or next(
        (
            found
            for held in (description.get("attrs") or {}).values()
            if isinstance(held, dict) and (found := _integer_seed_of(held))
        ),
        None,
    )
    return name if seed is None else f"{name}(seed={seed})"


def _integer_seed_of(description: dict[str, Any]) -> str | None:
    attrs = description.get("attrs")
    if not isinstance(attrs, dict):
        return None
    return next(
        (
            value[len("seed:") :]
            for key, value in sorted(attrs.items())
            if key.endswith("rng") and isinstance(value, str) and value.startswith("seed:")
        ),
        None,
    )


def _is_seed(value: Any) -> bool:
    return isinstance(value, str) and (
        value.startswith(("seed:", "seeded:")) or value == "unseeded"
    )


def _readable(value: Any) -> str:
    if value is _ABSENT:
        return "nothing"
    if isinstance(value, str) and value.startswith("seed:"):
        return value[len("seed:") :]
    if value == "unseeded":
        return "none"
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    return _short(value)


def _is_float(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"float"}


def _short(value: Any) -> str:
    if _is_float(value):
        return repr(float.fromhex(value["float"]))
    if isinstance(value, str) and value.startswith("seed:"):
        return f"seed {value[len('seed:') :]}"
    if isinstance(value, str) and value.startswith("seeded:"):
        return "a seed recorded only as a digest"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."
