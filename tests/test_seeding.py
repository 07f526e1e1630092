"""trial_seed and seed_everything: the objective's seeds follow the trial's logical position."""

from __future__ import annotations

import gc
import json
import pathlib
import subprocess
import sys
import textwrap

import optuna
from optuna.samplers import RandomSampler
from optuna.trial import FixedTrial
from optuna.trial import TrialState
import pytest

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import seed_everything
from optuna_checkpoint import trial_seed
from optuna_checkpoint import uninterrupted_trials
from optuna_checkpoint.tools._seeding import SEED_NUMBER_ATTR


SEED = 7
STUDY = "seeded"


def sqlite_url(tmp_path: pathlib.Path, name: str) -> str:
    return f"sqlite:///{tmp_path / name}"


def recording_objective(trial: optuna.Trial) -> float:
    trial.set_user_attr("seed", trial_seed(trial))
    return trial.suggest_float("x", 0.0, 1.0)


def open_study(url: str, name: str = STUDY) -> optuna.Study:
    return optuna.create_study(
        study_name=name,
        storage=url,
        load_if_exists=True,
        sampler=CheckpointingSampler(RandomSampler(seed=SEED)),
    )


def uninterrupted_seeds(tmp_path: pathlib.Path, n: int) -> list[int]:
    study = open_study(sqlite_url(tmp_path, "uninterrupted.db"))
    study.optimize(recording_objective, n_trials=n)
    return [t.user_attrs["seed"] for t in study.trials]


def run_script(source: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout + result.stderr


def test_seed_depends_on_study_position_and_stream_and_fits_every_generator(
    tmp_path: pathlib.Path,
) -> None:
    url = sqlite_url(tmp_path, "s.db")
    first, other = open_study(url, "first"), open_study(url, "other")
    first.optimize(recording_objective, n_trials=4)
    other.optimize(recording_objective, n_trials=4)
    trial = first.ask()

    seeds = [t.user_attrs["seed"] for t in first.trials[:4]]
    assert len(set(seeds)) == 4  # one per trial
    assert not set(seeds) & {t.user_attrs["seed"] for t in other.trials}  # per study
    assert trial_seed(trial) == trial_seed(trial)  # stable within the trial
    assert len({trial_seed(trial), trial_seed(trial, "data"), trial_seed(trial, "init")}) == 3
    assert all(0 <= s < 2**32 for s in seeds)
    assert first.trials[2].system_attrs[SEED_NUMBER_ATTR] == 2


def test_seeds_of_a_study_killed_and_resumed_in_new_processes_match_an_uninterrupted_run(
    tmp_path: pathlib.Path,
) -> None:
    expected = uninterrupted_seeds(tmp_path, 6)
    url = sqlite_url(tmp_path, "killed.db")
    script = f"""
        import os, signal, sys
        import optuna
        from optuna.samplers import RandomSampler
        from optuna_checkpoint import CheckpointingSampler, trial_seed

        def objective(trial):
            trial.set_user_attr("seed", trial_seed(trial))
            x = trial.suggest_float("x", 0.0, 1.0)
            if sys.argv[1] == "kill" and trial.number == 3:
                os.kill(os.getpid(), signal.SIGKILL)  # dies inside trial 3
            return x

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            study_name={STUDY!r}, storage={url!r}, load_if_exists=True,
            sampler=CheckpointingSampler(RandomSampler(seed={SEED})),
        )
        study.optimize(objective, n_trials=6 if sys.argv[1] == "kill" else 3)
    """
    run_script(script, "kill")
    output = run_script(script, "resume")

    study = optuna.load_study(study_name=STUDY, storage=url)
    assert study.trials[3].state == TrialState.FAIL, output  # the killed attempt, closed
    resumed = uninterrupted_trials(study)
    assert [t.state for t in resumed] == [TrialState.COMPLETE] * 6, output
    assert [t.user_attrs["seed"] for t in resumed] == expected
    # The killed attempt drew the seed its retry (trial 4) drew.
    assert study.trials[3].user_attrs["seed"] == expected[3] == study.trials[4].user_attrs["seed"]


def test_retry_of_an_abandoned_trial_gets_the_seed_of_its_position(
    tmp_path: pathlib.Path,
) -> None:
    expected = uninterrupted_seeds(tmp_path, 4)
    url = sqlite_url(tmp_path, "abandoned.db")
    study = open_study(url)
    study.optimize(recording_objective, n_trials=2)
    abandoned = study.ask()  # left RUNNING, as by a process that died in the objective
    attempt_seed = trial_seed(abandoned)
    del study, abandoned
    gc.collect()  # the sampler is gone and its lease released

    resumed = open_study(url)
    resumed.optimize(recording_objective, n_trials=2)

    assert [t.number for t in uninterrupted_trials(resumed)] == [0, 1, 3, 4]
    assert [t.user_attrs["seed"] for t in uninterrupted_trials(resumed)] == expected
    assert attempt_seed == expected[2]


def test_without_the_sampler_wrapper_the_logical_number_comes_from_the_interruption_record(
    tmp_path: pathlib.Path,
) -> None:
    expected = uninterrupted_seeds(tmp_path, 4)
    url = sqlite_url(tmp_path, "abandoned.db")
    study = open_study(url)
    study.optimize(recording_objective, n_trials=2)
    study.ask()
    del study
    gc.collect()
    open_study(url).optimize(recording_objective, n_trials=1)  # the retry, trial 3
    gc.collect()

    plain = optuna.load_study(study_name=STUDY, storage=url, sampler=RandomSampler())
    trial = plain.ask()  # trial 4, logically 3

    assert trial.number == 4
    assert trial_seed(trial) == expected[3]


def test_fixed_trial_is_seeded_by_its_number_alone() -> None:
    assert trial_seed(FixedTrial({}, number=3)) == trial_seed(FixedTrial({"x": 1}, number=3))
    assert trial_seed(FixedTrial({}, number=3)) != trial_seed(FixedTrial({}, number=4))


def test_frozen_trial_and_non_string_stream_are_refused_with_what_to_do() -> None:
    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)

    with pytest.raises(TypeError, match="audit_determinism"):
        trial_seed(study.trials[0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="stream must be a string"):
        trial_seed(FixedTrial({}), 3)  # type: ignore[arg-type]


def test_seed_everything_rejects_seeds_numpy_cannot_take() -> None:
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        seed_everything(2**32)
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        seed_everything(-1)
    with pytest.raises(TypeError, match="trial or an integer seed"):
        seed_everything(1.5)  # type: ignore[arg-type]


def test_seed_everything_seeds_random_and_numpy_without_importing_torch_or_tensorflow() -> None:
    output = run_script(
        """
        import json, random, sys
        import numpy as np
        from optuna.trial import FixedTrial
        from optuna_checkpoint import seed_everything, trial_seed

        trial = FixedTrial({}, number=5)
        seed = seed_everything(trial)
        first = [random.random(), float(np.random.random())]
        seed_everything(seed)
        again = [random.random(), float(np.random.random())]
        print(json.dumps({
            "same": first == again, "seed": seed == trial_seed(trial),
            "torch": "torch" in sys.modules, "tensorflow": "tensorflow" in sys.modules,
        }))
        """
    )
    result = json.loads(output.strip().splitlines()[-1])
    assert result == {"same": True, "seed": True, "torch": False, "tensorflow": False}, output


@pytest.mark.xdist_group("torch")  # with the other tests that import torch, on one worker
def test_seed_everything_seeds_an_imported_torch_and_sets_determinism_on_request() -> None:
    pytest.importorskip("torch", reason="torch is not installed (optional)")
    output = run_script(
        """
        import json
        import torch
        from optuna_checkpoint import seed_everything

        seed_everything(11)
        before = torch.are_deterministic_algorithms_enabled()
        first = torch.rand(3).tolist()
        seed_everything(11, deterministic=True)
        print(json.dumps({
            "same": torch.rand(3).tolist() == first,
            "off_by_default": not before,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "cudnn": torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark,
        }))
        """
    )
    result = json.loads(output.strip().splitlines()[-1])
    assert result == {"same": True, "off_by_default": True, "deterministic": True, "cudnn": True}
