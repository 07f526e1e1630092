"""The GPSampler adapter: generators plus the kernel warm-start caches, as plain arrays.

Resuming with the generators alone diverges (GPSampler starts each kernel fit from the previous
hyperparameters); the control test below shows it, so the round-trip test cannot pass by luck.
The adapter module must import without torch; every other test here skips without it.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import functools
import gc
import pathlib
import subprocess
import sys
from typing import Any

import numpy as np
import optuna
from optuna.samplers import BaseSampler
from optuna.samplers import GPSampler
from optuna.trial import FrozenTrial
import pytest

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import ConfigMismatchError
from optuna_checkpoint import CorruptCheckpointError
from optuna_checkpoint import UnsupportedSamplerError
from optuna_checkpoint.state import _codec
from optuna_checkpoint.state.adapters import adapter_for


# The torch group: on one xdist worker (--dist loadgroup), so that only it imports torch.
pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.xdist_group("torch"),
]

SEED = 11
STARTUP = 3
N_TRIALS = 7
SPLIT = 5  # trials before the sampler is replaced by a restored one


@pytest.fixture
def torch() -> Any:
    pytest.importorskip("scipy", reason="GPSampler needs scipy: pip install scipy")
    return pytest.importorskip(
        "torch",
        reason="GPSampler needs torch, which is not installed (optional; the CPU build: "
        "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)",
    )


def single(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -3.0, 3.0)
    y = trial.suggest_float("y", 1e-2, 10.0, log=True)
    kind = trial.suggest_categorical("kind", ["a", "b"])
    return (x - 1.0) ** 2 + np.log10(y) ** 2 + (0.0 if kind == "a" else 0.3)


def double(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("x", -3.0, 3.0)
    y = trial.suggest_float("y", 0.0, 2.0)
    return x**2 + y, (x - 2.0) ** 2 + (y - 2.0) ** 2


def constraints(trial: FrozenTrial) -> Sequence[float]:
    return [trial.params["x"] + trial.params["y"] - 1.5]


CASES: dict[str, tuple[Callable[[], GPSampler], Callable[[optuna.Trial], Any], list[str]]] = {
    "single": (lambda: GPSampler(seed=SEED, n_startup_trials=STARTUP), single, ["minimize"]),
    "multi-constrained": (
        lambda: GPSampler(seed=SEED, n_startup_trials=STARTUP, constraints_func=constraints),
        double,
        ["minimize", "minimize"],
    ),
}


def exact(study: optuna.Study) -> list[tuple[Any, ...]]:
    """Each trial's params and values, floats as ``float.hex``."""

    def hexed(value: Any) -> Any:
        return value.hex() if isinstance(value, float) else value

    return [
        (
            sorted((k, hexed(v)) for k, v in t.params.items()),
            [hexed(v) for v in t.values or []],
        )
        for t in study.trials
    ]


def run(case: str, sampler: BaseSampler | None = None, n_trials: int = N_TRIALS) -> optuna.Study:
    make, objective, directions = CASES[case]
    study = optuna.create_study(sampler=sampler or make(), directions=directions)
    study.optimize(objective, n_trials=n_trials)
    return study


@functools.cache
def uninterrupted(case: str) -> list[tuple[Any, ...]]:
    """The trajectory of the bare sampler, run once per case (a GP study costs seconds)."""
    return exact(run(case))


def continued(case: str, restore: Callable[[GPSampler, dict[str, Any]], None]) -> optuna.Study:
    """Run ``SPLIT`` trials, then the rest with a fresh sampler given the captured state."""
    make, objective, _ = CASES[case]
    study = run(case, n_trials=SPLIT)
    payload = _codec.encode(adapter_for(study.sampler).state_dict())  # no pickles
    fresh = make()
    restore(fresh, _codec.decode(payload))
    study.sampler = fresh
    study.optimize(objective, n_trials=N_TRIALS - SPLIT)
    return study


@pytest.mark.parametrize("case", list(CASES))
def test_restored_state_continues_exactly_like_the_uninterrupted_sampler(
    case: str, torch: Any
) -> None:
    def restore(sampler: GPSampler, state: dict[str, Any]) -> None:
        adapter_for(sampler).load_state_dict(state)

    assert exact(continued(case, restore)) == uninterrupted(case)


def test_control_restoring_only_the_generators_diverges(torch: Any) -> None:
    # Without the kernel cache the next fit starts from default hyperparameters: the same test
    # would fail if the adapter left the cache out.
    def restore_generators_only(sampler: GPSampler, state: dict[str, Any]) -> None:
        adapter_for(sampler).load_state_dict(state | {"gprs": None, "constraints_gprs": None})

    assert exact(continued("single", restore_generators_only)) != uninterrupted("single")


def test_state_holds_each_cached_kernel_as_float64_hyperparameters(torch: Any) -> None:
    study = run("multi-constrained", n_trials=STARTUP + 1)
    state = adapter_for(study.sampler).state_dict()
    assert len(state["gprs"]) == 2  # one per objective
    assert len(state["constraints_gprs"]) == 1  # one per constraint
    for entry in [*state["gprs"], *state["constraints_gprs"]]:
        lengthscales = entry["inverse_squared_lengthscales"]
        assert lengthscales.dtype == np.float64 and lengthscales.shape == (2,)
        assert isinstance(entry["kernel_scale"], float)
        assert isinstance(entry["noise_var"], float)
    # A handful of numbers, not the regressors' training data.
    assert len(_codec.encode(state)) < 12_000


def test_wrapped_gp_is_transparent_and_resumes_in_a_new_process_sampler(
    tmp_path: pathlib.Path, torch: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'gp.db'}"
    make, objective, _ = CASES["single"]
    study = optuna.create_study(study_name="gp", storage=url, sampler=CheckpointingSampler(make()))
    study.optimize(objective, n_trials=SPLIT)
    del study
    gc.collect()  # releases the lease, as the end of a process would
    resumed = optuna.load_study(study_name="gp", storage=url, sampler=CheckpointingSampler(make()))
    resumed.optimize(objective, n_trials=N_TRIALS - SPLIT)
    assert exact(resumed) == uninterrupted("single")


def test_corrupt_kernel_cache_is_reported_as_corrupt(torch: Any) -> None:
    study = run("single", n_trials=STARTUP + 1)
    state = adapter_for(study.sampler).state_dict()
    missing = state | {"gprs": [{"kernel_scale": 1.0, "noise_var": 0.1}]}
    with pytest.raises(CorruptCheckpointError, match="incomplete"):
        adapter_for(GPSampler(seed=SEED)).load_state_dict(missing)
    matrix = state["gprs"][0] | {"inverse_squared_lengthscales": np.ones((2, 2))}
    with pytest.raises(CorruptCheckpointError, match="wrong shape"):
        adapter_for(GPSampler(seed=SEED)).load_state_dict(state | {"gprs": [matrix]})
    with pytest.raises(CorruptCheckpointError, match="'constraints_gprs'"):
        adapter_for(GPSampler(seed=SEED)).load_state_dict(
            {k: v for k, v in state.items() if k != "constraints_gprs"}
        )


class _UnknownSampler(optuna.samplers.RandomSampler):
    """A subclass no adapter matches: it adds an attribute to RandomSampler's."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed=seed)
        self._draws = 0


def test_independent_sampler_nothing_can_capture_is_refused_at_construction() -> None:
    gp = GPSampler(independent_sampler=_UnknownSampler(seed=0))
    with pytest.raises(UnsupportedSamplerError, match=r"_UnknownSampler.*Stateful") as raised:
        CheckpointingSampler(gp, allow_pickle=True)
    assert "allow_pickle=True does not reach" in str(raised.value)


def test_changed_gp_configuration_is_refused_on_resume(tmp_path: pathlib.Path) -> None:
    # Start-up trials only: no GP fit, so this runs without torch too.
    url = f"sqlite:///{tmp_path / 'gp.db'}"
    study = optuna.create_study(
        study_name="gp", storage=url, sampler=CheckpointingSampler(GPSampler(seed=SEED))
    )
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=1)
    del study
    gc.collect()
    changed = CheckpointingSampler(GPSampler(seed=SEED, n_startup_trials=5))
    resumed = optuna.load_study(study_name="gp", storage=url, sampler=changed)
    with pytest.raises(ConfigMismatchError, match="_n_startup_trials"):
        resumed.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=1)


WITHOUT_TORCH = """
import sys

sys.modules["torch"] = None  # any import of torch now raises ImportError
import optuna
from optuna_checkpoint import CheckpointingSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study(
    storage=sys.argv[1], sampler=CheckpointingSampler(optuna.samplers.GPSampler(seed=0))
)
# Start-up trials only: GPSampler itself needs torch from its first fit on.
study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=3)
print("OK")
"""


def test_package_imports_and_checkpoints_gp_start_up_trials_without_torch(
    tmp_path: pathlib.Path,
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, f"sqlite:///{tmp_path / 'gp.db'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"
