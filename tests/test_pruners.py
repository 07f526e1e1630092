"""CheckpointingPruner: transparent uninterrupted, exact after interruptions, strict on change."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import gc
import logging
import math
import pathlib
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.pruners import BasePruner
from optuna.pruners import HyperbandPruner
from optuna.pruners import MedianPruner
from optuna.pruners import NopPruner
from optuna.pruners import PatientPruner
from optuna.pruners import PercentilePruner
from optuna.pruners import SuccessiveHalvingPruner
from optuna.pruners import ThresholdPruner
from optuna.pruners import WilcoxonPruner
from optuna.samplers import BaseSampler
from optuna.samplers import RandomSampler
from optuna.samplers import TPESampler
from optuna.storages import InMemoryStorage
from optuna.study import Study
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import pytest

from optuna_checkpoint import CheckpointError
from optuna_checkpoint import CheckpointingPruner
from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import ConfigMismatchError
from optuna_checkpoint import CorruptCheckpointError
from optuna_checkpoint import UnsupportedPrunerError
from optuna_checkpoint import load_sampler_state_dict
from optuna_checkpoint import sampler_state_dict
from optuna_checkpoint import uninterrupted_trials
from optuna_checkpoint._logging import ROOT_LOGGER_NAME
from optuna_checkpoint.state._fingerprint import describe
from optuna_checkpoint.state.adapters._pruners import pruner_adapter_for


pytestmark = pytest.mark.filterwarnings(
    "ignore::optuna.exceptions.ExperimentalWarning",
    "ignore:WilcoxonPruner finds steps:UserWarning",
)

SEED = 5
N_TRIALS = 24

PRUNERS: dict[str, Callable[[], BasePruner]] = {
    "hyperband-auto": HyperbandPruner,
    "hyperband-explicit": lambda: HyperbandPruner(min_resource=1, max_resource=6),
    "hyperband-bootstrap": lambda: HyperbandPruner(max_resource=6, bootstrap_count=1),
    "sh-auto": lambda: SuccessiveHalvingPruner(reduction_factor=2),
    "sh-explicit": lambda: SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
    "median": lambda: MedianPruner(n_startup_trials=2),
    "percentile": lambda: PercentilePruner(25.0, n_startup_trials=2),
    "threshold": lambda: ThresholdPruner(upper=6.0),
    "wilcoxon": lambda: WilcoxonPruner(p_threshold=0.3),
    "patient-hyperband": lambda: PatientPruner(HyperbandPruner(), patience=0),
    "patient-sh": lambda: PatientPruner(SuccessiveHalvingPruner(reduction_factor=2), patience=0),
    "patient-median": lambda: PatientPruner(MedianPruner(n_startup_trials=2), patience=0),
    "patient-alone": lambda: PatientPruner(None, patience=0),
    "nop": NopPruner,
}
# These prune nothing with the objective below, which is all they should do with it.
PRUNE_NOTHING = {"nop"}
EXACT_UNWRAPPED = {"median", "percentile", "threshold", "wilcoxon", "patient-median", "nop"}


def tpe() -> TPESampler:
    return TPESampler(seed=SEED, n_startup_trials=4)


def objective(trial: optuna.Trial) -> float:
    """A noisy learning curve over 2 to 6 steps, reported and judged after each."""
    x = trial.suggest_float("x", -4.0, 4.0)
    width = trial.suggest_int("width", 1, 5)
    value = math.inf
    for step in range(1 + width):
        # Not monotone, so PatientPruner(patience=0) lets some trials go to its wrapped pruner.
        value = (x - 1.0) ** 2 + 0.1 * width + 1.0 / (step + 1) + 0.6 * math.sin(3 * x + step)
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return value


def trajectory(trials: list[FrozenTrial]) -> list[tuple[Any, ...]]:
    """States, params, values and intermediate values, floats exactly."""
    return [
        (
            t.state.name,
            sorted((k, float(v).hex()) for k, v in t.params.items()),
            None if t.value is None else t.value.hex(),
            sorted((s, v.hex()) for s, v in t.intermediate_values.items()),
        )
        for t in trials
        if t.state != TrialState.RUNNING
    ]


def sqlite_url(tmp_path: pathlib.Path, name: str) -> str:
    return f"sqlite:///{tmp_path / name}"


def optimize(storage: Any, sampler: Any, pruner: BasePruner, n_trials: int = N_TRIALS) -> Study:
    study = optuna.create_study(
        study_name="p", storage=storage, sampler=sampler, pruner=pruner, load_if_exists=True
    )
    study.optimize(objective, n_trials=n_trials)
    return study


# -- transparency ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "as_given"),
    [(name, "wrapped") for name in PRUNERS]
    + [(name, "bare") for name in PRUNERS if name not in EXACT_UNWRAPPED],
)
def test_wrapped_pruner_decides_bit_for_bit_as_the_bare_pruner(name: str, as_given: str) -> None:
    # "bare": the pruner as users pass it, which the sampler wraps in place when it must (an
    # exact one stays bare, with nothing of the wrapper in its way).
    make = PRUNERS[name]
    bare = optimize(InMemoryStorage(), tpe(), make())
    wrapped = optimize(
        InMemoryStorage(),
        CheckpointingSampler(tpe()),
        CheckpointingPruner(make()) if as_given == "wrapped" else make(),
    )
    assert trajectory(wrapped.trials) == trajectory(bare.trials)
    pruned = sum(t.state == TrialState.PRUNED for t in bare.trials)
    assert (pruned == 0) == (name in PRUNE_NOTHING), f"{pruned} trials pruned"


class BracketRecordingSampler(BaseSampler):
    """Samples at random and records how many trials each hook's study lists, both ways."""

    def __init__(self, seed: int) -> None:
        self._random = RandomSampler(seed=seed)
        self.seen: list[tuple[str, int, int, int]] = []

    def _record(self, hook: str, study: Study, trial: FrozenTrial) -> None:
        listed = study.get_trials(deepcopy=False)
        self.seen.append((hook, trial.number, len(listed), len(study._get_trials(deepcopy=False))))

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._record("before", study, trial)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, name: str, distribution: BaseDistribution
    ) -> Any:
        self._record("sample", study, trial)
        return self._random.sample_independent(study, trial, name, distribution)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._record("after", study, trial)

    def state_dict(self) -> dict[str, Any]:
        return {"random": sampler_state_dict(self._random)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        load_sampler_state_dict(self._random, state_dict["random"])


def test_sampler_is_shown_the_per_bracket_study_a_bare_hyperband_shows_it() -> None:
    # Optuna's _filter_study gives samplers a bracket study only when the study's pruner is a
    # HyperbandPruner; the wrapper is not one, so the sampler makes that view itself.
    bare_sampler = BracketRecordingSampler(SEED)
    optimize(InMemoryStorage(), bare_sampler, HyperbandPruner())
    for pruner in (CheckpointingPruner(HyperbandPruner()), HyperbandPruner()):
        inner = BracketRecordingSampler(SEED)
        optimize(InMemoryStorage(), CheckpointingSampler(inner), pruner)
        assert inner.seen == bare_sampler.seen
    # The views did differ from the whole study: some hook saw fewer trials than exist.
    assert any(listed < all_trials for _, _, listed, all_trials in inner.seen)


# -- resume ----------------------------------------------------------------------------------

ABANDON_AT = 6
RESUMED_TRIALS = 13


class OpaqueHyperband(HyperbandPruner):
    """A Hyperband with state of its own, which no adapter knows: left bare, as a control."""

    def __init__(self) -> None:
        super().__init__()
        self.label = "mine"


def run_with_an_abandoned_trial(
    url: str,
    make_pruner: Callable[[], BasePruner],
    *,
    wrap_pruner: bool,
    make_sampler: Callable[[], BaseSampler] = tpe,
) -> list[FrozenTrial]:
    """Run, abandon a trial after it reported and was judged twice, resume, finish.

    With ``wrap_pruner`` false, the pruner is passed as users pass it.
    """

    def open_study() -> Study:
        pruner = make_pruner()
        return optuna.create_study(
            study_name="p",
            storage=url,
            sampler=CheckpointingSampler(make_sampler()),
            pruner=CheckpointingPruner(pruner) if wrap_pruner else pruner,
            load_if_exists=True,
        )

    study = open_study()
    study.optimize(objective, n_trials=ABANDON_AT)
    abandoned = study.ask()
    abandoned.suggest_float("x", -4.0, 4.0)
    for step in range(2):
        abandoned.report(1.0, step)  # rung attributes of successive halving are written here
        abandoned.should_prune()
    del study, abandoned
    gc.collect()  # the sampler is gone and its lease released, as when a process dies
    study = open_study()
    study.optimize(objective, n_trials=RESUMED_TRIALS - ABANDON_AT)
    trials = uninterrupted_trials(study)
    assert len(trials) == len(study.trials) - 1, "the abandoned trial should be hidden"
    retried = trials[ABANDON_AT:]
    assert any(t.state == TrialState.PRUNED for t in retried), "nothing pruned after the resume"
    return trials


def uninterrupted(
    make_pruner: Callable[[], BasePruner], make_sampler: Callable[[], BaseSampler] = tpe
) -> list[FrozenTrial]:
    sampler = CheckpointingSampler(make_sampler())
    pruner = CheckpointingPruner(make_pruner())
    return optimize(InMemoryStorage(), sampler, pruner, n_trials=RESUMED_TRIALS).trials


# Hyperband and successive halving alone are killed for real in the kill-fuzz tests.
@pytest.mark.parametrize("wrap_pruner", [True, False])
@pytest.mark.parametrize("name", ["patient-hyperband", "patient-sh"])
def test_wrapped_pruner_resumes_exactly_after_an_abandoned_trial(
    name: str, wrap_pruner: bool, tmp_path: pathlib.Path
) -> None:
    expected = uninterrupted(PRUNERS[name])
    actual = run_with_an_abandoned_trial(
        sqlite_url(tmp_path, "s.db"), PRUNERS[name], wrap_pruner=wrap_pruner
    )
    assert trajectory(actual) == trajectory(expected)


@pytest.mark.parametrize("name", ["percentile", "threshold", "wilcoxon", "patient-median"])
def test_stateless_pruner_resumes_exactly_without_the_wrapper(
    name: str, tmp_path: pathlib.Path
) -> None:
    expected = uninterrupted(PRUNERS[name])
    actual = run_with_an_abandoned_trial(
        sqlite_url(tmp_path, "s.db"), PRUNERS[name], wrap_pruner=False
    )
    assert trajectory(actual) == trajectory(expected)


def test_sampler_sees_the_brackets_of_the_uninterrupted_run_after_an_abandoned_trial(
    tmp_path: pathlib.Path,
) -> None:
    samplers: list[BracketRecordingSampler] = []

    def recording() -> BracketRecordingSampler:
        samplers.append(BracketRecordingSampler(SEED))
        return samplers[-1]

    make = PRUNERS["hyperband-auto"]
    uninterrupted(make, recording)
    expected = [seen for seen in samplers[0].seen if seen[1] >= ABANDON_AT]
    for pruner, wrap_pruner in ((make, True), (make, False), (OpaqueHyperband, False)):
        url = sqlite_url(tmp_path, f"{pruner.__name__}-{wrap_pruner}.db")
        run_with_an_abandoned_trial(url, pruner, wrap_pruner=wrap_pruner, make_sampler=recording)
        # The control: under a Hyperband left bare, Optuna shows the bracket of the retry's
        # number.
        assert (samplers[-1].seen == expected) is (pruner is make)


def test_hyperband_left_bare_diverges_after_an_abandoned_trial(tmp_path: pathlib.Path) -> None:
    # The control of the two tests above: the same interruption, with a Hyperband the sampler
    # cannot wrap (it warns).
    expected = uninterrupted(PRUNERS["hyperband-auto"])
    url = sqlite_url(tmp_path, "s.db")
    actual = run_with_an_abandoned_trial(url, OpaqueHyperband, wrap_pruner=False)
    assert trajectory(actual) != trajectory(expected)


# -- checkpoint contents and compatibility ---------------------------------------------------


def reopen(url: str, pruner: BasePruner) -> Study:
    """Open the study again in a fresh sampler, which restores the newest checkpoint."""
    gc.collect()
    study = optuna.load_study(
        study_name="p",
        storage=url,
        sampler=CheckpointingSampler(tpe()),
        pruner=pruner,
    )
    study.optimize(objective, n_trials=1)
    return study


def test_hyperband_state_is_restored_from_the_checkpoint(tmp_path: pathlib.Path) -> None:
    url = sqlite_url(tmp_path, "s.db")
    first = CheckpointingPruner(HyperbandPruner())
    optimize(url, CheckpointingSampler(tpe()), first, n_trials=6)
    before = describe(first.pruner)
    assert before != describe(HyperbandPruner()), "Hyperband should have set itself up"
    resumed = CheckpointingPruner(HyperbandPruner())
    reopen(url, resumed)
    assert describe(resumed.pruner) == before


def test_checkpoint_written_without_a_checkpointing_pruner_still_loads(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Such checkpoints (earlier releases, or a pruner no adapter knows) have no pruner part.
    url = sqlite_url(tmp_path, "s.db")
    optimize(url, CheckpointingSampler(tpe()), NeverPruner(), n_trials=4)
    with caplog.at_level(logging.WARNING, logger=ROOT_LOGGER_NAME):
        study = reopen(url, CheckpointingPruner(HyperbandPruner()))
    assert "written without a CheckpointingPruner" in caplog.text
    assert len(study.trials) == 5


def test_bare_pruner_is_reported_unless_it_resumes_exactly_without_the_wrapper(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger=ROOT_LOGGER_NAME):
        optimize(InMemoryStorage(), CheckpointingSampler(RandomSampler(seed=SEED)), MedianPruner())
    assert "CheckpointingPruner" not in caplog.text
    with caplog.at_level(logging.WARNING, logger=ROOT_LOGGER_NAME):
        study = optimize(
            InMemoryStorage(), CheckpointingSampler(RandomSampler(seed=SEED)), HyperbandPruner()
        )
    # Wrapped in place instead: nothing to report.
    assert "CheckpointingPruner" not in caplog.text
    assert isinstance(study.pruner, CheckpointingPruner)
    with caplog.at_level(logging.WARNING, logger=ROOT_LOGGER_NAME):
        optimize(
            InMemoryStorage(), CheckpointingSampler(RandomSampler(seed=SEED)), OpaqueHyperband()
        )
    assert caplog.text.count("pruner=CheckpointingPruner(OpaqueHyperband(...))") == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=ROOT_LOGGER_NAME):
        optimize(InMemoryStorage(), CheckpointingSampler(RandomSampler(seed=SEED)), NeverPruner())
    assert "cannot tell whether the study's pruner NeverPruner" in caplog.text


class NeverPruner(BasePruner):
    """A user's pruner that optuna-checkpoint knows nothing about."""

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        return False


@pytest.mark.parametrize("first_wrapped", [True, False])
def test_wrapping_the_pruner_or_not_resumes_alike(
    first_wrapped: bool, tmp_path: pathlib.Path
) -> None:
    def pruner(wrapped: bool) -> BasePruner:
        return CheckpointingPruner(HyperbandPruner()) if wrapped else HyperbandPruner()

    url = sqlite_url(tmp_path, "s.db")
    optimize(url, CheckpointingSampler(tpe()), pruner(first_wrapped), n_trials=6)
    resumed = reopen(url, pruner(not first_wrapped))
    expected = optimize(InMemoryStorage(), tpe(), HyperbandPruner(), n_trials=7)
    assert trajectory(resumed.trials) == trajectory(expected.trials)


def test_resuming_with_a_pruner_that_keeps_no_state_raises_config_mismatch(
    tmp_path: pathlib.Path,
) -> None:
    url = sqlite_url(tmp_path, "s.db")
    optimize(url, CheckpointingSampler(tpe()), HyperbandPruner(), n_trials=3)
    with pytest.raises(ConfigMismatchError, match=r"HyperbandPruner.*MedianPruner"):
        reopen(url, MedianPruner())


def test_resuming_with_a_differently_configured_pruner_names_the_difference(
    tmp_path: pathlib.Path,
) -> None:
    url = sqlite_url(tmp_path, "s.db")
    pruner = CheckpointingPruner(HyperbandPruner(reduction_factor=3))
    optimize(url, CheckpointingSampler(tpe()), pruner, n_trials=3)
    with pytest.raises(ConfigMismatchError, match=r"_reduction_factor: was 3, now 2"):
        reopen(url, CheckpointingPruner(HyperbandPruner(reduction_factor=2)))


def test_start_new_stream_accepts_a_changed_pruner(tmp_path: pathlib.Path) -> None:
    url = sqlite_url(tmp_path, "s.db")
    pruner = CheckpointingPruner(SuccessiveHalvingPruner())
    optimize(url, CheckpointingSampler(tpe()), pruner, n_trials=3)
    gc.collect()
    study = optuna.load_study(
        study_name="p",
        storage=url,
        sampler=CheckpointingSampler(tpe(), start_new_stream=True),
        pruner=CheckpointingPruner(SuccessiveHalvingPruner(min_resource=2)),
    )
    study.optimize(objective, n_trials=1)
    assert len(study.trials) == 4


@pytest.mark.parametrize("name", ["hyperband-auto", "sh-auto", "patient-hyperband"])
def test_adapter_state_round_trips_into_a_fresh_pruner(name: str) -> None:
    used = CheckpointingPruner(PRUNERS[name]())
    optimize(InMemoryStorage(), CheckpointingSampler(tpe()), used, n_trials=8)
    fresh = PRUNERS[name]()
    pruner_adapter_for(fresh).load_state_dict(pruner_adapter_for(used.pruner).state_dict())
    assert describe(fresh) == describe(used.pruner)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"trial_allocation_budgets": [1]}, "inconsistent bracket budgets"),
        ({"max_resource": -3}, "max_resource is -3"),
        ({"brackets": "x"}, "no list of brackets"),
        ({"brackets": [{}, {}, {}]}, "no 'min_resource' entry"),
    ],
)
def test_damaged_hyperband_state_is_refused_naming_what_is_wrong(
    change: dict[str, Any], message: str
) -> None:
    used = HyperbandPruner(max_resource=9)
    adapter = pruner_adapter_for(used)
    used._try_initialization(optuna.create_study())  # an explicit max_resource needs no trials
    state = adapter.state_dict() | change
    with pytest.raises(CorruptCheckpointError, match=message):
        pruner_adapter_for(HyperbandPruner(max_resource=9)).load_state_dict(state)


# -- wrong use -------------------------------------------------------------------------------


def test_checkpointing_pruner_without_checkpointing_sampler_says_what_to_do() -> None:
    study = optuna.create_study(pruner=CheckpointingPruner(MedianPruner()))
    with pytest.raises(CheckpointError, match=r"sampler=CheckpointingSampler\(\.\.\.\)"):
        study.optimize(objective, n_trials=1)


def test_wrapping_a_checkpointing_pruner_again_raises_value_error() -> None:
    with pytest.raises(ValueError, match="wrap it only once"):
        CheckpointingPruner(CheckpointingPruner(MedianPruner()))


class MyHyperband(HyperbandPruner):
    pass


class CountingPruner(BasePruner):
    """A user's pruner with state: it prunes every third judgement."""

    def __init__(self) -> None:
        self.calls = 0

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        self.calls += 1
        return self.calls % 3 == 0

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.calls = state_dict["calls"]


def test_unknown_pruner_is_refused_naming_state_dict_and_subclasses_are_not_matched() -> None:
    with pytest.raises(UnsupportedPrunerError, match=r"state_dict\(\) and load_state_dict\(\)"):
        CheckpointingPruner(MyHyperband())


def test_user_pruner_with_state_dict_is_checkpointed_and_restored(
    tmp_path: pathlib.Path,
) -> None:
    url = sqlite_url(tmp_path, "s.db")
    first = CheckpointingPruner(CountingPruner())
    optimize(url, CheckpointingSampler(tpe()), first, n_trials=4)
    counted = first.pruner.calls  # type: ignore[attr-defined]
    assert counted > 0
    resumed = CountingPruner()
    reopen(url, CheckpointingPruner(resumed))
    assert resumed.calls > counted  # restored, then counted on
