"""Adapters of QMCSampler, GridSampler, BruteForceSampler and PartialFixedSampler.

Each is checked for: a state that survives encoding and restores into a fresh sampler; a
wrapped, uninterrupted run that equals the bare one bit for bit; a configuration fingerprint
that is the same in another process. Interruptions are simulated in this process (a trial left
RUNNING after sampling, its sampler dropped, as when a process dies), which is cheap enough to
cover every variant; ``tests/kill_fuzz/test_indexed_kill_fuzz.py`` kills real processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import gc
import json
import math
import pathlib
import subprocess
import sys
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.samplers import BruteForceSampler
from optuna.samplers import GridSampler
from optuna.samplers import PartialFixedSampler
from optuna.samplers import QMCSampler
from optuna.samplers import RandomSampler
from optuna.samplers import TPESampler
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import pytest

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import uninterrupted_trials
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.exceptions import UnsupportedSamplerError
from optuna_checkpoint.state._codec import decode
from optuna_checkpoint.state._codec import encode
from optuna_checkpoint.state._fingerprint import differences
from optuna_checkpoint.state.adapters import adapter_for
from optuna_checkpoint.state.adapters._qmc import QMCSamplerAdapter
from optuna_checkpoint.study._logical import _LogicalStudy


pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

SEED = 5
N_TRIALS = 8
INTERRUPTED_AT = 3  # the trial left RUNNING after sampling


def fixed_space(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5.0, 5.0)
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    n = trial.suggest_int("n", 1, 8)
    kind = trial.suggest_categorical("kind", ["a", "b", "c"])
    return (x - 1.0) ** 2 + (math.log10(lr) + 2.0) ** 2 + 0.1 * n + (kind == "c")


GRID = {"x": [-1.0, 0.0, 0.5, 1.0], "n": [1, 2, 3], "kind": ["a", None]}


def grid_space(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -1.0, 1.0)
    n = trial.suggest_int("n", 1, 3)
    kind = trial.suggest_categorical("kind", ["a", None])
    return (x - 0.5) ** 2 + 0.25 * n + (kind is None)


SMALL_GRID = {"x": [-1.0, 0.0, 1.0], "n": [1, 2]}


def small_grid_space(trial: optuna.Trial) -> float:
    """Six points: the study exhausts the grid, and GridSampler stops it, within N_TRIALS."""
    return (trial.suggest_float("x", -1.0, 1.0) - 0.5) ** 2 + trial.suggest_int("n", 1, 2)


def finite_space(trial: optuna.Trial) -> float:
    n = trial.suggest_int("n", 0, 4)
    kind = trial.suggest_categorical("kind", ["a", "b", "c"])
    extra = trial.suggest_float("a_extra", 0.0, 1.0, step=0.25) if kind == "a" else 0.0
    return (n - 2) ** 2 + extra


@dataclass(frozen=True)
class Config:
    sampler: Callable[[int | None], BaseSampler]
    objective: Callable[[optuna.Trial], float]


def _qmc(qmc_type: str, scramble: bool) -> Config:
    return Config(
        lambda seed: QMCSampler(qmc_type=qmc_type, scramble=scramble, seed=seed), fixed_space
    )


CONFIGS: dict[str, Config] = {
    "qmc-sobol": _qmc("sobol", scramble=False),
    "qmc-sobol-scrambled": _qmc("sobol", scramble=True),
    "qmc-halton": _qmc("halton", scramble=False),
    "qmc-halton-scrambled": _qmc("halton", scramble=True),
    "grid": Config(lambda seed: GridSampler(GRID, seed=seed), grid_space),
    "grid-exhausted": Config(lambda seed: GridSampler(SMALL_GRID, seed=seed), small_grid_space),
    "brute-force": Config(lambda seed: BruteForceSampler(seed=seed), finite_space),
    "brute-force-strict": Config(
        lambda seed: BruteForceSampler(seed=seed, avoid_premature_stop=True), finite_space
    ),
    "partial-fixed-tpe": Config(
        lambda seed: PartialFixedSampler({"kind": "a"}, TPESampler(seed=seed)), fixed_space
    ),
    "partial-fixed-random": Config(
        lambda seed: PartialFixedSampler({"n": 3}, RandomSampler(seed=seed)), fixed_space
    ),
    "partial-fixed-qmc": Config(
        lambda seed: PartialFixedSampler({"n": 3}, QMCSampler(scramble=True, seed=seed)),
        fixed_space,
    ),
}


def _exact(value: Any) -> Any:
    return value.hex() if isinstance(value, float) else value


def trajectory(trials: list[FrozenTrial]) -> list[tuple[Any, ...]]:
    """State, params and values of the finished trials, floats as ``float.hex``."""
    return [
        (
            t.state.name,
            sorted((name, _exact(v)) for name, v in t.params.items()),
            None if t.values is None else [_exact(v) for v in t.values],
        )
        for t in trials
        if t.state.is_finished()
    ]


def _url(tmp_path: pathlib.Path, name: str) -> str:
    return f"sqlite:///{tmp_path / name}"


@pytest.fixture(scope="module")
def bare() -> Callable[[str], list[tuple[Any, ...]]]:
    """The bare sampler's trajectory of each configuration, run once, in memory."""
    cache: dict[str, list[tuple[Any, ...]]] = {}

    def get(name: str) -> list[tuple[Any, ...]]:
        if name not in cache:
            config = CONFIGS[name]
            study = optuna.create_study(sampler=config.sampler(SEED))
            study.optimize(config.objective, n_trials=N_TRIALS)
            cache[name] = trajectory(study.trials)
        return cache[name]

    return get


def _interrupted_run(config: Config, url: str, *, interruptions: int = 1) -> list[tuple[Any, ...]]:
    """Run, leaving trial ``INTERRUPTED_AT`` and its retries RUNNING after sampling; resume."""
    for attempt in range(interruptions):
        sampler = CheckpointingSampler(config.sampler(SEED))
        study = optuna.create_study(
            study_name="s", storage=url, sampler=sampler, load_if_exists=True
        )
        if attempt == 0:
            study.optimize(config.objective, n_trials=INTERRUPTED_AT)
        abandoned = study.ask()  # from the second attempt on, this resumes and retries
        config.objective(abandoned)  # samples and stores every parameter, and is never told
        del study, sampler, abandoned
        gc.collect()  # the sampler is gone and its lease released, as when its process dies
    resumed = optuna.load_study(
        study_name="s", storage=url, sampler=CheckpointingSampler(config.sampler(SEED))
    )
    resumed.optimize(config.objective, n_trials=N_TRIALS - INTERRUPTED_AT)
    closed = resumed.trials[INTERRUPTED_AT : INTERRUPTED_AT + interruptions]
    assert [t.state for t in closed] == [TrialState.FAIL] * interruptions
    return trajectory(uninterrupted_trials(resumed))


# -- state round trip ------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("seed", [SEED, None], ids=["seeded", "unseeded"])
def test_state_round_trips_into_a_fresh_sampler(name: str, seed: int | None) -> None:
    config = CONFIGS[name]
    used = config.sampler(seed)
    optuna.create_study(sampler=used).optimize(config.objective, n_trials=4)
    state = decode(encode(adapter_for(used).state_dict()))

    fresh = config.sampler(seed)
    adapter_for(fresh).load_state_dict(state)

    assert encode(adapter_for(fresh).state_dict()) == encode(adapter_for(used).state_dict())
    # Restored, the fresh sampler goes on exactly as the used one does.
    follow_used = optuna.create_study(sampler=used)
    follow_fresh = optuna.create_study(sampler=fresh)
    follow_used.optimize(config.objective, n_trials=3)
    follow_fresh.optimize(config.objective, n_trials=3)
    assert trajectory(follow_fresh.trials) == trajectory(follow_used.trials)


def test_unseeded_qmc_keeps_its_scrambling_seed() -> None:
    used, fresh = QMCSampler(scramble=True), QMCSampler(scramble=True)
    assert used._seed != fresh._seed

    adapter_for(fresh).load_state_dict(adapter_for(used).state_dict())

    assert fresh._seed == used._seed


def test_partial_fixed_refuses_the_state_of_another_base_sampler() -> None:
    state = adapter_for(PartialFixedSampler({"n": 3}, RandomSampler(seed=1))).state_dict()
    tpe_based = adapter_for(PartialFixedSampler({"n": 3}, TPESampler(seed=1)))

    with pytest.raises(CorruptCheckpointError, match="RandomSampler base sampler"):
        tpe_based.load_state_dict(state)


# -- QMC's sequence positions ----------------------------------------------------------------


def _qmc_study_after(n_trials: int) -> tuple[optuna.Study, QMCSampler]:
    sampler = QMCSampler(seed=SEED)
    study = optuna.create_study(sampler=sampler)
    study.optimize(fixed_space, n_trials=n_trials)
    return study, sampler


def _positions(study: optuna.Study) -> dict[str, Any]:
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return {k: v for k, v in attrs.items() if k.startswith("qmc:")}


def test_qmc_state_records_the_sequence_positions_of_its_study() -> None:
    study, sampler = _qmc_study_after(3)  # the first trial samples independently
    adapter = adapter_for(sampler)
    assert adapter.state_dict()["sequence_positions"] is None  # not bound to a study yet

    adapter.bind_study(study._storage, study._study_id, sole_stream=True)

    assert list(adapter.state_dict()["sequence_positions"].values()) == [1]


@pytest.mark.parametrize("sole_stream", [True, False])
def test_qmc_rewinds_the_sequence_only_for_the_studys_sole_stream(sole_stream: bool) -> None:
    study, sampler = _qmc_study_after(3)
    adapter = adapter_for(sampler)
    adapter.bind_study(study._storage, study._study_id, sole_stream=sole_stream)
    state = adapter.state_dict()
    study.optimize(fixed_space, n_trials=2)  # moves the sequence on by two
    (key,) = _positions(study)

    adapter.load_state_dict(state)

    assert _positions(study) == {key: 1 if sole_stream else 3}


def test_qmc_rewinds_a_sequence_first_drawn_after_the_state_as_not_drawn() -> None:
    study, sampler = _qmc_study_after(1)  # no QMC draw yet
    adapter = adapter_for(sampler)
    adapter.bind_study(study._storage, study._study_id, sole_stream=True)
    state = adapter.state_dict()
    study.optimize(fixed_space, n_trials=1)

    adapter.load_state_dict(state)

    assert list(_positions(study).values()) == [-1]  # what QMCSampler reads as "none drawn"


def test_qmc_sequence_shared_with_another_worker_is_not_rewound_on_resume(
    tmp_path: pathlib.Path,
) -> None:
    # Rewinding would make the workers propose points again that the other already drew; the
    # retry goes on from where the sequence stands, as plain Optuna does.
    url = _url(tmp_path, "shared.db")
    main = CheckpointingSampler(QMCSampler(seed=SEED))
    study = optuna.create_study(study_name="s", storage=url, sampler=main)
    study.optimize(fixed_space, n_trials=3)
    other = optuna.load_study(
        study_name="s",
        storage=url,
        sampler=CheckpointingSampler(QMCSampler(seed=SEED), worker_id="other"),
    )
    other.optimize(fixed_space, n_trials=1)
    fixed_space(study.ask())  # draws sample 3, then its process dies
    (key,) = _positions(study)
    del study, main
    gc.collect()

    resumed = optuna.load_study(
        study_name="s", storage=url, sampler=CheckpointingSampler(QMCSampler(seed=SEED))
    )
    resumed.optimize(fixed_space, n_trials=1)

    assert _positions(resumed) == {key: 4}  # the retry drew sample 4: nothing was rewound


def test_qmc_refuses_malformed_sequence_positions() -> None:
    adapter = adapter_for(QMCSampler(seed=SEED))
    state = {**adapter.state_dict(), "sequence_positions": {"qmc:x": "3"}}

    with pytest.raises(CorruptCheckpointError, match="sequence positions"):
        adapter.load_state_dict(state)


# -- uninterrupted: transparent ----------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_wrapped_uninterrupted_run_equals_bare_run(
    name: str, tmp_path: pathlib.Path, bare: Callable[[str], Any]
) -> None:
    config = CONFIGS[name]
    wrapped = optuna.create_study(
        study_name="s",
        storage=_url(tmp_path, "wrapped.db"),
        sampler=CheckpointingSampler(config.sampler(SEED)),
    )
    wrapped.optimize(config.objective, n_trials=N_TRIALS)

    assert trajectory(wrapped.trials) == bare(name)


# -- interrupted after sampling: resumed exactly -----------------------------------------------


def test_grid_exhausted_configuration_stops_before_the_last_trial(
    bare: Callable[[str], Any],
) -> None:
    # Its resume test then covers GridSampler's end: the stop, decided from the listed trials.
    assert len(bare("grid-exhausted")) == len(SMALL_GRID["x"]) * len(SMALL_GRID["n"]) < N_TRIALS


@pytest.mark.parametrize("name", CONFIGS)
def test_resume_after_a_trial_interrupted_after_sampling_matches_bare_run(
    name: str, tmp_path: pathlib.Path, bare: Callable[[str], Any]
) -> None:
    resumed = _interrupted_run(CONFIGS[name], _url(tmp_path, "resumed.db"))

    assert resumed == bare(name)


@pytest.mark.parametrize("name", ["qmc-sobol-scrambled", "brute-force"])
def test_resume_after_a_trial_interrupted_twice_matches_bare_run(
    name: str, tmp_path: pathlib.Path, bare: Callable[[str], Any]
) -> None:
    resumed = _interrupted_run(CONFIGS[name], _url(tmp_path, "resumed.db"), interruptions=2)

    assert resumed == bare(name)


def test_control_qmc_resume_without_rewinding_the_sequence_diverges(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, bare: Callable[[str], Any]
) -> None:
    # The interrupted trial had advanced the study's sequence counter; left there, the retry
    # takes the next point.
    monkeypatch.setattr(QMCSamplerAdapter, "_rewind", lambda self, positions: None)
    resumed = _interrupted_run(CONFIGS["qmc-sobol"], _url(tmp_path, "resumed.db"))

    assert resumed != bare("qmc-sobol")


def test_control_brute_force_resume_with_storage_listing_interrupted_trials_diverges(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, bare: Callable[[str], Any]
) -> None:
    # BruteForceSampler lists the trials through study._storage. Listed there, the second
    # interrupted attempt's point counts as visited, and the retry picks another. (With one
    # hidden trial, the renumbering happens to make BruteForce drop that very trial instead.)
    original = _LogicalStudy.__init__

    def with_real_storage(self: _LogicalStudy, study: optuna.Study, hidden: Any) -> None:
        original(self, study, hidden)
        self._storage = study._storage

    monkeypatch.setattr(_LogicalStudy, "__init__", with_real_storage)
    resumed = _interrupted_run(
        CONFIGS["brute-force"], _url(tmp_path, "resumed.db"), interruptions=2
    )

    assert resumed != bare("brute-force")


# -- fingerprint ---------------------------------------------------------------------------------

_FINGERPRINTS = """
import json, sys, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, {root!r})
from tests.test_adapters_indexed import CONFIGS
from optuna_checkpoint import CheckpointingSampler
print(json.dumps({{
    f"{{name}}/{{seed}}": CheckpointingSampler(config.sampler(seed))._fingerprint
    for name, config in CONFIGS.items() for seed in ({seed}, None)
}}))
"""


def _fingerprints_in_new_process() -> dict[str, Any]:
    root = str(pathlib.Path(__file__).parents[1])
    script = _FINGERPRINTS.format(root=root, seed=SEED)
    output = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd=root
    ).stdout
    fingerprints: dict[str, Any] = json.loads(output)
    return fingerprints


def test_fingerprint_is_the_same_in_another_process() -> None:
    here = {
        f"{name}/{seed}": CheckpointingSampler(config.sampler(seed))._fingerprint
        for name, config in CONFIGS.items()
        for seed in (SEED, None)
    }

    elsewhere = _fingerprints_in_new_process()

    assert {key: differences(here[key], elsewhere[key]) for key in here} == {
        key: [] for key in here
    }


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (lambda: QMCSampler(seed=1), lambda: QMCSampler(seed=1, qmc_type="halton")),
        (lambda: QMCSampler(seed=1), lambda: QMCSampler(seed=2)),
        (lambda: QMCSampler(seed=1), lambda: QMCSampler(seed=1, scramble=True)),
        (lambda: GridSampler(GRID, seed=1), lambda: GridSampler({**GRID, "n": [1, 2]}, seed=1)),
        (lambda: GridSampler(GRID, seed=1), lambda: GridSampler(GRID, seed=2)),
        (lambda: BruteForceSampler(seed=1), lambda: BruteForceSampler(seed=2)),
        (
            lambda: BruteForceSampler(seed=1),
            lambda: BruteForceSampler(seed=1, avoid_premature_stop=True),
        ),
        (
            lambda: PartialFixedSampler({"n": 3}, TPESampler(seed=1)),
            lambda: PartialFixedSampler({"n": 4}, TPESampler(seed=1)),
        ),
        (
            lambda: PartialFixedSampler({"n": 3}, TPESampler(seed=1)),
            lambda: PartialFixedSampler({"n": 3}, RandomSampler(seed=1)),
        ),
    ],
    ids=[
        "qmc-type",
        "qmc-seed",
        "qmc-scramble",
        "grid-space",
        "grid-seed",
        "brute-force-seed",
        "brute-force-strict",
        "partial-fixed-params",
        "partial-fixed-base",
    ],
)
def test_fingerprint_tells_configurations_apart(
    before: Callable[[], BaseSampler], after: Callable[[], BaseSampler]
) -> None:
    assert (
        CheckpointingSampler(before())._fingerprint != CheckpointingSampler(after())._fingerprint
    )


class _Opaque(BaseSampler):
    """A sampler no adapter knows."""

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        return distribution.low


@pytest.mark.parametrize(
    "sampler",
    [
        lambda: PartialFixedSampler({"n": 3}, _Opaque()),
        lambda: QMCSampler(seed=1, independent_sampler=_Opaque()),
    ],
    ids=["partial-fixed", "qmc"],
)
def test_sampler_held_inside_without_adapter_is_refused_with_what_to_do(
    sampler: Callable[[], BaseSampler],
) -> None:
    with pytest.raises(UnsupportedSamplerError, match=r"_Opaque.*Stateful"):
        CheckpointingSampler(sampler(), allow_pickle=True)
