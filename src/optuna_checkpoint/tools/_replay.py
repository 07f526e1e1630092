"""Replay a sampler over a study's recorded trials and compare it with the record, bit for bit.

A fresh sampler runs on an in-memory copy of the study, asked for each recorded parameter and
told each recorded result. Every parameter must come out bit for bit as recorded and, where the
trial has a checkpoint, the sampler's state after it must equal the checkpoint's. Two orders, as
the study ran:

* **In order** (:func:`replay_in_order`): one worker's trials, from its stream's initial
  checkpoint, in the order of the uninterrupted run. The trials the worker did not run (before
  its stream began, or other workers') join the copy as they come, as the worker saw them.
* **By position** (:func:`replay_by_position`, ``deterministic_workers``): the trial at position
  n is a function of the sampler as constructed, n, and the settled trials at positions up to
  n - L. Each position gets its own random streams, derived as the workers derive them
  (:class:`~optuna_checkpoint.parallel._position_streams.PositionStreams`), and is shown that
  history only (:class:`~optuna_checkpoint.study._logical.FixedHistory`), whichever worker ran
  it and whenever.

The replay feeds the recorded objective values back, so it checks the sampler side only.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.samplers import BaseSampler
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState

from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.parallel._position_streams import PositionStreams
from optuna_checkpoint.state import _codec
from optuna_checkpoint.state._composite import sampler_part
from optuna_checkpoint.state._versions import library_versions
from optuna_checkpoint.state.adapters import adapter_for
from optuna_checkpoint.study._logical import FixedHistory
from optuna_checkpoint.study._positions import PositionBook
from optuna_checkpoint.study._trials import FAILED_TRIAL_ATTR
from optuna_checkpoint.tools._verify_report import CONFIGURED_OTHERWISE
from optuna_checkpoint.tools._verify_report import Divergence


if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from optuna_checkpoint.state.adapters import StateAdapter
    from optuna_checkpoint.stores._base import Checkpoint

    Decoded = tuple[Checkpoint, dict[str, Any]]  # a checkpoint and its decoded state

_FIXED_PARAMS_ATTR = "fixed_params"  # where Optuna keeps an enqueued trial's parameters


@dataclass
class Replayed:
    """How far a replay went: the trials it reproduced, and where it diverged if it did.

    ``not_run`` says why it could not start, if it could not.
    """

    trials: int = 0
    divergence: Divergence | None = None
    not_run: str | None = None


def replay_in_order(
    study: Study,
    stream: str,
    initial: dict[str, Any],
    logical: Sequence[FrozenTrial],
    ours: Collection[int],
    sampler: BaseSampler,
    checkpoints: Mapping[int, Decoded],
    causes: Causes,
    tick: Callable[[], None],
) -> Replayed:
    """Replay the trials of one stream, in the order of the uninterrupted run.

    Args:
        study: The recorded study.
        stream: The stream's name.
        initial: The decoded state of the stream's initial checkpoint.
        logical: The study's finished trials, interrupted attempts left out, by number.
        ours: The ids of the trials the stream ran; the others join the copy as history.
        sampler: A fresh sampler, configured as the stream's.
        checkpoints: The decoded checkpoints, by trial id.
        causes: What explains a divergence.
        tick: Called after each trial replayed.
    """
    adapter = adapter_for(sampler, allow_pickle=True)
    replica = optuna.create_study(
        storage=InMemoryStorage(), sampler=sampler, directions=study.directions
    )
    adapter.bind_study(replica._storage, replica._study_id, sole_stream=True)
    adapter.load_state_dict(sampler_part(initial))
    result = Replayed()
    for recorded in logical:
        if recorded._trial_id not in ours:
            replica.add_trial(recorded)  # another worker's, or from before the stream began
            continue
        found = _replay_trial(replica, recorded, adapter, checkpoints.get(recorded._trial_id))
        tick()
        if found is not None:
            result.divergence = causes.divergence(recorded, stream, found, result.trials)
            return result
        result.trials += 1
    return result


def replay_by_position(
    study: Study,
    trials: Sequence[FrozenTrial],
    hidden: Collection[int],
    lag: int,
    sampler: BaseSampler,
    checkpoints: Mapping[int, Decoded],
    stream_of: Mapping[int, str],
    causes: Causes,
    tick: Callable[[], None],
) -> Replayed:
    """Replay every settled position of a deterministic parallel study.

    Args:
        study: The recorded study.
        trials: All its trials.
        hidden: The ids of its interrupted attempts.
        lag: L: the trial at position n saw the positions up to n - L.
        sampler: A fresh sampler, configured as the study's.
        checkpoints: The decoded checkpoints of every stream, by trial id.
        stream_of: The name of the stream that ran each trial, by trial id.
        causes: What explains a divergence.
        tick: Called after each position replayed.
    """
    adapter = adapter_for(sampler, allow_pickle=True)
    try:
        streams = PositionStreams(adapter)  # the sampler as constructed, before any replay
    except ValueError as e:  # no random generator to derive per position
        return Replayed(not_run=str(e))
    shown = _ShownHistory(sampler)
    replica = optuna.create_study(
        storage=InMemoryStorage(), sampler=shown, directions=study.directions
    )
    adapter.bind_study(replica._storage, replica._study_id, sole_stream=True)
    book = PositionBook.read(trials, hidden)
    result = Replayed()
    for position in sorted(book.settled):
        recorded = book.settled[position]
        shown.show(book.history(position - lag), position)
        streams.begin(recorded._trial_id, position)
        with streams.active(recorded._trial_id):
            found = _replay_trial(replica, recorded, adapter, checkpoints.get(recorded._trial_id))
        streams.end(recorded._trial_id)
        tick()
        if found is not None:
            stream = stream_of.get(recorded._trial_id)
            result.divergence = causes.divergence(recorded, stream, found, result.trials)
            return result
        result.trials += 1
    return result


class _ShownHistory(BaseSampler):
    """Hands every hook to the replayed sampler with the study as one position saw it."""

    def __init__(self, sampler: BaseSampler) -> None:
        self._sampler = sampler
        self._history: list[FrozenTrial] = []
        self._position = 0

    def show(self, history: list[FrozenTrial], position: int) -> None:
        """Show the next trial asked for as at ``position``, with ``history`` before it."""
        self._history, self._position = history, position

    def _view(self, study: Study, trial: FrozenTrial) -> tuple[Study, FrozenTrial]:
        return FixedHistory(self._history, trial._trial_id, self._position).apply(study, trial)

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._sampler.infer_relative_search_space(*self._view(study, trial))

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._sampler.sample_relative(*self._view(study, trial), search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        view, shown = self._view(study, trial)
        return self._sampler.sample_independent(view, shown, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._sampler.before_trial(*self._view(study, trial))

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._sampler.after_trial(*self._view(study, trial), state, values)


def _replay_trial(
    replica: Study,
    recorded: FrozenTrial,
    adapter: StateAdapter,
    checkpoint: Decoded | None,
) -> tuple[str | None, str, str] | None:
    """Replay one trial; return ``(param, recorded, replayed)`` at the first difference."""
    fixed = recorded.system_attrs.get(_FIXED_PARAMS_ATTR)
    if fixed:
        replica.enqueue_trial(fixed, skip_if_exists=False)
    trial = replica.ask()
    for name, distribution in recorded.distributions.items():
        replayed = _suggest(trial, name, distribution)
        if exact(replayed) != exact(recorded.params[name]):
            replica.tell(trial, state=TrialState.FAIL)
            return name, exact(recorded.params[name]), exact(replayed)
    for key, value in recorded.user_attrs.items():
        trial.set_user_attr(key, value)  # e.g. what a constraints function reads
    for step, value in recorded.intermediate_values.items():
        trial.report(value, step)
    if recorded.state == TrialState.COMPLETE:
        replica.tell(trial, recorded.values)
    else:
        replica.tell(trial, state=recorded.state)
    if checkpoint is None:
        return None  # pruned by retention: the next checkpoint still checks the state
    stored = _codec.encode(sampler_part(checkpoint[1]), allow_pickle=True)
    now = _codec.encode(adapter.state_dict(), allow_pickle=True)
    if stored != now:
        return None, f"checkpoint of {len(stored)} bytes", f"state of {len(now)} bytes"
    return None


def _suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> Any:
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    raise CheckpointError(f"cannot replay a parameter of type {type(distribution).__name__}")


def exact(value: Any) -> str:
    """``value`` as compared bit for bit: a float as ``float.hex``, anything else by repr."""
    return value.hex() if isinstance(value, float) else repr(value)


class Causes:
    """What in the study's records can explain a divergence at a given trial.

    Args:
        configured_otherwise: Whether the sampler given is configured differently from the one
            that wrote the checkpoints (the differences are reported with the configuration).
        checkpoints: The checkpoints replayed against, for the library versions they record.
        logical: The study's finished trials, interrupted attempts left out, by number.
        timing_matters: Whether trials that ran at once can explain it (not so in deterministic
            mode, where no proposal depends on timing).
    """

    def __init__(
        self,
        configured_otherwise: bool,
        checkpoints: Sequence[Checkpoint],
        logical: list[FrozenTrial],
        *,
        timing_matters: bool,
    ) -> None:
        self._configured_otherwise = configured_otherwise
        # Each distinct set of library versions the checkpoints were written under.
        self._versions = {tuple(sorted(c.versions.items())) for c in checkpoints if c.versions}
        self._logical = logical
        self._timing_matters = timing_matters
        self._retries = [t.number for t in logical if FAILED_TRIAL_ATTR in t.system_attrs]

    def divergence(
        self,
        trial: FrozenTrial,
        stream: str | None,
        found: tuple[str | None, str, str],
        matched: int,
    ) -> Divergence:
        """The divergence ``_replay_trial`` found at ``trial``, with its likely causes."""
        param, recorded, replayed = found
        return Divergence(trial.number, param, recorded, replayed, self.of(trial), stream, matched)

    def of(self, trial: FrozenTrial) -> list[str]:
        """The likely causes of a divergence at ``trial``, most likely first."""
        causes = []
        if self._configured_otherwise:
            causes.append(CONFIGURED_OTHERWISE)
        causes.extend(self._version_changes())
        overlap = self._overlap_before(trial) if self._timing_matters else None
        if overlap is not None:
            causes.append(
                f"trials {overlap[0]} and {overlap[1]} ran at the same time (n_jobs > 1, or "
                "several ask() before tell()): the order the sampler saw them in is not recorded"
            )
        resumes = [n for n in self._retries if n <= trial.number]
        if resumes and not causes:
            causes.append(
                f"the study resumed after interruptions at trial(s) {resumes}, and nothing "
                "else explains it: please report it, as this is what optuna-checkpoint guarantees"
            )
        if not causes:
            causes.append(
                "none recorded: the sampler may read something outside the study (the clock, "
                "global random state, files), or the study was edited by hand. If neither, "
                "please report it: this is what optuna-checkpoint guarantees"
            )
        return causes

    def _version_changes(self) -> list[str]:
        current = library_versions()
        # As on resume, a library recorded on one side only (cmaes not imported) is not compared.
        changed = sorted(
            {
                f"{name} {old} (recorded) vs {current[name]} (now)"
                for recorded in self._versions
                for name, old in recorded
                if name in current and current[name] != old and name != "optuna-checkpoint"
            }
        )
        causes = []
        if len(self._versions) > 1:
            causes.append("the checkpoints were written under several library versions")
        if changed:
            causes.append("library versions differ: " + ", ".join(changed))
        return causes

    def _overlap_before(self, trial: FrozenTrial) -> tuple[int, int] | None:
        previous: FrozenTrial | None = None
        for t in self._logical:
            if t.number > trial.number:
                break
            if (
                previous is not None
                and previous.datetime_complete is not None
                and t.datetime_start is not None
                and t.datetime_start < previous.datetime_complete
            ):
                return previous.number, t.number
            previous = t
        return None
