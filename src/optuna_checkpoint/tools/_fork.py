"""Fork a study at a trial: a new study that continues from there, as the original did.

The new study receives the trials of the uninterrupted run up to the chosen trial (numbered as
that run numbered them) and one checkpoint stream whose initial checkpoint is the sampler's
state after that trial. Run it with the same sampler and it proposes, trial for trial, what the
original proposed next, until you change something: that is the point of a fork ("what if I
had stopped here, or changed the objective from here on?").
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace
from typing import TYPE_CHECKING

import optuna
from optuna.exceptions import DuplicatedStudyError

from optuna_checkpoint._sampler import CheckpointingSampler
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import ConfigMismatchError
from optuna_checkpoint.exceptions import CorruptCheckpointError
from optuna_checkpoint.state import _codec
from optuna_checkpoint.state._composite import sampler_part
from optuna_checkpoint.state._fingerprint import differences
from optuna_checkpoint.state._fingerprint import sampler_fingerprint
from optuna_checkpoint.state._packing import no_such_trial
from optuna_checkpoint.state._rows import SealedRows
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.state.adapters import adapter_for
from optuna_checkpoint.state.adapters._registry import carry_over_study
from optuna_checkpoint.tools._transplant import StudyRef
from optuna_checkpoint.tools._transplant import plant_stream


if TYPE_CHECKING:
    from optuna.samplers import BaseSampler
    from optuna.storages import BaseStorage
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from optuna_checkpoint.stores._base import Checkpoint
    from optuna_checkpoint.stores._base import CheckpointStore
    from optuna_checkpoint.stores._base import Stream


_CHECK_REMEDY = " Check the study with optuna-checkpoint verify, and fork a study that passes."


@dataclass(frozen=True)
class ForkReport:
    """What :func:`fork_study` made.

    Attributes:
        source_study: The study forked.
        at_trial: The trial of the source study the fork continues after.
        study_name: The new study.
        trials_copied: Trials of the uninterrupted run copied into it (numbered from 0).
        stream: The checkpoint stream created in it: the worker id that resumes it.
    """

    source_study: str
    at_trial: int
    study_name: str
    trials_copied: int
    stream: str


def fork_study(
    study: Study,
    sampler: BaseSampler,
    *,
    at_trial: int,
    to_study_name: str,
    to_storage: str | BaseStorage | None = None,
    signing_key: str | bytes | None = None,
    allow_pickle: bool = False,
) -> ForkReport:
    """Create a study that continues from trial ``at_trial`` of ``study``, with its state there.

    Example:

        .. code-block:: python

            source = optuna.load_study(study_name="demo", storage="sqlite:///demo.db")
            fork_study(source, TPESampler(seed=42), at_trial=40, to_study_name="demo-at-40")
            forked = optuna.load_study(
                study_name="demo-at-40",
                storage="sqlite:///demo.db",
                sampler=CheckpointingSampler(TPESampler(seed=42)),
            )
            forked.optimize(other_objective, n_trials=20)

    Args:
        study: The study to fork, as loaded with :func:`optuna.load_study`.
        sampler: A fresh sampler configured as the one the study's :class:`CheckpointingSampler`
            wraps; the fork refuses another configuration, as a resume would.
        at_trial: The number of a finished trial of ``study`` that has a checkpoint.
        to_study_name: The new study's name; it must not exist yet.
        to_storage: Where to create it; by default, the storage of ``study``.
        signing_key: The key the checkpoints are signed with, which also signs the fork's;
            defaults to the environment variable ``OPTUNA_CHECKPOINT_SIGNING_KEY``.
        allow_pickle: Whether a checkpoint holding pickles may be loaded to check it.

    Returns:
        What was created.

    Raises:
        CheckpointError: The trial cannot be forked at, or the new study exists.
        ConfigMismatchError: ``sampler`` is configured differently from the stream's.
        CorruptCheckpointError: The trial's checkpoint fails its seal or does not load, or a
            record of an interrupted trial fails its seal.
    """
    if isinstance(sampler, CheckpointingSampler):
        sampler = sampler.sampler
    sealer = Sealer.from_option(signing_key)
    source = StudyRef.of(study._storage, study.study_name)
    store = source.existing_store()
    if store is None:
        raise CheckpointError(f"study {study.study_name!r} has no checkpoints to fork from")
    trials = study.get_trials(deepcopy=False)
    hidden = {i.trial_id for i in SealedRows(store, source.uid, sealer).interruptions()}
    at = _trial_to_fork_at(trials, hidden, at_trial)
    # Interrupted attempts have checkpoints too, but cannot be forked at.
    forkable = {t._trial_id: t.number for t in trials if t._trial_id not in hidden}
    stream, checkpoint = _checkpoint_of(store, source, trials, at, forkable)
    sealer.check_stored(checkpoint, source.uid, stream.name)

    adapter = adapter_for(sampler, allow_pickle=allow_pickle)
    mismatch = differences(stream.fingerprint, sampler_fingerprint(sampler, adapter))
    if mismatch:
        raise ConfigMismatchError(
            f"the sampler is configured differently from the one that wrote stream "
            f"{stream.name!r}: " + "; ".join(mismatch) + ". Fork with the sampler as it was."
        )
    state = _codec.decode(checkpoint.payload, allow_pickle=allow_pickle)
    adapter.load_state_dict(sampler_part(state))

    history = [t for t in trials if t._trial_id not in hidden and t.number <= at.number]
    target_storage = study._storage if to_storage is None else to_storage
    try:
        target = optuna.create_study(
            storage=target_storage, study_name=to_study_name, directions=study.directions
        )
    except DuplicatedStudyError:
        raise CheckpointError(
            f"a study named {to_study_name!r} already exists there; choose another name"
        ) from None
    for key, value in study.user_attrs.items():
        target.set_user_attr(key, value)
    for key, value in study._storage.get_study_system_attrs(study._study_id).items():
        target._storage.set_study_system_attr(target._study_id, key, value)
    target.add_trials(history)
    copied = target.get_trials(deepcopy=False)
    # What the sampler cached in the study during later trials is not the state at the fork:
    # withdrawn as for trials a resume hides, since the fork never ran them. What remains names
    # the old study's trials, and is pointed at the copies.
    later = {t._trial_id for t in trials if t.number > at.number} | hidden
    adapter.forget_interrupted(target._storage, target._study_id, trials, later)
    carry_over_study(
        target._storage,
        target._study_id,
        {old._trial_id: new._trial_id for old, new in zip(history, copied, strict=True)},
    )

    initial = replace(
        checkpoint, trial_id=None, logical_number=-1, trial_state=None, trial_values=None
    )
    plant_stream(
        StudyRef.of(target._storage, to_study_name),
        name=stream.name,
        fingerprint=stream.fingerprint,
        first_trial_number=len(history),
        checkpoints=[initial],
        sealer=sealer,
    )
    return ForkReport(study.study_name, at.number, to_study_name, len(history), stream.name)


def _trial_to_fork_at(trials: list[FrozenTrial], hidden: set[int], number: int) -> FrozenTrial:
    found = next((t for t in trials if t.number == number), None)
    if found is None:
        raise CheckpointError(f"the study has no trial {number} (it has {len(trials)} trials)")
    if found._trial_id in hidden:
        raise CheckpointError(
            f"trial {number} is an interrupted attempt, retried by a later trial; fork at the "
            "trial before it, or at its retry"
        )
    if not found.state.is_finished():
        raise CheckpointError(f"trial {number} has not finished; fork at a finished trial")
    return found


def _checkpoint_of(
    store: CheckpointStore,
    source: StudyRef,
    trials: list[FrozenTrial],
    trial: FrozenTrial,
    forkable: dict[int, int],
) -> tuple[Stream, Checkpoint]:
    """The checkpoint of ``trial``, and its stream.

    Args:
        store: The study's checkpoint store.
        source: The study.
        trials: All of its trials.
        trial: The trial to fork at.
        forkable: The numbers of the trials a fork may be made at, by trial id.

    Raises:
        CheckpointError: The trial has none (the message names the nearest that do).
        CorruptCheckpointError: The trial has none, and a checkpoint names a trial the study
            does not have (the trial's own, altered, or one copied from elsewhere).
    """
    known = {t._trial_id for t in trials}
    kept: list[int] = []
    strays: list[CorruptCheckpointError] = []
    for stream in store.list_streams(source.uid):
        for checkpoint in store.all_checkpoints(stream.stream_id):
            if checkpoint.trial_id == trial._trial_id:
                return stream, checkpoint
            if checkpoint.trial_id is None:
                continue
            if checkpoint.trial_id in forkable:
                kept.append(forkable[checkpoint.trial_id])
            elif checkpoint.trial_id not in known:
                strays.append(no_such_trial(checkpoint, stream.name, _CHECK_REMEDY))
    if strays:
        raise strays[0]  # perhaps the trial's own checkpoint, its trial id altered
    raise CheckpointError(
        f"trial {trial.number} has no checkpoint (it was pruned by a retention rule, or run "
        f"without CheckpointingSampler); {_nearest(trial.number, kept)}"
    )


def _nearest(number: int, with_checkpoints: list[int]) -> str:
    """Name the nearest trials that have a checkpoint, one on each side of trial ``number``."""
    before = max((n for n in with_checkpoints if n < number), default=None)
    after = min((n for n in with_checkpoints if n > number), default=None)
    if before is not None and after is not None:
        return (
            f"the nearest trials that have one are trial {before} before it and trial {after} "
            "after it"
        )
    if after is not None:
        return f"no trial before it has one; the nearest after it is trial {after}"
    if before is not None:
        return f"no trial after it has one; the nearest before it is trial {before}"
    return "no trial of the study has one"
