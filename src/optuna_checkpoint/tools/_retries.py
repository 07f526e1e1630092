"""The trials the next run will retry: what resumes would decide, worked out without resuming.

Between a kill and the re-run, the trial the killed process was running is still RUNNING and
recorded nowhere as interrupted: the re-run's resume finds it, records it and retries it. This
module tells ``optuna-checkpoint status`` which trials that will be, by the resume's own rule
(:func:`~optuna_checkpoint.resume._interruptions.find_interrupted`) applied to the study as
stored, one idle stream after another as their workers' resumes would. It only reads: a resume
also rolls forward, records, closes and adopts trials, and here each of those is simulated on
copies.

Which trials a resume of a stream considers (``Resumer._unfinished_trials_of_stream``): the
trials claimed by the stream, and the RUNNING trials no stream claimed within the claim window
(their process died before its first sampler hook), which the first worker to resume adopts.
A stream whose lease a live process holds is not resumed: its RUNNING trials are running.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import copy
import dataclasses
import datetime

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_checkpoint.attach._attacher import CLAIM_WINDOW
from optuna_checkpoint.resume._evidence import claiming_streams
from optuna_checkpoint.resume._interruptions import find_interrupted
from optuna_checkpoint.resume._resumer import RESUME_LOOKBACK
from optuna_checkpoint.stores._base import Checkpoint
from optuna_checkpoint.stores._base import CheckpointStore
from optuna_checkpoint.stores._base import Interruption
from optuna_checkpoint.stores._base import Stream
from optuna_checkpoint.study._trials import ended_unsaved


_FIRST_TO_RESUME = -1
"""Stands for the stream that adopts an unclaimed trial when several idle streams could."""

# The trial the next run starts, which no stored trial is: the rule skips that one.
_NEXT_TRIAL = optuna.trial.create_trial(state=TrialState.RUNNING)


def retries_due(
    store: CheckpointStore,
    study_uid: str,
    trials: Sequence[FrozenTrial],
    streams: Sequence[Stream],
    idle: Mapping[int, str],
    known: Sequence[Interruption],
    now: datetime.datetime,
) -> list[Interruption]:
    """Return the trials the next resumes will take for interrupted, each with its retry's place.

    Args:
        store: The study's checkpoint store.
        study_uid: The study.
        trials: All of its trials.
        streams: Its checkpoint streams, in the order they were created.
        idle: For each stream no live process holds, by id: why its lease is free (as
            :func:`~optuna_checkpoint.attach._lease.judge_lease` says).
        known: The interruptions recorded already.
        now: The time, in Optuna's naive local datetimes, for the claim window.

    Returns:
        One interruption per trial, in trial-number order: its logical number is the logical
        trial its retry will be, its reason says why, then the evidence after a semicolon, and its
        ``stream_id`` is the stream that retries it (``None``: whichever of several idle
        streams resumes first). Retries a ``max_retries`` limit would refuse are included.
    """
    hidden = {i.trial_id for i in known}
    candidates = [
        t
        for t in trials
        if t._trial_id not in hidden
        and (t.state in (TrialState.RUNNING, TrialState.FAIL) or ended_unsaved(t))
    ]
    claims = claiming_streams(store, study_uid, candidates)
    adopted = _adopters(candidates, claims, streams, idle, now)

    by_id = {t._trial_id: t for t in trials}
    recorded = list(known)
    due: list[Interruption] = []
    for stream in streams:
        why = idle.get(stream.stream_id)
        if why is None:
            continue
        ran = {trial_id for trial_id, owner in claims.items() if owner == stream.stream_id}
        taken = {trial_id for trial_id, owner in adopted.items() if owner == stream.stream_id}
        fresh = _resume(store, stream, by_id, ran | taken, recorded)
        recorded.extend(fresh)
        due.extend(_with_evidence(i, why if i.trial_id in ran else _UNCLAIMED) for i in fresh)
    undecided = {trial_id for trial_id, owner in adopted.items() if owner == _FIRST_TO_RESUME}
    if undecided:
        fresh, _ = find_interrupted(
            by_id,
            _NEXT_TRIAL,
            recorded,
            None,
            mine=undecided,
            stream_id=_FIRST_TO_RESUME,
            max_retries=None,
        )
        due.extend(
            dataclasses.replace(_with_evidence(i, _UNCLAIMED), stream_id=None) for i in fresh
        )
    return sorted(due, key=lambda i: i.trial_number)


_UNCLAIMED = f"no stream claimed it within the {CLAIM_WINDOW:.0f} s claim window"


def _with_evidence(interruption: Interruption, evidence: str) -> Interruption:
    return dataclasses.replace(interruption, reason=f"{interruption.reason}; {evidence}")


def _adopters(
    candidates: Sequence[FrozenTrial],
    claims: Mapping[int, int],
    streams: Sequence[Stream],
    idle: Mapping[int, str],
    now: datetime.datetime,
) -> dict[int, int]:
    """The unclaimed RUNNING trials a resume adopts, each with the stream that will adopt it.

    A trial younger than the claim window may be one a live process is just starting: a resume
    waits for it to be claimed, so it is not counted here. Only a stream that began before the
    trial adopts it; when several idle ones could, whichever resumes first does.
    """
    window = datetime.timedelta(seconds=CLAIM_WINDOW)
    adopted = {}
    for trial in candidates:
        started = trial.datetime_start
        if (
            trial._trial_id in claims
            or trial.state != TrialState.RUNNING
            or started is None
            or now - started < window
        ):
            continue
        able = [
            s.stream_id
            for s in streams
            if s.stream_id in idle and s.first_trial_number <= trial.number
        ]
        if able:
            adopted[trial._trial_id] = able[0] if len(able) == 1 else _FIRST_TO_RESUME
    return adopted


def _resume(
    store: CheckpointStore,
    stream: Stream,
    trials: Mapping[int, FrozenTrial],
    mine: set[int],
    recorded: Sequence[Interruption],
) -> list[Interruption]:
    """What a resume of ``stream`` would find interrupted, after ``recorded`` ones."""
    latest = store.latest_checkpoints(
        stream.stream_id, excluding={i.trial_id for i in recorded}, limit=RESUME_LOOKBACK
    )
    newest = latest[0] if latest else None
    view = dict(trials)
    if newest is not None and newest.trial_id in view:
        view[newest.trial_id] = _rolled_forward(view[newest.trial_id], newest)
    fresh, _ = find_interrupted(
        view,
        _NEXT_TRIAL,
        list(recorded),
        newest,
        mine=mine,
        stream_id=stream.stream_id,
        max_retries=None,  # the sampler's option, which the storage does not record
    )
    return fresh


def _rolled_forward(trial: FrozenTrial, checkpoint: Checkpoint) -> FrozenTrial:
    """The trial as a resume's roll forward leaves it: its end, if only its checkpoint has it."""
    if trial.state != TrialState.RUNNING or checkpoint.trial_state is None:
        return trial
    ended = copy.copy(trial)
    ended.state = TrialState[checkpoint.trial_state]
    return ended
