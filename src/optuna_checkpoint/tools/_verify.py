"""Verify a checkpointed study: every checkpoint's seal, that none is missing, and a replay.

Three passes. The *integrity* pass reads every checkpoint of every stream and checks its seal
(and signature, when a key is configured), its format and whether it decodes. The *evidence*
pass looks for checkpoints that should exist and do not: a finished trial a stream claimed,
newer than the stream's newest checkpoint and without one of its own, means a checkpoint was
deleted or lost (``resume._evidence``, which ``status`` uses too). The *replay* pass proves the
trajectory (``tools._replay``): a fresh sampler is run on an in-memory copy of the study, and
every parameter must come out bit for bit as recorded and every checkpointed state equal.

Which trials can be replayed depends on how the study ran:

* one worker: its stream, in the order of the uninterrupted run;
* ``deterministic_workers=K``: every position, whichever worker ran it, since each position's
  proposal depends only on the sampler, the position and its fixed history;
* several free workers: which results each proposal saw depends on timing, and the checkpoints
  do not record it. A worker's stream is replayed in order when no trial of another worker ran
  while one of its trials ran (the workers took turns), so that each of its trials saw exactly
  the trials finished before it; the other streams are checked for integrity only, and the
  report says why.

The replay feeds the recorded objective values back, so it checks the sampler side only; whether
the objective returns the same values is what :func:`optuna_checkpoint.audit_determinism`
checks.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
import copy
import datetime
from typing import TYPE_CHECKING
from typing import Any

from optuna_checkpoint._sampler import CheckpointingSampler
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import SignatureError
from optuna_checkpoint.parallel._schedule import history_lag
from optuna_checkpoint.resume._evidence import claiming_streams
from optuna_checkpoint.resume._evidence import finished_without_checkpoint
from optuna_checkpoint.state import _codec
from optuna_checkpoint.state._fingerprint import differences
from optuna_checkpoint.state._fingerprint import readable_differences
from optuna_checkpoint.state._fingerprint import sampler_fingerprint
from optuna_checkpoint.state._fingerprint import sampler_named
from optuna_checkpoint.state._rows import SealedRows
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.state._seal import place
from optuna_checkpoint.state.adapters import adapter_for
from optuna_checkpoint.study._positions import DETERMINISTIC_ATTR
from optuna_checkpoint.study._positions import PositionBook
from optuna_checkpoint.study._trials import RETRY_HISTORY_ATTR
from optuna_checkpoint.tools._replay import Causes
from optuna_checkpoint.tools._replay import Replayed
from optuna_checkpoint.tools._replay import exact
from optuna_checkpoint.tools._replay import replay_by_position
from optuna_checkpoint.tools._replay import replay_in_order
from optuna_checkpoint.tools._transplant import StudyRef
from optuna_checkpoint.tools._verify_report import CONFIGURED_OTHERWISE
from optuna_checkpoint.tools._verify_report import Divergence
from optuna_checkpoint.tools._verify_report import Problem
from optuna_checkpoint.tools._verify_report import VerificationReport
from optuna_checkpoint.tools._verify_report import numbers


if TYPE_CHECKING:
    from optuna.samplers import BaseSampler
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from optuna_checkpoint.stores._base import Checkpoint
    from optuna_checkpoint.stores._base import CheckpointStore
    from optuna_checkpoint.stores._base import Interruption
    from optuna_checkpoint.stores._base import Stream

    Decoded = tuple[Checkpoint, dict[str, Any]]

FREE_WORKERS = (
    "workers without deterministic_workers do not record which results each of their proposals "
    "saw, so a worker's stream is replayed only if no other worker's trial ran during its "
    "trials; a study run with deterministic_workers is replayed in full"
)
"""The note that explains why a stream of free parallel workers was not replayed."""

# The report's classes are exported here too, where the package and the CLI import them from.
__all__ = ["Divergence", "Problem", "VerificationReport", "verify"]

_NEVER = datetime.datetime.max  # the end of a trial that has not finished


def verify(
    study: Study,
    sampler: BaseSampler | None = None,
    *,
    signing_key: str | bytes | None = None,
    allow_pickle: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> VerificationReport:
    """Check every checkpoint of a study, that none is missing, and replay its sampler.

    Example:

        .. code-block:: python

            report = optuna_checkpoint.verify(
                optuna.load_study(study_name="demo", storage="sqlite:///demo.db"),
                optuna.samplers.TPESampler(seed=42),
            )
            print(report)  # the verdict and its reason, then the details
            assert report.ok

    Args:
        study: The study, as loaded with :func:`optuna.load_study`.
        sampler: A freshly constructed sampler, configured exactly as the one the study's
            :class:`CheckpointingSampler` wraps (a ``CheckpointingSampler`` is unwrapped).
            Without it, the replay does not run.
        signing_key: The key the checkpoints were signed with; defaults to the environment
            variable ``OPTUNA_CHECKPOINT_SIGNING_KEY``.
        allow_pickle: Whether checkpoints holding pickles may be loaded for the replay (this
            runs code from the database; see :class:`CheckpointingSampler`).
        progress: Called as ``progress(done, total)`` while the replay runs.

    Returns:
        The report; ``report.ok`` tells whether everything checked out.
    """
    if isinstance(sampler, CheckpointingSampler):
        sampler = sampler.sampler
    report = VerificationReport(study.study_name)
    trials = study.get_trials(deepcopy=False)
    if not trials:
        report.empty = "the study has no trials"
        return report
    ref = StudyRef.of(study._storage, study.study_name)
    store = ref.existing_store()  # creates nothing: verifying writes nothing
    streams = [] if store is None else store.list_streams(ref.uid)
    report.streams = [s.name for s in streams]
    if store is None or not streams:
        report.empty = "the study has no checkpoints (it was not run with CheckpointingSampler)"
        return report
    report.notes.extend(_objective_differences(trials))
    stored = {s.stream_id: store.all_checkpoints(s.stream_id) for s in streams}
    numbers_of = {t._trial_id: t.number for t in trials}
    sealer = Sealer.from_option(signing_key)
    readable = {
        s.stream_id: _check_stream(
            report, stored[s.stream_id], s, ref.uid, numbers_of, sealer, allow_pickle
        )
        for s in streams
    }
    interruptions = _checked_interruptions(report, SealedRows(store, ref.uid, sealer), streams)
    hidden = {i.trial_id for i in interruptions}
    claims = _check_for_lost(report, store, ref.uid, streams, stored, trials, hidden)
    # An interrupted attempt belongs to the stream that retries it.
    claims.update((i.trial_id, i.stream_id) for i in interruptions if i.stream_id is not None)
    if sampler is None:
        report.replay_not_run = "no sampler given (pass the one the study ran with: --sampler)"
    elif report.problems:
        report.replay_not_run = "the checkpoints cannot be trusted (see above)"
    else:
        plan = _ReplayPlan(study, trials, streams, readable, hidden, claims, sampler)
        if plan.check_configuration(report):
            plan.run(report, progress)
    return report


def _check_stream(
    report: VerificationReport,
    checkpoints: Sequence[Checkpoint],
    stream: Stream,
    uid: str,
    numbers_of: Mapping[int, int],
    sealer: Sealer,
    allow_pickle: bool,
) -> list[Decoded]:
    """Check each checkpoint of a stream (oldest first); return those that decoded."""
    readable = []
    for checkpoint in checkpoints:
        number = None if checkpoint.trial_id is None else numbers_of.get(checkpoint.trial_id)

        def problem(kind: str, message: str, number: int | None = number) -> None:
            report.problems.append(Problem(stream.name, number, kind, message))

        where = place(uid, stream.name, checkpoint.trial_id, checkpoint.logical_number)
        try:
            sealer.check(checkpoint, where)
        except CheckpointError as e:
            problem("signature" if isinstance(e, SignatureError) else "corrupt", str(e))
            continue
        try:
            info = _codec.inspect_payload(checkpoint.payload)
            if info.pickled and not allow_pickle:
                problem("pickled", "holds pickles: pass allow_pickle (--allow-pickle) to load it")
                continue
            state = _codec.decode(checkpoint.payload, allow_pickle=allow_pickle)
        except CheckpointError as e:
            problem("unreadable", str(e))
            continue
        report.checkpoints_checked += 1
        readable.append((checkpoint, state))
    return readable


def _checked_interruptions(
    report: VerificationReport, rows: SealedRows, streams: Sequence[Stream]
) -> list[Interruption]:
    """The interruption rows whose seals hold; each that fails is reported, and not obeyed."""
    names = {s.stream_id: s.name for s in streams}
    genuine = []
    for interruption in rows.store.where_interrupted(rows.study_uid):
        try:
            rows.check_interruption(interruption)
        except CheckpointError as e:
            stream = "-" if interruption.stream_id is None else names.get(interruption.stream_id)
            kind = "signature" if isinstance(e, SignatureError) else "corrupt"
            report.problems.append(Problem(stream or "-", interruption.trial_number, kind, str(e)))
            continue
        genuine.append(interruption)
    return genuine


def _check_for_lost(
    report: VerificationReport,
    store: CheckpointStore,
    uid: str,
    streams: Sequence[Stream],
    stored: Mapping[int, Sequence[Checkpoint]],
    trials: Sequence[FrozenTrial],
    hidden: set[int],
) -> dict[int, int]:
    """Report the finished trials whose checkpoints are missing; return the claims read."""
    start = min(s.first_trial_number for s in streams)
    finished = [
        t
        for t in trials
        if t.state.is_finished() and t.number >= start and t._trial_id not in hidden
    ]
    claims = claiming_streams(store, uid, finished)
    number_of = {t._trial_id: t.number for t in trials}
    for stream in streams:
        checkpoints = stored[stream.stream_id]
        if not any(c.trial_id is None for c in checkpoints):
            # Every stream is created with one, and nothing deletes it.
            report.problems.append(
                Problem(
                    stream.name,
                    None,
                    "missing",
                    "the stream's initial checkpoint is missing: deleted or lost",
                )
            )
        newest_id = checkpoints[-1].trial_id if checkpoints else None
        newest = -1 if newest_id is None else number_of.get(newest_id, -1)
        own = [t for t in finished if claims.get(t._trial_id) == stream.stream_id]
        lost = [t.number for t in finished_without_checkpoint(store, stream, own, newest, hidden)]
        if lost:
            shown = "its initial one" if newest < 0 else f"trial {newest}'s"
            one = len(lost) == 1
            report.problems.append(
                Problem(
                    stream.name,
                    lost[0],
                    "missing",
                    f"{numbers(lost)} finished after the stream's newest checkpoint ({shown}) "
                    f"without one of {'its' if one else 'their'} own: the checkpoint"
                    f"{'' if one else 's'} deleted or lost, or the trial{'' if one else 's'} "
                    "told by a process not attached to the stream",
                    trials=tuple(lost),
                )
            )
    return claims


class _ReplayPlan:
    """Which streams can be replayed and how, and the replays themselves."""

    def __init__(
        self,
        study: Study,
        trials: Sequence[FrozenTrial],
        streams: Sequence[Stream],
        readable: Mapping[int, list[Decoded]],
        hidden: set[int],
        claims: Mapping[int, int],
        sampler: BaseSampler,
    ) -> None:
        self._study = study
        self._trials = trials
        self._streams = streams
        self._readable = readable
        self._hidden = hidden
        self._claims = claims
        # Copies taken before anything runs the sampler: each replay needs a fresh one.
        self._pristine = sampler
        self._fingerprint = sampler_fingerprint(sampler, adapter_for(sampler, allow_pickle=True))
        self._logical = [t for t in trials if t._trial_id not in hidden and t.state.is_finished()]
        self._checkpoints = {
            c.trial_id: (c, state)
            for decoded in readable.values()
            for c, state in decoded
            if c.trial_id is not None
        }
        self._configured_otherwise = False
        mode = study._storage.get_study_system_attrs(study._study_id).get(DETERMINISTIC_ATTR)
        # K of a study run with deterministic_workers=K, else None.
        self._workers: int | None = None if mode is None else int(mode["workers"])

    def check_configuration(self, report: VerificationReport) -> bool:
        """Report each stream configured otherwise; return whether the replay may run."""
        given = self._fingerprint
        other_class = False
        for stream in self._streams:
            recorded = stream.fingerprint
            if not differences(recorded, given):
                continue
            self._configured_otherwise = True
            if _class_of(recorded) != _class_of(given):
                other_class = True
                message = (
                    f"the sampler given is a {type(self._pristine).__name__}, the study's "
                    f"checkpoints were written by {sampler_named(recorded)}"
                )
                report.problems.append(Problem(stream.name, None, "configuration", message))
                continue
            # A resume with this sampler would be refused; the replay still shows where it
            # matters (a seed does not: the replay starts from the recorded random state).
            report.problems.append(
                Problem(
                    stream.name,
                    None,
                    "configuration",
                    CONFIGURED_OTHERWISE,
                    differences=tuple(readable_differences(recorded, given)),
                )
            )
        if other_class:
            report.replay_not_run = "a sampler of another class cannot replay the trials"
        return not other_class

    def run(self, report: VerificationReport, progress: Callable[[int, int], None] | None) -> None:
        """Replay every stream that can be, by position or in order."""
        if self._workers is not None:
            self._by_position(report, progress, self._workers)
        else:
            self._in_order(report, progress)

    def _by_position(
        self,
        report: VerificationReport,
        progress: Callable[[int, int], None] | None,
        workers: int,
    ) -> None:
        lag = history_lag(workers)
        names = {s.stream_id: s.name for s in self._streams}
        stream_of = {t: names[s] for t, s in self._claims.items() if s in names}
        checkpoints = [c for decoded in self._readable.values() for c, _ in decoded]
        causes = Causes(
            self._configured_otherwise, checkpoints, self._logical, timing_matters=False
        )
        tick = _ticker(progress, len(PositionBook.read(self._trials, self._hidden).settled))
        replayed = replay_by_position(
            self._study,
            self._trials,
            self._hidden,
            lag,
            self._pristine,
            self._checkpoints,
            stream_of,
            causes,
            tick,
        )
        if replayed.not_run is not None:
            report.replay_not_run = replayed.not_run
            return
        report.by_position = True
        ran = {stream_of.get(t._trial_id) for t in self._logical}
        report.replayed_streams = [s.name for s in self._streams if s.name in ran]
        self._record(report, replayed)

    def _in_order(
        self, report: VerificationReport, progress: Callable[[int, int], None] | None
    ) -> None:
        runs = []
        for stream in self._streams:
            ours = self._trials_of(stream)
            why = self._why_not_in_order(stream, ours)
            if why is not None:
                report.not_replayed[stream.name] = why
            elif ours:
                runs.append((stream, ours))
        if report.not_replayed:
            report.notes.append(FREE_WORKERS)
        planned = []
        for i, (stream, ours) in enumerate(runs):
            try:
                # The first replay runs the sampler given; the copies are taken before it does.
                planned.append((stream, ours, copy.deepcopy(self._pristine) if i else None))
            except Exception as e:  # a sampler holding something that cannot be copied
                report.not_replayed[stream.name] = (
                    f"the sampler given cannot be copied for another replay ({e})"
                )
        tick = _ticker(progress, sum(len(ours) for _, ours, _ in planned))
        for stream, ours, copied in planned:
            sampler = self._pristine if copied is None else copied
            initial = next(
                (s for c, s in self._readable[stream.stream_id] if c.trial_id is None), None
            )
            causes = Causes(
                self._configured_otherwise,
                [c for c, _ in self._readable[stream.stream_id]],
                ours,
                timing_matters=True,
            )
            assert initial is not None  # else a problem was reported, and no replay runs
            replayed = replay_in_order(
                self._study,
                stream.name,
                initial,
                self._logical,
                {t._trial_id for t in ours},
                sampler,
                self._checkpoints,
                causes,
                tick,
            )
            report.replayed_streams.append(stream.name)
            self._record(report, replayed)
            if replayed.divergence is not None:
                return

    def _trials_of(self, stream: Stream) -> list[FrozenTrial]:
        """The logical trials the stream ran (with one stream: all from its first on)."""
        if len(self._streams) == 1:
            return [t for t in self._logical if t.number >= stream.first_trial_number]
        return [t for t in self._logical if self._claims.get(t._trial_id) == stream.stream_id]

    def _why_not_in_order(self, stream: Stream, ours: list[FrozenTrial]) -> str | None:
        if len(self._streams) == 1:
            return None
        # Its own interrupted attempts overlap its retries (a resume closes them only after
        # its first trial started), but it never saw them: they are hidden from its sampler.
        others = [t for t in self._trials if self._claims.get(t._trial_id) != stream.stream_id]
        clash = _ran_during(ours, others)
        if clash is None:
            return None
        mine, theirs = clash
        owner = next(
            (s.name for s in self._streams if s.stream_id == self._claims.get(theirs._trial_id)),
            None,
        )
        of = "unclaimed" if owner is None else f"of stream {owner!r}"
        return f"its trial {mine.number} ran at the same time as trial {theirs.number} ({of})"

    def _record(self, report: VerificationReport, replayed: Replayed) -> None:
        report.trials_replayed += replayed.trials
        report.divergence = replayed.divergence


def _class_of(fingerprint: Any) -> Any:
    sampler = fingerprint.get("sampler") if isinstance(fingerprint, dict) else None
    return sampler.get("class") if isinstance(sampler, dict) else fingerprint


def _ran_during(
    ours: Sequence[FrozenTrial], others: Sequence[FrozenTrial]
) -> tuple[FrozenTrial, FrozenTrial] | None:
    """A trial of ``others`` that ran while one of ``ours`` ran, as ``(ours, theirs)``.

    A trial of ``others`` that has not finished counts as running until now. Sorted by start,
    the others that started before one of ours ended are a prefix; the one among them that
    ended last decides.
    """
    spans = sorted(
        (t.datetime_start, t.datetime_complete or _NEVER, i)
        for i, t in enumerate(others)
        if t.datetime_start is not None
    )
    starts = [start for start, _, _ in spans]
    latest: list[tuple[datetime.datetime, int]] = []  # the latest end among the first k
    for _, end, i in spans:
        latest.append(max(latest[-1], (end, i)) if latest else (end, i))
    for trial in ours:
        if trial.datetime_start is None or trial.datetime_complete is None:
            continue
        k = bisect_left(starts, trial.datetime_complete)
        if k and latest[k - 1][0] > trial.datetime_start:
            return trial, others[latest[k - 1][1]]
    return None


def _ticker(progress: Callable[[int, int], None] | None, total: int) -> Callable[[], None]:
    done = 0
    if progress is not None:
        progress(0, total)

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    return tick


def _objective_differences(trials: list[FrozenTrial]) -> list[str]:
    """Where a retry reported another value than its interrupted attempt at the same step.

    Attempt and retry evaluate the same parameters, so such a difference shows an objective
    that is not deterministic: the one cause of an inexact resume no sampler state can fix.
    """
    by_number = {t.number: t for t in trials}
    found = []
    for retry in trials:
        for number in retry.system_attrs.get(RETRY_HISTORY_ATTR) or ():
            attempt = by_number.get(number)
            if attempt is None:
                continue
            for step, value in sorted(attempt.intermediate_values.items()):
                again = retry.intermediate_values.get(step)
                if again is not None and exact(again) != exact(value):
                    found.append(
                        f"the objective is not deterministic: trial {retry.number} repeated "
                        f"interrupted trial {number} with the same parameters but reported "
                        f"{again!r} at step {step} where it had reported {value!r}; resumes "
                        "cannot be exact until it is (see audit_determinism)"
                    )
                    break
    return found
