"""Verify a checkpointed study: every checkpoint's seal, and a replay of the sampler.

Two passes. The *integrity* pass reads every checkpoint of every stream and checks its seal
(and signature, when a key is configured), its format and whether it decodes. The *replay* pass
proves the trajectory: starting from the stream's initial checkpoint, a fresh sampler is run on
an in-memory copy of the study, trial by trial in the order of the uninterrupted run, asked for
each recorded parameter and told each recorded result. Every parameter must come out bit for bit
as recorded, and the sampler's state after each trial must equal that trial's checkpoint. The
first difference is reported with the likely causes.

The replay feeds the recorded objective values back, so it checks the sampler side only; whether
the objective returns the same values is what :func:`optuna_checkpoint.audit_determinism`
checks.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState

from optuna_checkpoint._sampler import CheckpointingSampler
from optuna_checkpoint.exceptions import CheckpointError
from optuna_checkpoint.exceptions import SignatureError
from optuna_checkpoint.state import _codec
from optuna_checkpoint.state._composite import sampler_part
from optuna_checkpoint.state._fingerprint import differences
from optuna_checkpoint.state._fingerprint import sampler_fingerprint
from optuna_checkpoint.state._seal import Sealer
from optuna_checkpoint.state._seal import place
from optuna_checkpoint.state._versions import library_versions
from optuna_checkpoint.state.adapters import adapter_for
from optuna_checkpoint.study._trials import FAILED_TRIAL_ATTR
from optuna_checkpoint.study._trials import RETRY_HISTORY_ATTR
from optuna_checkpoint.tools._transplant import StudyRef


if TYPE_CHECKING:
    from optuna.samplers import BaseSampler
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from optuna_checkpoint.state.adapters import StateAdapter
    from optuna_checkpoint.stores._base import Checkpoint
    from optuna_checkpoint.stores._base import Stream

_FIXED_PARAMS_ATTR = "fixed_params"  # where Optuna keeps an enqueued trial's parameters


@dataclass(frozen=True)
class Problem:
    """A checkpoint that cannot be trusted or read.

    Attributes:
        stream: The stream's name.
        trial_number: The checkpoint's trial, or ``None`` for the stream's initial checkpoint.
        kind: ``"corrupt"``, ``"signature"``, ``"unreadable"``, ``"pickled"``, or
            ``"configuration"`` (the sampler given is not configured as the stream's was).
        message: What is wrong and what to do.
    """

    stream: str
    trial_number: int | None
    kind: str
    message: str


@dataclass(frozen=True)
class Divergence:
    """The first point where the replayed sampler differs from the recorded study.

    Attributes:
        trial_number: The trial's number in the study.
        param: The first parameter that differs, or ``None`` when the parameters all match but
            the sampler's state after the trial differs from its checkpoint.
        recorded: The recorded value (floats as ``float.hex``).
        replayed: The replayed value.
        likely_causes: The causes the study's records point to, most likely first.
    """

    trial_number: int
    param: str | None
    recorded: str
    replayed: str
    likely_causes: list[str]


@dataclass
class VerificationReport:
    """What :func:`verify` found.

    Attributes:
        study_name: The study verified.
        streams: The names of the study's checkpoint streams.
        checkpoints_checked: How many checkpoints passed the integrity pass.
        problems: Checkpoints that failed it.
        replayed_stream: The stream whose trajectory was replayed, if any.
        trials_replayed: How many trials the replay reproduced bit for bit.
        divergence: The first difference the replay found, if any.
        notes: Why parts were not checked, and other remarks.
    """

    study_name: str
    streams: list[str] = field(default_factory=list)
    checkpoints_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    replayed_stream: str | None = None
    trials_replayed: int = 0
    divergence: Divergence | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every checkpoint is sound and the replay, if run, matched throughout."""
        return not self.problems and self.divergence is None

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-compatible data."""
        return {
            "study_name": self.study_name,
            "ok": self.ok,
            "streams": self.streams,
            "checkpoints_checked": self.checkpoints_checked,
            "problems": [vars(p) for p in self.problems],
            "replayed_stream": self.replayed_stream,
            "trials_replayed": self.trials_replayed,
            "divergence": None if self.divergence is None else vars(self.divergence),
            "notes": self.notes,
        }

    def __str__(self) -> str:
        lines = [
            f"Study {self.study_name!r}: {'verified' if self.ok else 'NOT verified'}.",
            f"  {self.checkpoints_checked} checkpoints in {len(self.streams)} stream(s) passed "
            "the integrity check.",
        ]
        for problem in self.problems:
            at = "initial" if problem.trial_number is None else f"trial {problem.trial_number}"
            lines.append(f"  {problem.kind}: stream {problem.stream!r}, {at}: {problem.message}")
        if self.replayed_stream is not None:
            lines.append(
                f"  Replay of stream {self.replayed_stream!r}: {self.trials_replayed} trials "
                "reproduced bit for bit."
            )
        if self.divergence is not None:
            d = self.divergence
            what = f"parameter {d.param!r}" if d.param is not None else "the sampler state"
            lines.append(
                f"  First divergence at trial {d.trial_number}, {what}: recorded {d.recorded}, "
                f"replayed {d.replayed}."
            )
            lines.append("  Likely causes:")
            lines.extend(f"    - {cause}" for cause in d.likely_causes)
        lines.extend(f"  Note: {note}" for note in self.notes)
        return "\n".join(lines)


def verify(
    study: Study,
    sampler: BaseSampler | None = None,
    *,
    signing_key: str | bytes | None = None,
    allow_pickle: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> VerificationReport:
    """Check every checkpoint of a study and replay its sampler against the recorded history.

    Example:

        .. code-block:: python

            report = optuna_checkpoint.verify(
                optuna.load_study(study_name="demo", storage="sqlite:///demo.db"),
                optuna.samplers.TPESampler(seed=42),
            )
            print(report)
            assert report.ok

    Args:
        study: The study, as loaded with :func:`optuna.load_study`.
        sampler: A freshly constructed sampler, configured exactly as the one the study's
            :class:`CheckpointingSampler` wraps (a ``CheckpointingSampler`` is unwrapped).
            Without it, only the integrity pass runs.
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
        report.notes.append("the study has no trials")
        return report
    ref = StudyRef.of(study._storage, study.study_name)
    uid = ref.uid
    store = ref.existing_store()  # creates nothing: verifying writes nothing
    streams = [] if store is None else store.list_streams(uid)
    report.streams = [s.name for s in streams]
    if store is None or not streams:
        report.notes.append(
            "the study has no checkpoints: it was not run with CheckpointingSampler"
        )
        return report
    numbers = {t._trial_id: t.number for t in trials}
    report.notes.extend(_objective_differences(trials))
    sealer = Sealer.from_option(signing_key)
    readable: dict[str, list[tuple[Checkpoint, dict[str, Any]]]] = {}
    for stream in streams:
        readable[stream.name] = _check_stream(
            report,
            store.all_checkpoints(stream.stream_id),
            stream,
            uid,
            numbers,
            sealer,
            allow_pickle,
        )
    if sampler is None:
        report.notes.append("replay not run: pass the sampler (--sampler) to prove the trajectory")
        return report
    if len(streams) > 1:
        report.notes.append(
            f"replay not run: {len(streams)} streams (workers) wrote this study, and how their "
            "trials interleaved in time is not recorded, so it cannot be replayed"
        )
        return report
    if report.problems:
        report.notes.append("replay not run: the checkpoints above cannot be trusted")
        return report
    hidden = {i.trial_id for i in store.where_interrupted(uid)}
    logical = [t for t in trials if t._trial_id not in hidden and t.state.is_finished()]
    _replay(report, study, streams[0], readable[streams[0].name], logical, sampler, progress)
    return report


def _check_stream(
    report: VerificationReport,
    checkpoints: Sequence[Checkpoint],
    stream: Stream,
    uid: str,
    numbers: Mapping[int, int],
    sealer: Sealer,
    allow_pickle: bool,
) -> list[tuple[Checkpoint, dict[str, Any]]]:
    """Check each checkpoint of a stream (oldest first); return those that decoded."""
    readable = []
    for checkpoint in checkpoints:
        number = None if checkpoint.trial_id is None else numbers.get(checkpoint.trial_id)

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


def _replay(
    report: VerificationReport,
    study: Study,
    stream: Stream,
    checkpoints: list[tuple[Checkpoint, dict[str, Any]]],
    logical: list[FrozenTrial],
    sampler: BaseSampler,
    progress: Callable[[int, int], None] | None,
) -> None:
    report.replayed_stream = stream.name
    initial = next((state for c, state in checkpoints if c.trial_id is None), None)
    if initial is None:
        report.notes.append(f"replay not run: stream {stream.name!r} has no initial checkpoint")
        report.replayed_stream = None
        return
    adapter = adapter_for(sampler, allow_pickle=True)
    configuration = differences(stream.fingerprint, sampler_fingerprint(sampler, adapter))
    if configuration:
        # A resume with this sampler would be refused; the replay still shows where it matters.
        message = "the sampler given is configured differently: " + "; ".join(configuration)
        report.problems.append(Problem(stream.name, None, "configuration", message))
    replica = optuna.create_study(
        storage=InMemoryStorage(), sampler=sampler, directions=study.directions
    )
    adapter.bind_study(replica._storage, replica._study_id, sole_stream=True)
    adapter.load_state_dict(_sampler_part(initial))
    states = {c.trial_id: (c, state) for c, state in checkpoints if c.trial_id is not None}
    ours = [t for t in logical if t.number >= stream.first_trial_number]
    for before in logical[: len(logical) - len(ours)]:
        replica.add_trial(before)  # history the stream started after
    causes = _Causes(configuration, checkpoints, logical)
    for done, recorded in enumerate(ours):
        if progress is not None:
            progress(done, len(ours))
        divergence = _replay_trial(replica, recorded, adapter, states.get(recorded._trial_id))
        if divergence is not None:
            param, was, now = divergence
            report.divergence = Divergence(recorded.number, param, was, now, causes.of(recorded))
            return
        report.trials_replayed += 1
    if progress is not None:
        progress(len(ours), len(ours))


def _replay_trial(
    replica: Study,
    recorded: FrozenTrial,
    adapter: StateAdapter,
    checkpoint: tuple[Checkpoint, dict[str, Any]] | None,
) -> tuple[str | None, str, str] | None:
    """Replay one trial; return ``(param, recorded, replayed)`` at the first difference."""
    fixed = recorded.system_attrs.get(_FIXED_PARAMS_ATTR)
    if fixed:
        replica.enqueue_trial(fixed, skip_if_exists=False)
    trial = replica.ask()
    for name, distribution in recorded.distributions.items():
        replayed = _suggest(trial, name, distribution)
        if _exact(replayed) != _exact(recorded.params[name]):
            replica.tell(trial, state=TrialState.FAIL)
            return name, _exact(recorded.params[name]), _exact(replayed)
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
    stored = _codec.encode(_sampler_part(checkpoint[1]), allow_pickle=True)
    now = _codec.encode(adapter.state_dict(), allow_pickle=True)
    if stored != now:
        return None, f"checkpoint of {len(stored)} bytes", f"state of {len(now)} bytes"
    return None


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
                if again is not None and _exact(again) != _exact(value):
                    found.append(
                        f"the objective is not deterministic: trial {retry.number} repeated "
                        f"interrupted trial {number} with the same parameters but reported "
                        f"{again!r} at step {step} where it had reported {value!r}; resumes "
                        "cannot be exact until it is (see audit_determinism)"
                    )
                    break
    return found


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


def _exact(value: Any) -> str:
    return value.hex() if isinstance(value, float) else repr(value)


def _sampler_part(state: dict[str, Any]) -> dict[str, Any]:
    return sampler_part(state)


class _Causes:
    """What in the study's records can explain a divergence at a given trial."""

    def __init__(
        self,
        configuration: list[str],
        checkpoints: list[tuple[Checkpoint, dict[str, Any]]],
        logical: list[FrozenTrial],
    ) -> None:
        self._configuration = configuration
        # Each distinct set of library versions the stream's checkpoints were written under.
        self._versions = {tuple(sorted(c.versions.items())) for c, _ in checkpoints if c.versions}
        self._logical = logical
        self._retries = [t.number for t in logical if FAILED_TRIAL_ATTR in t.system_attrs]

    def of(self, trial: FrozenTrial) -> list[str]:
        causes = []
        if self._configuration:
            causes.append(
                "the sampler is configured differently from the one that wrote the stream: "
                + "; ".join(self._configuration)
            )
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
        if len(self._versions) > 1:
            causes.append("the stream was written under several library versions")
        if changed:
            causes.append("library versions differ: " + ", ".join(changed))
        overlap = self._overlap_before(trial)
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
