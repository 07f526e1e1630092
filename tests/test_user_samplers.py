"""User-defined samplers: Stateful ones, nested ones, pickled ones, and the example of the docs.

``docs/adapters.md`` shows ``docs/examples/local_search_sampler.py`` verbatim and a kill-test
recipe; both are executed here, so the page cannot drift from working code.
"""

from __future__ import annotations

from collections.abc import Iterator
import gc
import pathlib
import re
import signal
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.samplers import RandomSampler
from optuna.samplers import TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial
import pytest
import sqlalchemy as sa

from optuna_checkpoint import CheckpointError
from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import CorruptCheckpointError
from optuna_checkpoint import Stateful
from optuna_checkpoint import UnsupportedSamplerError
from optuna_checkpoint import load_sampler_state_dict
from optuna_checkpoint import sampler_state_dict
from optuna_checkpoint import uninterrupted_trials
from optuna_checkpoint.state import _codec
from optuna_checkpoint.state.adapters._pickle import PickleAdapter
from optuna_checkpoint.state.adapters._stateful import StatefulAdapter
from optuna_checkpoint.stores._sql import checkpoints


ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "adapters.md"
EXAMPLES = ROOT / "docs" / "examples"
EXAMPLE = EXAMPLES / "local_search_sampler.py"


def code_block_after(marker: str) -> str:
    """The fenced Python block that follows the HTML comment ``<!-- {marker}`` in the doc."""
    text = DOC.read_text()
    match = re.search(
        rf"^<!-- {re.escape(marker)}.*?-->\n```python\n(.*?)^```$", text, re.M | re.S
    )
    assert match is not None, f"docs/adapters.md has no code block marked {marker!r}"
    return match.group(1)


def load_example() -> Any:
    namespace: dict[str, Any] = {"__name__": "local_search_sampler"}
    exec(compile(EXAMPLE.read_text(), str(EXAMPLE), "exec"), namespace)
    return namespace["LocalSearchSampler"]


def adapter_names(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return set(connection.execute(sa.select(checkpoints.c.adapter)).scalars())
    finally:
        engine.dispose()


def floats(trial: optuna.Trial) -> float:
    return (trial.suggest_float("x", -3.0, 3.0) - 1.0) ** 2 + trial.suggest_float("y", 0.0, 1.0)


def exact(trials: list[FrozenTrial]) -> list[tuple[Any, ...]]:
    return [
        (t.state.name, sorted((k, v.hex()) for k, v in t.params.items()), t.values) for t in trials
    ]


def resume_in_two_parts(make: Any, tmp_path: pathlib.Path, **options: Any) -> optuna.Study:
    """Four trials with one wrapped sampler, then four with a freshly constructed one."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = CheckpointingSampler(make(), **options)
    optuna.create_study(study_name="s", storage=url, sampler=first).optimize(floats, n_trials=4)
    del first
    gc.collect()  # releases the lease, as the end of a process would
    study = optuna.load_study(
        study_name="s", storage=url, sampler=CheckpointingSampler(make(), **options)
    )
    study.optimize(floats, n_trials=4)
    return study


def uninterrupted(make: Any) -> optuna.Study:
    study = optuna.create_study(sampler=make())
    study.optimize(floats, n_trials=8)
    return study


# -- the documented example and recipe -------------------------------------------------------


def test_docs_show_the_example_file_verbatim() -> None:
    assert code_block_after("example: docs/examples/local_search_sampler.py") == (
        EXAMPLE.read_text()
    )


@pytest.fixture
def recipe(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The doc's kill-test recipe, with the example importable by its child processes."""
    monkeypatch.setenv("PYTHONPATH", str(EXAMPLES))
    namespace: dict[str, Any] = {"__name__": "recipe"}
    exec(compile(code_block_after("recipe"), "docs/adapters.md", "exec"), namespace)
    yield namespace


def test_docs_kill_recipe_passes_on_the_example_and_catches_a_bare_restart(
    recipe: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    recipe["test_sampler_resumes_exactly_after_a_kill"](tmp_path)

    # Control: the same kill without the wrapper restarts from the seed and without the best
    # point, and the recipe's comparison sees it.
    run_script, trials = recipe["run_script"], recipe["trials"]
    assert run_script(tmp_path, "bare.db", "bare", kill_at=5) == -signal.SIGKILL
    assert run_script(tmp_path, "bare.db", "bare") == 0
    assert trials(tmp_path, "bare.db") != trials(tmp_path, "uninterrupted.db")


def test_example_is_checkpointed_through_its_own_methods_even_when_pickles_are_allowed(
    tmp_path: pathlib.Path,
) -> None:
    local_search = load_example()
    assert isinstance(local_search(seed=1), Stateful)
    study = resume_in_two_parts(lambda: local_search(seed=1), tmp_path, allow_pickle=True)
    assert exact(study.trials) == exact(uninterrupted(lambda: local_search(seed=1)).trials)
    assert adapter_names(f"sqlite:///{tmp_path / 'study.db'}") == {"Stateful"}


# -- Stateful: what is checked -----------------------------------------------------------------


class ReturnsState(RandomSampler):
    """A Stateful sampler whose state_dict() returns whatever the test gives it."""

    def __init__(self, state: Any) -> None:
        super().__init__(seed=0)
        self.returned = state

    def state_dict(self) -> Any:
        return self.returned

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loaded = state_dict["needed"]


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"seen": {1, 2}}, "state_dict()['seen'] is a builtins.set"),
        (
            {"w": [np.zeros(2, np.float32)]},
            "state_dict()['w'][0] is a numpy array of dtype float32",
        ),
        ({"nested": {3: "x"}}, "state_dict()['nested'] has the key 3"),
        ([1, 2], "state_dict() returned a list"),
    ],
    ids=["set", "float32-array", "int-key", "not-a-dict"],
)
def test_value_a_checkpoint_cannot_hold_is_named_at_the_first_checkpoint(
    state: Any, expected: str, tmp_path: pathlib.Path
) -> None:
    sampler = CheckpointingSampler(ReturnsState(state))  # user code is not called yet
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", sampler=sampler)
    with pytest.raises(CheckpointError) as raised:
        study.optimize(floats, n_trials=1)
    assert expected in str(raised.value)
    assert "docs/adapters.md" in str(raised.value)


def test_state_the_sampler_cannot_load_is_reported_as_corrupt() -> None:
    with pytest.raises(CorruptCheckpointError, match=r"ReturnsState.load_state_dict\(\)") as e:
        StatefulAdapter(ReturnsState({})).load_state_dict({"other": 1})
    assert "KeyError" in str(e.value)


# -- samplers inside a user's sampler ----------------------------------------------------------


def test_sampler_state_dict_round_trips_an_optuna_sampler_exactly() -> None:
    study = optuna.create_study(sampler=TPESampler(seed=3, n_startup_trials=2))
    study.optimize(floats, n_trials=4)
    state = _codec.decode(_codec.encode(sampler_state_dict(study.sampler)))
    fresh = TPESampler(seed=3, n_startup_trials=2)
    load_sampler_state_dict(fresh, state)
    study.sampler = fresh
    study.optimize(floats, n_trials=4)
    reference = optuna.create_study(sampler=TPESampler(seed=3, n_startup_trials=2))
    reference.optimize(floats, n_trials=8)
    assert exact(study.trials) == exact(reference.trials)


def test_sampler_state_dict_refuses_a_sampler_it_cannot_capture_without_pickles() -> None:
    with pytest.raises(UnsupportedSamplerError, match="PlainWalk"):
        sampler_state_dict(PlainWalk(seed=0))


# -- subclasses of Optuna's samplers ---------------------------------------------------------


class MyTPE(TPESampler):
    pass


class QuickTPE(TPESampler):
    """Other defaults and an overridden hook, but no attribute of its own."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed=seed, n_startup_trials=2)

    def sample_independent(self, *args: Any, **kwargs: Any) -> Any:
        return super().sample_independent(*args, **kwargs)


class CountingTPE(TPESampler):
    def __init__(self, seed: int) -> None:
        super().__init__(seed=seed)
        self._told = 0
        self._history: list[float] = []


class SlottedRandom(RandomSampler):
    __slots__ = ("_last",)


class ForgetfulTPE(TPESampler):
    def __init__(self) -> None:  # never calls TPESampler.__init__
        self._rng = None


@pytest.mark.parametrize(
    "make", [lambda: MyTPE(seed=5), lambda: QuickTPE(seed=5)], ids=["MyTPE", "QuickTPE"]
)
def test_subclass_without_attributes_of_its_own_resumes_exactly_with_its_bases_adapter(
    make: Any, tmp_path: pathlib.Path
) -> None:
    wrapped = CheckpointingSampler(make())
    assert type(wrapped._state.adapter).__name__ == "TPESamplerAdapter"
    resumed = resume_in_two_parts(make, tmp_path)
    assert exact(uninterrupted_trials(resumed)) == exact(uninterrupted(make).trials)
    assert adapter_names(f"sqlite:///{tmp_path / 'study.db'}") == {"TPESampler"}


def test_subclass_adding_attributes_is_refused_naming_them_and_both_ways_forward() -> None:
    with pytest.raises(UnsupportedSamplerError) as raised:
        CheckpointingSampler(CountingTPE(seed=0))
    message = str(raised.value)
    assert "CountingTPE adds attributes to TPESampler" in message
    assert "_history, _told." in message
    assert "state_dict() and load_state_dict() on CountingTPE" in message
    assert "allow_pickle=True" in message
    pickled = CheckpointingSampler(CountingTPE(seed=0), allow_pickle=True)
    assert isinstance(pickled._state.adapter, PickleAdapter)
    with pytest.raises(UnsupportedSamplerError, match=r"SlottedRandom adds attributes .*: _last"):
        CheckpointingSampler(SlottedRandom(seed=0))
    with pytest.raises(UnsupportedSamplerError, match="ForgetfulTPE lacks attributes"):
        CheckpointingSampler(ForgetfulTPE())


# -- allow_pickle ----------------------------------------------------------------------------


class PlainWalk(BaseSampler):
    """A user's sampler without state_dict(): a seeded walk with a step counter."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.RandomState(seed)
        self._steps = 0

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: Study, trial: FrozenTrial, name: str, distribution: BaseDistribution
    ) -> Any:
        self._steps += 1
        low, high = distribution.low, distribution.high  # type: ignore[attr-defined]
        return float(low + (high - low) * ((self._rng.rand() + 0.1 * self._steps) % 1.0))


class WithLock(PlainWalk):
    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.lock = threading.Lock()


class WithGenerator(PlainWalk):
    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.pending = (i for i in range(3))


class WithOpenFile(PlainWalk):
    def __init__(self, seed: int, path: pathlib.Path) -> None:
        super().__init__(seed)
        self.log = path.open("a")


@pytest.mark.parametrize(
    ("make", "attribute"),
    [
        (lambda path: WithLock(seed=0), "'lock' (lock)"),
        (lambda path: WithGenerator(seed=0), "'pending' (generator)"),
        (lambda path: WithOpenFile(seed=0, path=path), "'log' (TextIOWrapper)"),
    ],
    ids=["lock", "generator", "open-file"],
)
def test_unpicklable_sampler_is_refused_at_construction_naming_the_attribute(
    make: Any, attribute: str, tmp_path: pathlib.Path
) -> None:
    sampler = make(tmp_path / "log.txt")
    with pytest.raises(UnsupportedSamplerError) as raised:
        CheckpointingSampler(sampler, allow_pickle=True)
    message = str(raised.value)
    assert f"attribute {attribute}" in message
    assert "__getstate__" in message
    assert "state_dict()" in message
    if isinstance(sampler, WithOpenFile):
        sampler.log.close()


class LockInGetstate(WithLock):
    """Leaves its lock out of pickling and re-creates it, the standard way."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(state)
        self.lock = threading.Lock()


def test_sampler_dropping_its_lock_in_getstate_is_pickled_and_resumes_exactly(
    tmp_path: pathlib.Path,
) -> None:
    study = resume_in_two_parts(lambda: LockInGetstate(seed=5), tmp_path, allow_pickle=True)
    assert exact(study.trials) == exact(uninterrupted(lambda: LockInGetstate(seed=5)).trials)
    assert adapter_names(f"sqlite:///{tmp_path / 'study.db'}") == {"Pickle"}


class LockLater(PlainWalk):
    """Picklable when wrapped; holds a lock from its first trial on."""

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.lock = threading.Lock()


def test_sampler_unpicklable_after_construction_is_named_at_its_first_checkpoint(
    tmp_path: pathlib.Path,
) -> None:
    sampler = CheckpointingSampler(LockLater(seed=0), allow_pickle=True)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", sampler=sampler)
    with pytest.raises(BaseException) as raised:
        study.optimize(floats, n_trials=2)
    # Optuna's own bookkeeping may raise on top of ours once the trial stays RUNNING; ours is in
    # the chain that the traceback prints.
    chain: list[BaseException] = []
    error: BaseException | None = raised.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    ours = [e for e in chain if isinstance(e, UnsupportedSamplerError)]
    assert ours, chain
    assert "attribute 'lock'" in str(ours[0])
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING  # retried on resume


def test_pickled_state_of_release_0_2_0_still_loads() -> None:
    # 0.2.0 had the codec pickle the attribute dict itself.
    old = _codec.encode({"object_state": _codec.PickledValue({"_steps": 7})}, allow_pickle=True)
    sampler = PlainWalk(seed=0)
    PickleAdapter(sampler).load_state_dict(_codec.decode(old, allow_pickle=True))
    assert sampler._steps == 7


MAIN_SCRIPT = """
import os
import signal
import sys

import numpy as np
import optuna
from optuna_checkpoint import CheckpointingSampler


class Best:
    def __init__(self):
        self.params, self.value = None, None

    def offer(self, params, value):
        if self.value is None or value < self.value:
            self.params, self.value = dict(params), value


class ScriptSampler(optuna.samplers.BaseSampler):
    # Defined in __main__ and without state_dict(): only cloudpickle, by value, can store it.
    def __init__(self, seed):
        self._rng = np.random.RandomState(seed)
        self._best = Best()

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, name, distribution):
        low, high = distribution.low, distribution.high
        if self._best.params is None:
            return float(self._rng.uniform(low, high))
        step = self._rng.normal(0.0, 0.2 * (high - low))
        return float(np.clip(self._best.params[name] + step, low, high))

    def after_trial(self, study, trial, state, values):
        if values is not None:
            self._best.offer(trial.params, values[0])


storage, wrap, kill_at = sys.argv[1], sys.argv[2] == "wrap", int(sys.argv[3])
sampler = ScriptSampler(seed=4)
if wrap:
    sampler = CheckpointingSampler(sampler, allow_pickle=True)
study = optuna.create_study(
    study_name="main", storage=storage, load_if_exists=True, sampler=sampler
)


def objective(trial):
    x, y = trial.suggest_float("x", -2.0, 2.0), trial.suggest_float("y", -2.0, 2.0)
    if trial.number == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return (x - 0.5) ** 2 + (y + 0.5) ** 2


complete = (optuna.trial.TrialState.COMPLETE,)
study.optimize(objective, callbacks=[optuna.study.MaxTrialsCallback(10, states=complete)])
"""


@pytest.mark.soak  # two fresh interpreters: about 12 s
def test_sampler_defined_in_a_script_resumes_exactly_in_a_new_process_with_allow_pickle(
    tmp_path: pathlib.Path,
) -> None:
    script = tmp_path / "script.py"
    script.write_text(MAIN_SCRIPT)

    def run(database: str, wrap: str, kill_at: int = -1) -> int:
        url = f"sqlite:///{tmp_path / database}"
        args = [sys.executable, str(script), url, wrap, str(kill_at)]
        return subprocess.run(args, capture_output=True, timeout=300).returncode

    def trials(database: str) -> list[tuple[Any, ...]]:
        url = f"sqlite:///{tmp_path / database}"
        return exact(uninterrupted_trials(optuna.load_study(study_name="main", storage=url)))

    assert run("killed.db", "wrap", kill_at=4) == -signal.SIGKILL
    assert run("killed.db", "wrap") == 0
    assert run("uninterrupted.db", "bare") == 0
    assert trials("killed.db") == trials("uninterrupted.db")
    assert adapter_names(f"sqlite:///{tmp_path / 'killed.db'}") == {"Pickle"}
    # Control: killed the same way without the wrapper, the script's sampler forgets its best
    # point and restarts its generator.
    assert run("bare.db", "bare", kill_at=4) == -signal.SIGKILL
    assert run("bare.db", "bare") == 0
    assert trials("bare.db") != trials("uninterrupted.db")
