"""NSGA-II/III, multi-objective and constrained TPE, and warm-started CMA-ES under the wrapper.

In one process, on SQLite files: the NSGA adapter's state round trip (the generator the sampler
shares with its strategies stays one object), a wrapped run equal bit for bit to the bare
sampler's, a trial interrupted right after it selected and cached a generation's parents and
then resumed (with a control that leaves the cache in place and diverges), and the configuration
fingerprint of functions and warm-start trials, compared across processes.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import contextlib
import functools
import gc
import json
import math
from pathlib import Path
import subprocess
import sys
from typing import Any
from typing import Literal
import weakref

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import FloatDistribution
from optuna.samplers import BaseSampler
from optuna.samplers import CmaEsSampler
from optuna.samplers import NSGAIIISampler
from optuna.samplers import NSGAIISampler
from optuna.samplers import RandomSampler
from optuna.samplers import TPESampler
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.samplers.nsgaii import BaseCrossover
from optuna.samplers.nsgaii import BLXAlphaCrossover
from optuna.samplers.nsgaii import SBXCrossover
from optuna.samplers.nsgaii import SPXCrossover
from optuna.samplers.nsgaii import UNDXCrossover
from optuna.samplers.nsgaii import VSBXCrossover
from optuna.storages import BaseStorage
from optuna.storages import InMemoryStorage
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import pytest

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import UnsupportedSamplerError
from optuna_checkpoint import load_sampler_state_dict
from optuna_checkpoint import sampler_state_dict
from optuna_checkpoint import uninterrupted_trials
from optuna_checkpoint.state._codec import decode
from optuna_checkpoint.state._codec import encode
from optuna_checkpoint.state._fingerprint import differences
from optuna_checkpoint.state.adapters import adapter_for
from optuna_checkpoint.state.adapters._nsga import NSGASamplerAdapter
from optuna_checkpoint.state.adapters._rng import load_rng_state_dict
from optuna_checkpoint.state.adapters._rng import rng_state_dict


pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

SEED = 4  # a seed whose cached parents, read back in trial order, change the next child
POPULATION = 4
N_TRIALS = 10
Directions = Sequence[Literal["minimize", "maximize"]]
TWO: Directions = ("minimize", "minimize")


class Failure(Exception):
    """A deterministic failure of the objectives, caught: the trial FAILs genuinely."""


def two_objectives(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("x", -5.0, 5.0)
    y = trial.suggest_float("y", 0.0, 3.0)
    n = trial.suggest_int("n", 1, 5)
    kind = trial.suggest_categorical("kind", ["a", "b"])
    if n == 5 and kind == "b":
        raise Failure
    return x**2 + y + 0.1 * n, (x - 2.0) ** 2 + (y - 3.0) ** 2 + (kind == "b")


def one_objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5.0, 5.0)
    y = trial.suggest_float("y", 0.0, 3.0)
    return (x - 1.0) ** 2 + (y - 2.0) ** 2


def x_at_most_one(trial: FrozenTrial) -> list[float]:
    return [trial.params["x"] - 1.0]


def bound_on_x(limit: float) -> Callable[[FrozenTrial], list[float]]:
    """A closure: its code is the same for every ``limit``."""
    return lambda trial: [trial.params["x"] - limit]


def source_trials(n: int = 12, shift: float = 0.0) -> list[FrozenTrial]:
    distributions: dict[str, BaseDistribution] = {
        "x": FloatDistribution(-5.0, 5.0),
        "y": FloatDistribution(0.0, 3.0),
    }
    return [
        optuna.trial.create_trial(
            params={"x": -4.0 + 8.0 * i / n, "y": 3.0 * i / n},
            distributions=distributions,
            value=math.sin(i) + shift,
        )
        for i in range(n)
    ]


Factory = Callable[[int | None], BaseSampler]


def nsga(
    kind: type[NSGAIISampler] | type[NSGAIIISampler],
    crossover: type[BaseCrossover] | None = None,
    **options: Any,
) -> Factory:
    """An NSGA sampler of :data:`POPULATION`, with a crossover of its own (built inside tests,
    where their experimental warnings are filtered)."""

    def make(seed: int | None) -> BaseSampler:
        chosen = None if crossover is None else crossover()
        return kind(population_size=POPULATION, seed=seed, crossover=chosen, **options)

    return make


# name: (sampler factory, objective, directions).
CONFIGS: dict[str, tuple[Factory, Callable[[optuna.Trial], Any], Directions]] = {
    "nsga2": (nsga(NSGAIISampler), two_objectives, TWO),
    "nsga2-sbx": (nsga(NSGAIISampler, crossover=SBXCrossover), two_objectives, TWO),
    "nsga2-blxalpha": (nsga(NSGAIISampler, crossover=BLXAlphaCrossover), two_objectives, TWO),
    "nsga2-undx": (nsga(NSGAIISampler, crossover=UNDXCrossover), two_objectives, TWO),
    "nsga2-spx": (nsga(NSGAIISampler, crossover=SPXCrossover), two_objectives, TWO),
    "nsga2-vsbx": (nsga(NSGAIISampler, crossover=VSBXCrossover), two_objectives, TWO),
    "nsga2-constrained": (
        nsga(NSGAIISampler, crossover=SBXCrossover, constraints_func=x_at_most_one),
        two_objectives,
        TWO,
    ),
    "nsga3": (nsga(NSGAIIISampler), two_objectives, TWO),
    "nsga3-constrained": (
        nsga(NSGAIIISampler, crossover=UNDXCrossover, constraints_func=x_at_most_one),
        two_objectives,
        TWO,
    ),
    "tpe-multiobjective": (
        lambda seed: TPESampler(seed=seed, n_startup_trials=3),
        two_objectives,
        TWO,
    ),
    "tpe-constraints-lambda": (
        lambda seed: TPESampler(
            seed=seed, n_startup_trials=3, constraints_func=lambda t: [t.params["x"] - 1.0]
        ),
        one_objective,
        ("minimize",),
    ),
    "cmaes-source-trials": (
        lambda seed: CmaEsSampler(seed=seed, source_trials=source_trials()),
        one_objective,
        ("minimize",),
    ),
    "cmaes-x0-sigma0": (
        lambda seed: CmaEsSampler(seed=seed, x0={"x": 0.5, "y": 1.0}, sigma0=0.4),
        one_objective,
        ("minimize",),
    ),
}
NSGA_CONFIGS = [name for name in CONFIGS if name.startswith("nsga")]

Key = tuple[Any, ...]


def key(trial: FrozenTrial) -> Key:
    """A trial's state, params and values, exactly."""
    params = tuple(
        sorted((k, v.hex() if isinstance(v, float) else v) for k, v in trial.params.items())
    )
    values = None if trial.values is None else tuple(v.hex() for v in trial.values)
    return trial.state.name, params, values


def bare_run(name: str, n_trials: int = N_TRIALS) -> optuna.Study:
    make, objective, directions = CONFIGS[name]
    study = optuna.create_study(sampler=make(SEED), directions=list(directions))
    study.optimize(objective, n_trials=n_trials, catch=(Failure,))
    return study


_references: dict[str, list[Key]] = {}


def reference(name: str) -> list[Key]:
    """The bare sampler's trajectory, in memory (floats round-trip exactly through SQLite)."""
    if name not in _references:
        _references[name] = [key(t) for t in bare_run(name).trials]
    return _references[name]


def make_storage(kind: str, tmp_path: Path) -> str | BaseStorage:
    """A SQLite file, or Optuna's in-memory storage (many times faster: no commit to disk)."""
    return f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else InMemoryStorage()


def open_study(storage: str | BaseStorage, name: str, sampler: BaseSampler) -> optuna.Study:
    return optuna.create_study(
        study_name="evo",
        storage=storage,
        sampler=sampler,
        directions=list(CONFIGS[name][2]),
        load_if_exists=True,
    )


def run_with_interrupted_trial(
    storage: str | BaseStorage, name: str, sampler: Callable[[], BaseSampler]
) -> optuna.Study:
    """Run ``POPULATION`` trials, start the next one and abandon it after it sampled, resume.

    The abandoned trial is the first of generation 1: it selected the parents and cached them
    in a study attribute.
    """
    run_then_abandon_a_trial(storage, name, sampler(), POPULATION)
    resumed = open_study(storage, name, CheckpointingSampler(sampler()))
    resumed.optimize(CONFIGS[name][1], n_trials=N_TRIALS - POPULATION, catch=(Failure,))
    return resumed


def run_then_abandon_a_trial(
    storage: str | BaseStorage, name: str, sampler: BaseSampler, n_trials: int
) -> None:
    """Run ``n_trials``, then start one more, let it sample and drop it as a killed process would.

    The trial stays RUNNING. Its sampler must be gone for the next one to take the stream over;
    Optuna's warning about a caught failure would keep it alive, through the traceback the log
    capture holds, so nothing below ERROR is logged.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the test's fixture restores it
    objective = CONFIGS[name][1]
    study = open_study(storage, name, CheckpointingSampler(sampler))
    study.optimize(objective, n_trials=n_trials, catch=(Failure,))
    trial = study.ask()
    with contextlib.suppress(Failure):
        objective(trial)
    abandoned = weakref.ref(study.sampler)
    del study, trial, sampler
    gc.collect()
    assert abandoned() is None, "the abandoned sampler is still alive and holds its lease"


# -- the adapter -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [NSGAIISampler, NSGAIIISampler])
def test_adapter_is_picked_for_both_samplers_and_a_subclass_adding_no_attributes(
    kind: type[NSGAIISampler] | type[NSGAIIISampler],
) -> None:
    class Derived(kind):  # type: ignore[valid-type, misc]
        pass

    class WithState(kind):  # type: ignore[valid-type, misc]
        def __init__(self, seed: int) -> None:
            super().__init__(seed=seed)
            self._generations = 0

    assert type(adapter_for(kind(seed=1))) is NSGASamplerAdapter
    assert type(adapter_for(Derived(seed=1))) is NSGASamplerAdapter
    with pytest.raises(UnsupportedSamplerError, match=r"adds attributes .*: _generations"):
        adapter_for(WithState(seed=1))


@pytest.mark.parametrize("kind", [NSGAIISampler, NSGAIIISampler])
def test_state_round_trip_restores_both_generators_and_keeps_the_shared_one_shared(
    kind: type[NSGAIISampler] | type[NSGAIIISampler],
) -> None:
    used = kind(seed=SEED)
    used._rng.rng.rand(17)
    used._random_sampler._rng.rng.rand(5)
    stored = decode(encode(NSGASamplerAdapter(used).state_dict()))
    fresh = kind(seed=None)
    shared = fresh._rng

    NSGASamplerAdapter(fresh).load_state_dict(stored)

    # Restored in place: the strategies still draw from the sampler's own generator.
    assert fresh._rng is shared
    assert fresh._child_generation_strategy._rng is shared  # type: ignore[attr-defined]
    if kind is NSGAIIISampler:
        assert fresh._elite_population_selection_strategy._rng is shared  # type: ignore[attr-defined]
    assert np.array_equal(fresh._rng.rng.rand(8), used._rng.rng.rand(8))
    assert np.array_equal(
        fresh._random_sampler._rng.rng.rand(8), used._random_sampler._rng.rng.rand(8)
    )


def test_custom_strategy_with_a_generator_of_its_own_is_refused_at_construction() -> None:
    class OwnRandomness:
        def __init__(self) -> None:
            self.rng = np.random.RandomState(0)

        def __call__(self, study: Any, search_space: Any, parents: Any) -> dict[str, Any]:
            return {}

    sampler = NSGAIISampler(seed=1, child_generation_strategy=OwnRandomness())
    with pytest.raises(UnsupportedSamplerError, match=r"child_generation_strategy .* \(rng\)"):
        CheckpointingSampler(sampler)


def test_stateless_custom_strategy_is_accepted_as_configuration() -> None:
    def no_op(study: Any, trial: Any, state: Any, values: Any) -> None:
        return None

    wrapped = CheckpointingSampler(NSGAIISampler(seed=1, after_trial_strategy=no_op))

    assert "no_op" in json.dumps(wrapped._fingerprint)


# -- trajectories ----------------------------------------------------------------------------


# Every configuration in memory, and two on a SQLite file (whose commits make it slow here).
WRAPPED_RUNS = [(name, "memory") for name in CONFIGS] + [
    ("nsga2-constrained", "sqlite"),
    ("tpe-constraints-lambda", "sqlite"),
]


@pytest.mark.parametrize(("name", "storage"), WRAPPED_RUNS)
def test_wrapped_uninterrupted_run_equals_bare_sampler_bit_for_bit(
    name: str, storage: str, tmp_path: Path
) -> None:
    make, objective, _ = CONFIGS[name]
    study = open_study(make_storage(storage, tmp_path), name, CheckpointingSampler(make(SEED)))
    study.optimize(objective, n_trials=N_TRIALS, catch=(Failure,))

    assert [key(t) for t in study.trials] == reference(name)


INTERRUPTED_RUNS = [(name, "memory") for name in NSGA_CONFIGS] + [("nsga3", "sqlite")]


@pytest.mark.parametrize(("name", "storage"), INTERRUPTED_RUNS)
def test_trial_interrupted_after_caching_the_parents_is_retried_like_uninterrupted_run(
    name: str, storage: str, tmp_path: Path
) -> None:
    make = CONFIGS[name][0]

    resumed = run_with_interrupted_trial(make_storage(storage, tmp_path), name, lambda: make(SEED))

    interrupted = resumed.trials[POPULATION]
    assert interrupted.state == TrialState.FAIL
    assert [key(t) for t in uninterrupted_trials(resumed)] == reference(name)
    # The retry and every later trial carry their uninterrupted generation; the cached parent
    # populations name the same trials (by position in the trajectory) as the bare run's.
    bare = bare_run(name)
    assert isinstance(bare.sampler, (NSGAIISampler, NSGAIIISampler))
    generation_key = bare.sampler._get_generation_key()
    logical = uninterrupted_trials(resumed)
    assert [t.system_attrs[generation_key] for t in logical] == [
        t.system_attrs[generation_key] for t in bare.trials
    ]
    assert _parents_by_position(resumed, logical) == _parents_by_position(bare, bare.trials)


def _parents_by_position(study: optuna.Study, trials: list[FrozenTrial]) -> dict[str, list[int]]:
    position = {t._trial_id: i for i, t in enumerate(trials)}
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return {
        k.rpartition(":")[2]: [position[i] for i in ids]
        for k, ids in attrs.items()
        if ":parent:" in k and ids is not None
    }


class _GeneratorsOnly:
    """Restores an NSGA sampler's generators exactly, but leaves the cached parents alone."""

    _rng: LazyRandomState
    _random_sampler: RandomSampler

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": rng_state_dict(self._rng),
            "random": sampler_state_dict(self._random_sampler),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        load_rng_state_dict(self._rng, state_dict["rng"])
        load_sampler_state_dict(self._random_sampler, state_dict["random"])


class NSGAIIGeneratorsOnly(_GeneratorsOnly, NSGAIISampler):
    pass


class NSGAIIIGeneratorsOnly(_GeneratorsOnly, NSGAIIISampler):
    pass


@pytest.mark.parametrize(
    ("name", "kind"), [("nsga2", NSGAIIGeneratorsOnly), ("nsga3", NSGAIIIGeneratorsOnly)]
)
def test_control_leaving_the_interrupted_trials_parent_cache_diverges(
    name: str, kind: type[NSGAIISampler] | type[NSGAIIISampler]
) -> None:
    # The same generators restored after the same interruption; only the withdrawal of the
    # cache is missing (a Stateful sampler gets none), and the comparison catches it.
    resumed = run_with_interrupted_trial(
        InMemoryStorage(), name, lambda: kind(population_size=POPULATION, seed=SEED)
    )

    trajectory = [key(t) for t in uninterrupted_trials(resumed)]
    assert trajectory[:POPULATION] == reference(name)[:POPULATION]
    assert trajectory[POPULATION] != reference(name)[POPULATION]


def test_parent_cache_that_finished_trials_used_is_kept() -> None:
    # Interrupted in the middle of generation 1 of NSGA-III: the cache it read was written by a
    # finished trial, and selecting again would draw from the generator the run did not draw.
    storage = InMemoryStorage()
    run_then_abandon_a_trial(storage, "nsga3", CONFIGS["nsga3"][0](SEED), POPULATION + 2)
    cache_key = NSGAIIISampler._get_parent_cache_key_prefix() + "1"
    study_id = storage.get_all_studies()[0]._study_id
    before = storage.get_study_system_attrs(study_id)[cache_key]

    resumed = open_study(storage, "nsga3", CheckpointingSampler(CONFIGS["nsga3"][0](SEED)))
    resumed.optimize(two_objectives, n_trials=N_TRIALS - POPULATION - 2, catch=(Failure,))

    assert storage.get_study_system_attrs(study_id)[cache_key] == before
    assert [key(t) for t in uninterrupted_trials(resumed)] == reference("nsga3")


# -- fingerprints ----------------------------------------------------------------------------

FINGERPRINTED = [
    "nsga2-constrained",
    "nsga3-constrained",
    "tpe-constraints-lambda",
    "cmaes-source-trials",
    "cmaes-x0-sigma0",
]


def _closure_sampler(seed: int | None) -> BaseSampler:
    return TPESampler(seed=seed, constraints_func=bound_on_x(0.5))


FINGERPRINT_CHILD = """
import json, sys, warnings
warnings.simplefilter("ignore")
from optuna_checkpoint import CheckpointingSampler
from tests import test_adapters_evolutionary as m
makers = {name: m.CONFIGS[name][0] for name in m.FINGERPRINTED}
makers["closure"] = m._closure_sampler
print(json.dumps({n: CheckpointingSampler(f(m.SEED))._fingerprint for n, f in makers.items()}))
"""


def test_fingerprints_of_functions_and_source_trials_are_equal_in_another_process() -> None:
    root = Path(__file__).resolve().parent.parent
    child = subprocess.run(
        [sys.executable, "-c", FINGERPRINT_CHILD],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    there = json.loads(child.stdout)
    here = {name: _fingerprint(CONFIGS[name][0]) for name in FINGERPRINTED}
    here["closure"] = _fingerprint(_closure_sampler)

    for name, description in here.items():
        assert differences(there[name], description) == [], name
        assert there[name] == description


def _fingerprint(make: Factory) -> Any:
    return CheckpointingSampler(make(SEED))._fingerprint


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (lambda t: [t.params["x"] - 1.0], lambda t: [t.params["x"] - 2.0]),
        (lambda t: [t.params["x"] - 1.0], lambda t: [t.params["y"] - 1.0]),
        (lambda t: [t.params["x"] - 1.0], lambda t: [1.0 - t.params["x"]]),
        (bound_on_x(0.5), bound_on_x(0.7)),
    ],
    ids=["constant", "key", "operands", "closure-value"],
)
def test_edited_constraints_function_is_a_configuration_change(
    before: Callable[[FrozenTrial], list[float]], after: Callable[[FrozenTrial], list[float]]
) -> None:
    lines = differences(
        _fingerprint(lambda seed: TPESampler(seed=seed, constraints_func=before)),
        _fingerprint(lambda seed: TPESampler(seed=seed, constraints_func=after)),
    )

    assert lines, "an edited constraints_func must be reported"
    assert all("_constraints_func" in line for line in lines), lines


def test_source_trials_are_fingerprinted_by_digest_and_stay_small() -> None:
    many = _fingerprint(lambda seed: CmaEsSampler(seed=seed, source_trials=source_trials(500)))
    shifted = _fingerprint(
        lambda seed: CmaEsSampler(seed=seed, source_trials=source_trials(500, shift=1e-12))
    )

    assert len(json.dumps(many)) < 4096
    assert many["sampler"]["attrs"]["_source_trials"]["length"] == 500
    lines = differences(many, shifted)
    assert lines and all("_source_trials" in line for line in lines), lines


def test_other_x0_or_sigma0_is_a_configuration_change() -> None:
    def cma(x0: dict[str, float], sigma0: float) -> Any:
        return _fingerprint(lambda seed: CmaEsSampler(seed=seed, x0=x0, sigma0=sigma0))

    assert differences(cma({"x": 0.5}, 0.4), cma({"x": 0.5}, 0.4)) == []
    assert differences(cma({"x": 0.5}, 0.4), cma({"x": 0.5}, 0.5)) == [
        "sampler.attrs._sigma0: was 0.4, now 0.5"
    ]
    assert differences(cma({"x": 0.5}, 0.4), cma({"x": 0.25}, 0.4)) == [
        "sampler.attrs._x0.x: was 0.5, now 0.25"
    ]


def x_below(trial: FrozenTrial, limit: float) -> list[float]:
    return [trial.params["x"] - limit]


def test_partial_is_fingerprinted_by_its_function_and_arguments() -> None:
    def tpe(limit: float) -> Any:
        constraint = functools.partial(x_below, limit=limit)
        return _fingerprint(lambda seed: TPESampler(seed=seed, constraints_func=constraint))

    assert differences(tpe(0.5), tpe(0.5)) == []
    lines = differences(tpe(0.5), tpe(0.7))
    assert lines == ["sampler.attrs._constraints_func.keywords.limit: was 0.5, now 0.7"]


def test_module_in_a_closure_is_fingerprinted_by_name() -> None:
    def make() -> Callable[[FrozenTrial], list[float]]:
        import math as maths  # a local import: the lambda closes over the module

        return lambda t: [maths.sin(t.params["x"])]

    description = _fingerprint(lambda seed: TPESampler(seed=seed, constraints_func=make()))

    closure = description["sampler"]["attrs"]["_constraints_func"]["closure"]
    assert closure == {"maths": {"module": "math"}}
