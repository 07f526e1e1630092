"""State adapter for :class:`optuna.samplers.NSGAIISampler` and ``NSGAIIISampler``.

Both samplers draw from two generators: ``_rng``, which they share (the very same object) with
their child-generation strategy and, for NSGA-III, their elite-selection strategy, and that of
the ``RandomSampler`` that samples parameters outside the relative search space. Both are
restored in place, so the strategies keep sharing the sampler's generator.

Generations and parent populations are not held in memory: the samplers store them in the
study (trial attribute ``<Sampler>:generation``, study attribute ``<Sampler>:parent:<gen>``).
Interrupted trials are hidden from the sampler, so their generation attributes do not count;
the parent population that only interrupted trials used is withdrawn on resume
(:meth:`NSGASamplerAdapter.forget_interrupted`), so the retry selects the parents again, as the
uninterrupted run did.
"""

from __future__ import annotations

from collections.abc import Collection
from collections.abc import Iterable
from collections.abc import Mapping
import random
from typing import Any

import numpy as np
from optuna.samplers import NSGAIIISampler
from optuna.samplers import NSGAIISampler
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.samplers._nsgaiii._elite_population_selection_strategy import (
    NSGAIIIElitePopulationSelectionStrategy,
)
from optuna.samplers.nsgaii._after_trial_strategy import NSGAIIAfterTrialStrategy
from optuna.samplers.nsgaii._child_generation_strategy import NSGAIIChildGenerationStrategy
from optuna.samplers.nsgaii._elite_population_selection_strategy import (
    NSGAIIElitePopulationSelectionStrategy,
)
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from optuna_checkpoint.exceptions import UnsupportedSamplerError
from optuna_checkpoint.state.adapters._random import GeneratorAndRandomSamplerAdapter
from optuna_checkpoint.state.adapters._registry import register


_STRATEGIES = (
    "_elite_population_selection_strategy",
    "_child_generation_strategy",
    "_after_trial_strategy",
)
# Optuna's own strategies: their only generator is the sampler's _rng, checked to be shared.
_KNOWN_STRATEGIES = (
    NSGAIIElitePopulationSelectionStrategy,
    NSGAIIIElitePopulationSelectionStrategy,
    NSGAIIChildGenerationStrategy,
    NSGAIIAfterTrialStrategy,
)
_GENERATOR_TYPES = (LazyRandomState, np.random.RandomState, np.random.Generator, random.Random)

NSGASampler = NSGAIISampler | NSGAIIISampler


@register(NSGAIISampler)
@register(NSGAIIISampler)
class NSGASamplerAdapter(GeneratorAndRandomSamplerAdapter):
    """Captures the shared ``_rng`` and the ``_random_sampler`` of NSGA-II and NSGA-III.

    Raises:
        UnsupportedSamplerError: A custom strategy passed to the sampler holds a random
            generator of its own, which this adapter cannot see.
    """

    name = "NSGASampler"
    # Search-space intersection: a pure function of the study's trials.
    CACHE_ATTRS = ("_search_space",)
    sampler: NSGASampler

    def __init__(self, sampler: NSGASampler) -> None:
        super().__init__(sampler)
        for attr in _STRATEGIES:
            _check_strategy(sampler, attr)

    def forget_interrupted(
        self,
        storage: BaseStorage,
        study_id: int,
        trials: Iterable[FrozenTrial],
        hidden_trial_ids: Collection[int],
    ) -> None:
        """Withdraw the parent populations that only interrupted trials have used.

        The first trial of a generation selects its parents (NSGA-III draws from ``_rng`` to do
        so), caches their ids in the study attribute ``<Sampler>:parent:<gen>`` and uses them in
        selection order; later trials read the cache, which lists them in trial order. A retry
        that found the cache of its interrupted attempt would thus skip the draws and pick from
        a reordered list. A cache that no trial of the uninterrupted run has used is set to
        ``None``, which Optuna reads as missing, so the retry selects the parents afresh.

        Args:
            storage: The study's storage.
            study_id: The study's id.
            trials: All the study's trials.
            hidden_trial_ids: The interrupted trials, hidden from the sampler.
        """
        if not hidden_trial_ids:
            return
        generation_key = self.sampler._get_generation_key()
        interrupted: set[int] = set()
        kept: set[int] = set()
        for trial in trials:
            generation = trial.system_attrs.get(generation_key)
            if isinstance(generation, int):
                (interrupted if trial._trial_id in hidden_trial_ids else kept).add(generation)
        prefix = self.sampler._get_parent_cache_key_prefix()
        cached = storage.get_study_system_attrs(study_id)
        for generation in sorted(interrupted - kept):
            key = f"{prefix}{generation}"
            if cached.get(key) is not None:
                storage.set_study_system_attr(study_id, key, None)

    @classmethod
    def carry_over(cls, attrs: Mapping[str, Any], trial_ids: Mapping[int, int]) -> dict[str, Any]:
        """Point the copied parent populations at the copied trials, or withdraw them.

        A parent population is cached as a list of trial ids, which are the old study's in a
        copy. One that names a trial the copy lacks (a fork: a later generation's parents) is
        withdrawn, so the sampler selects it again when it gets there.
        """
        prefixes = tuple(s._get_parent_cache_key_prefix() for s in (NSGAIISampler, NSGAIIISampler))
        changes: dict[str, Any] = {}
        for key, cached in attrs.items():
            if not key.startswith(prefixes) or not isinstance(cached, list):
                continue
            if all(trial_id in trial_ids for trial_id in cached):
                changes[key] = [trial_ids[t] for t in cached]
            else:
                changes[key] = None
        return changes


def _check_strategy(sampler: NSGASampler, attr: str) -> None:
    strategy = getattr(sampler, attr)
    if isinstance(strategy, _KNOWN_STRATEGIES):
        own = getattr(strategy, "_rng", sampler._rng)
        if own is not sampler._rng:
            raise UnsupportedSamplerError(
                f"{type(sampler).__name__}.{attr} has a random generator that is not the "
                "sampler's own; optuna-checkpoint cannot capture it. Construct the sampler "
                "with Optuna's default strategies, or make the sampler Stateful."
            )
        return
    for name, value in _held_values(strategy):
        if isinstance(value, _GENERATOR_TYPES) and value is not sampler._rng:
            raise UnsupportedSamplerError(
                f"the custom {attr.strip('_')} {strategy!r} of {type(sampler).__name__} holds "
                f"a random generator of its own ({name}), which optuna-checkpoint cannot "
                "capture, so a resumed study would diverge. Use the sampler's generator "
                f"(sampler._rng), or subclass {type(sampler).__name__} and implement "
                "state_dict()/load_state_dict() (optuna_checkpoint.Stateful)."
            )


def _held_values(strategy: object) -> list[tuple[str, Any]]:
    """The attributes, closure cells and bound instance of a custom strategy."""
    held: list[tuple[str, Any]] = list(getattr(strategy, "__dict__", {}).items())
    bound = getattr(strategy, "__self__", None)
    if bound is not None:
        held.extend(getattr(bound, "__dict__", {}).items())
    code = getattr(strategy, "__code__", None)
    for name, cell in zip(
        getattr(code, "co_freevars", ()),
        getattr(strategy, "__closure__", None) or (),
        strict=False,
    ):
        try:
            held.append((name, cell.cell_contents))
        except ValueError:  # an empty cell
            continue
    return held
