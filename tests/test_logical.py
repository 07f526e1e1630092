"""HiddenTrials: the study as the uninterrupted run would show it, interrupted trials removed."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
from optuna.trial import create_trial
import pytest

from optuna_checkpoint.resume._interruptions import find_interrupted
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.study._logical import HiddenTrials
from optuna_checkpoint.study._trials import CHECKPOINT_NOT_SAVED
from optuna_checkpoint.study._trials import INTERRUPTED_ATTR


DISTRIBUTION = FloatDistribution(0.0, 1.0)


def make_trials(states: list[TrialState]) -> list[FrozenTrial]:
    """Frozen trials numbered 0.. with ids 100.., as storage would hand them out."""
    trials = []
    for number, state in enumerate(states):
        trial = create_trial(
            state=state,
            params={"x": number / 10},
            distributions={"x": DISTRIBUTION},
            value=float(number) if state == TrialState.COMPLETE else None,
        )
        trial.number = number
        trial._trial_id = 100 + number
        trials.append(trial)
    return trials


def hide(*trials: FrozenTrial) -> HiddenTrials:
    return HiddenTrials((t._trial_id, t.number) for t in trials)


C, F, R = TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING


def test_logical_numbers_close_up_after_each_hidden_trial() -> None:
    hidden = HiddenTrials([(102, 2), (105, 5), (106, 6)])

    logical = [hidden.logical_number(n) for n in range(9)]

    # Trial 2 was interrupted and 3 retried it; 5 and 6 were both interrupted attempts at
    # logical trial 4, which 7 finally ran.
    assert logical == [0, 1, 2, 2, 3, 4, 4, 4, 5]


def test_hidden_trial_is_dropped_and_later_numbers_closed_up_on_copies() -> None:
    trials = make_trials([C, C, F, C, C])
    hidden = hide(trials[2])

    result = hidden.logical_trials(trials, copied=False)

    assert [t._trial_id for t in result] == [100, 101, 103, 104]
    assert [t.number for t in result] == [0, 1, 2, 3]
    # Unchanged trials are passed through; renumbered ones are copies, the originals intact.
    assert result[0] is trials[0] and result[1] is trials[1]
    assert result[2] is not trials[3] and result[3] is not trials[4]
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert [(t.params, t.values, t.state) for t in result[2:]] == [
        (t.params, t.values, t.state) for t in trials[3:]
    ]


def test_nothing_hidden_returns_the_same_trials_and_study_without_copying() -> None:
    trials = make_trials([C, F, C])
    hidden = HiddenTrials()
    study = optuna.create_study()

    assert not hidden
    result = hidden.logical_trials(trials, copied=False)
    assert all(a is b for a, b in zip(result, trials, strict=True))
    assert hidden.logical_trial(trials[2]) is trials[2]
    assert hidden.view(study) is study


def test_trials_before_the_hidden_one_are_not_copied() -> None:
    trials = make_trials([C, C, R])
    hidden = hide(trials[2])  # the interrupted trial is the latest: nothing to renumber

    result = hidden.logical_trials(trials, copied=False)

    assert len(result) == 2
    assert all(a is b for a, b in zip(result, trials, strict=False))
    assert hidden.logical_trial(trials[1]) is trials[1]


def test_deepcopy_path_renumbers_the_given_copies_in_place() -> None:
    trials = make_trials([C, F, C, C])
    hidden = hide(trials[1])

    result = hidden.logical_trials(trials, copied=True)

    assert [t._trial_id for t in result] == [100, 102, 103]
    assert result[1] is trials[2] and result[2] is trials[3]
    assert [t.number for t in result] == [0, 1, 2]
    assert trials[2].number == 1  # renumbered in place: the caller's copies are its to change


def test_retry_of_an_interrupted_trial_takes_its_logical_number_on_a_copy() -> None:
    trials = make_trials([C, F, F, R])  # 1 and 2 interrupted, 3 retries logical trial 1
    hidden = hide(trials[1], trials[2])

    logical = hidden.logical_trial(trials[3])

    assert logical.number == 1
    assert logical is not trials[3] and trials[3].number == 3
    assert logical._trial_id == trials[3]._trial_id  # still addresses the real trial


@pytest.mark.parametrize("use_cache", [False, True])
def test_logical_view_of_a_study_lists_the_uninterrupted_trials(use_cache: bool) -> None:
    study = optuna.create_study()
    study.add_trials(make_trials([C, C, F, C, C]))
    real = study.get_trials(deepcopy=False)
    view = HiddenTrials([(real[2]._trial_id, 2)]).view(study)

    assert [t.number for t in view.trials] == [0, 1, 2, 3]
    assert [t.params["x"] for t in view.trials] == [0.0, 0.1, 0.3, 0.4]
    shallow = view._get_trials(deepcopy=False, use_cache=use_cache)
    assert [t.number for t in shallow] == [0, 1, 2, 3]
    complete = view.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert [t.number for t in complete] == [0, 1, 2, 3]
    assert view.get_trials(states=(TrialState.FAIL,)) == []
    assert view.study_name == study.study_name and view._study_id == study._study_id
    # The real study, and the trials its storage caches, keep their stored numbers.
    assert [t.number for t in study._get_trials(deepcopy=False, use_cache=use_cache)] == [
        0,
        1,
        2,
        3,
        4,
    ]
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]


def test_a_trial_two_rules_call_interrupted_is_hidden_once() -> None:
    # Ctrl-C right after an unsaved trial's checkpoint was saved after all: the trial is FAIL,
    # tagged as unsaved, and its checkpoint is the stream's newest. Hidden twice, every later
    # trial's logical number would be one too small.
    study = optuna.create_study()
    for x in (0.1, 0.2):
        study.add_trial(create_trial(params={"x": x}, distributions={"x": DISTRIBUTION}, value=x))
    unsaved = study.ask({"x": DISTRIBUTION})
    study._storage.set_trial_system_attr(unsaved._trial_id, INTERRUPTED_ATTR, CHECKPOINT_NOT_SAVED)
    study.tell(unsaved, state=TrialState.FAIL)
    current = study.ask()
    trials = {t._trial_id: t for t in study.get_trials(deepcopy=False)}
    newest = Checkpoint(
        trial_id=unsaved._trial_id,
        logical_number=2,
        trial_state="COMPLETE",
        trial_values=[0.3],
        adapter="RandomSampler",
        payload=b"",
        checksum="",
    )
    fresh, exhausted = find_interrupted(
        trials,
        trials[current._trial_id],
        [],
        newest,
        mine={unsaved._trial_id},
        stream_id=1,
        max_retries=None,
    )
    assert [i.trial_number for i in fresh] == [2] and not exhausted
