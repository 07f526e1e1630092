"""Which kill-fuzz cases run by default (the fast tier) and which only under ``-m soak``.

A parametrised kill-fuzz test is a grid of cases (sampler x signal x storage x crash point...).
The fast tier runs, of each test function, a set of cases chosen by a greedy set cover so that

* every value of every parameter appears in at least one fast case, and
* every combination of the *key axes* the function has (sampler or scenario, signal, storage;
  see :data:`KEY_AXES`) appears in at least one fast case: a test parametrised by sampler and
  signal runs every sampler x signal pair by default.

The choice is fixed: it depends on the parametrisation and :data:`FAST_TIER_SEED` only (which
breaks ties between equally good cases), never on ``--fuzz-seed``, so ``pytest`` always runs the
same cases. Every other case is marked ``soak`` (``tests/conftest.py`` does that at collection)
and still runs under ``pytest -m soak``; ``--fuzz-sample K`` runs K of them, chosen by the seed
with :func:`soak_sample`. A test pins cases of its own into the fast tier with
``@pytest.mark.fast_tier({"param": "value", ...}, ...)``: each dict selects the cases whose
parameters have those values (see :func:`value_key` for how values are named). A test whose key
axes need not meet in every combination says ``@pytest.mark.fast_tier(pairs=False)``: its fast
tier then holds every value of every parameter, not every pair.

The seed also drives the random kill instants (the ``kill_rng`` fixture, :func:`case_seed`): the
same seed and node id give the same instants, whichever xdist worker runs the case.

Pure functions only, so that ``tests/test_tiers.py`` can check them without collecting anything.
"""

from __future__ import annotations

from collections.abc import Hashable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
import enum
import itertools
import random
from typing import Any


FAST_TIER_SEED = 0
DEFAULT_FUZZ_SEED = 0

# Parameters that name what a case protects: its sampler (or scenario), its signal, its storage.
# A function's cases are covered in every combination of the key axes it has (each axis counted
# once, by the first of its names that the function has).
KEY_AXES: tuple[tuple[str, ...], ...] = (
    ("sampler", "scenario"),
    ("sig", "signal"),
    ("address", "server", "storage", "database_url"),
)

Case = Mapping[str, Hashable]  # parameter name -> value key
Requirement = tuple[tuple[str, Hashable], ...]


def value_key(value: Any) -> Hashable:
    """How a parameter value is named in a case: a signal by its name, others as themselves.

    Values that are not plain (lists, dataclasses...) are named by their ``repr``.
    """
    if isinstance(value, enum.Enum):
        return value.name
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def key_axes(names: Iterable[str]) -> tuple[str, ...]:
    """The parameters among ``names`` that are key axes, at most one per axis, in axis order."""
    present = set(names)
    chosen = []
    for axis in KEY_AXES:
        for name in axis:
            if name in present:
                chosen.append(name)
                break
    return tuple(chosen)


def requirements(case: Case, combined: Sequence[str]) -> set[Requirement]:
    """What one case covers: each of its (parameter, value), and its combination of key axes."""
    covered: set[Requirement] = {((name, value),) for name, value in case.items()}
    present = [name for name in combined if name in case]
    if len(present) >= 2:
        covered.add(tuple((name, case[name]) for name in present))
    return covered


def matches(case: Case, pin: Mapping[str, Any]) -> bool:
    """Whether ``case`` has every value ``pin`` names (``pin`` values may be raw values)."""
    return all(name in case and case[name] == value_key(v) for name, v in pin.items())


def fast_cases(
    cases: Sequence[Case],
    *,
    pins: Sequence[Mapping[str, Any]] = (),
    pairs: bool = True,
    seed: int = FAST_TIER_SEED,
) -> list[int]:
    """The indices of the cases of one test function that form its fast tier, sorted.

    The pinned cases first, then, greedily, the case that covers most of what is still
    uncovered (ties broken by an order shuffled with ``seed``), until every requirement of
    :func:`requirements` is met; without ``pairs``, the key axes are not combined. A function
    with one case, or none of parameters, keeps all.

    Raises:
        ValueError: A pin matches no case (a typo would otherwise pin nothing, silently).
    """
    if len(cases) <= 1:
        return list(range(len(cases)))
    combined = key_axes(name for case in cases for name in case) if pairs else ()
    needs = [requirements(case, combined) for case in cases]
    uncovered: set[Requirement] = set().union(*needs)
    chosen: set[int] = set()
    for pin in pins:
        hits = [i for i, case in enumerate(cases) if matches(case, pin)]
        if not hits:
            raise ValueError(f"fast_tier pin {dict(pin)} matches none of the cases")
        chosen.update(hits)
    for i in chosen:
        uncovered -= needs[i]
    order = list(range(len(cases)))
    random.Random(f"fast-tier:{seed}").shuffle(order)
    while uncovered:
        best = max(order, key=lambda i: len(needs[i] & uncovered))  # first best in the order
        chosen.add(best)
        uncovered -= needs[best]
    return sorted(chosen)


def soak_sample(node_ids: Iterable[str], k: int, seed: int) -> list[str]:
    """``k`` of the soak cases ``node_ids`` (all if fewer), chosen by ``seed``, sorted.

    The same ids and seed give the same sample whatever order they were collected in.
    """
    pool = sorted(set(node_ids))
    if k >= len(pool):
        return pool
    return sorted(random.Random(f"soak-sample:{seed}").sample(pool, k))


def case_seed(seed: int, node_id: str) -> str:
    """The seed of one case's random kill instants: the run's seed and the case's node id."""
    return f"kill-fuzz:{seed}:{node_id}"


def cover_report(
    cases: Sequence[Case], chosen: Iterable[int], *, pairs: bool = True
) -> set[Requirement]:
    """The requirements the cases ``chosen`` leave uncovered (empty when the tier is sound)."""
    combined = key_axes(name for case in cases for name in case) if pairs else ()
    needs = [requirements(case, combined) for case in cases]
    if not needs:
        return set()
    everything: set[Requirement] = set().union(*needs)
    return everything - set().union(set(), *(needs[i] for i in chosen))


def grid(**axes: Sequence[Hashable]) -> list[dict[str, Hashable]]:
    """Every combination of the given parameter values, as cases (for tests and examples)."""
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]
