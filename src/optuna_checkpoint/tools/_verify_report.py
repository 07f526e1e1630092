"""What :func:`~optuna_checkpoint.verify` found: one verdict with its reason, then the details.

The verdict comes first and says why in one line; the details follow, each stated once, and none
of them reads as a success the verdict contradicts (a replay that matched with a sampler
configured otherwise is not shown as a match). The reason is chosen in this order: checkpoints
that fail the integrity check, checkpoints missing, a sampler of another class, a sampler
configured otherwise, the replay's first divergence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any


INTEGRITY_KINDS = ("corrupt", "signature", "unreadable", "pickled")
"""The kinds of :class:`Problem` that the integrity pass finds in a checkpoint."""

CONFIGURED_OTHERWISE = (
    "the sampler given is configured differently from the one that wrote the checkpoints"
)
"""What a :class:`Problem` of kind ``configuration`` says, and the likely cause it names."""

_FAILS = {
    "corrupt": "fails its integrity check",
    "signature": "fails its signature check",
    "unreadable": "cannot be decoded",
    "pickled": "holds pickles, loaded only with allow_pickle",
}


@dataclass(frozen=True)
class Problem:
    """A checkpoint that cannot be trusted, is missing, or was written by another sampler.

    Attributes:
        stream: The stream's name.
        trial_number: The checkpoint's trial (for ``missing``, the first of ``trials``), or
            ``None`` for the stream's initial checkpoint and for ``configuration``.
        kind: ``"corrupt"``, ``"signature"``, ``"unreadable"``, ``"pickled"``; ``"missing"``
            (finished trials of the stream newer than its newest checkpoint have none of their
            own: deleted, lost, or told by a process not attached to the stream); or
            ``"configuration"`` (the sampler given is not configured as the stream's was).
        message: What is wrong and what to do.
        trials: For ``missing``: every trial concerned.
        differences: For ``configuration`` with a sampler of the same class: each difference,
            as ``"seed: recorded 42, given 43"``.
    """

    stream: str
    trial_number: int | None
    kind: str
    message: str
    trials: tuple[int, ...] = ()
    differences: tuple[str, ...] = ()


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
        stream: The stream whose worker ran the trial.
        matched: How many trials the replay reproduced before this one.
    """

    trial_number: int
    param: str | None
    recorded: str
    replayed: str
    likely_causes: list[str]
    stream: str | None = None
    matched: int = 0


@dataclass
class VerificationReport:
    """What :func:`verify` found.

    Attributes:
        study_name: The study verified.
        streams: The names of the study's checkpoint streams.
        checkpoints_checked: How many checkpoints passed the integrity pass.
        problems: Checkpoints that failed it or are missing, and configuration differences.
        replayed_streams: The streams whose trials the replay reproduced.
        trials_replayed: How many trials the replay reproduced bit for bit.
        divergence: The first difference the replay found, if any.
        not_replayed: Streams checked for integrity but not replayed, each with why.
        replay_not_run: Why the replay did not run at all, if it did not.
        by_position: Whether the study ran with ``deterministic_workers`` and was replayed
            position by position (else each stream in the order of its trials).
        empty: Why there was nothing to check (no trials, no checkpoints), if so.
        notes: Other remarks (an objective that is not deterministic).
    """

    study_name: str
    streams: list[str] = field(default_factory=list)
    checkpoints_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    replayed_streams: list[str] = field(default_factory=list)
    trials_replayed: int = 0
    divergence: Divergence | None = None
    not_replayed: dict[str, str] = field(default_factory=dict)
    replay_not_run: str | None = None
    by_position: bool = False
    empty: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every checkpoint is sound and present, and the replay, if run, matched."""
        return not self.problems and self.divergence is None

    @property
    def verdict(self) -> str:
        """``"verified"``, ``"NOT verified"``, or ``"nothing to verify"``."""
        if not self.ok:
            return "NOT verified"
        return "nothing to verify" if self.empty is not None else "verified"

    @property
    def reason(self) -> str:
        """The verdict's reason, in one line."""
        if self.empty is not None:
            return self.empty
        if self.ok:
            return self._what_passed()
        integrity = self._problems(*INTEGRITY_KINDS)
        if len(integrity) == 1:
            (p,) = integrity
            return f"the {_place(p)} of stream {p.stream!r} {_FAILS[p.kind]}"
        if integrity:
            return f"{len(integrity)} checkpoints fail the integrity check"
        missing = self._problems("missing")
        trials = sorted(n for p in missing for n in p.trials)
        if trials:
            streams = list(dict.fromkeys(p.stream for p in missing if p.trials))
            names = ", ".join(repr(s) for s in streams)
            return (
                f"the checkpoints of {numbers(trials)} are missing (stream{_s(streams)} {names})"
            )
        if missing:
            return f"the initial checkpoint of stream {missing[0].stream!r} is missing"
        configuration = self._problems("configuration")
        if configuration:
            first = configuration[0]
            if not first.differences:
                return first.message  # another class: the message says which
            if len(first.differences) == 1:
                return f"{first.message} ({first.differences[0]})"
            return f"{first.message} ({len(first.differences)} differences)"
        d = self.divergence
        assert d is not None
        return f"the replay diverged at trial {d.trial_number} ({_what(d)})"

    def _what_passed(self) -> str:
        passed = f"{self.checkpoints_checked} checkpoints intact"
        if self.replay_not_run is not None:
            return f"{passed}; trials not replayed: {self.replay_not_run}"
        if not self.replayed_streams:
            return f"{passed}; no stream could be replayed (below)"
        passed += f", {self.trials_replayed} trials replayed bit for bit"
        if self.by_position:
            passed += " position by position"
        if len(self.streams) > 1:
            passed += f" ({_streams(self.replayed_streams)})"
        if self.not_replayed:
            passed += f"; {_streams(self.not_replayed)} not replayed (below)"
        return passed

    def _problems(self, *kinds: str) -> list[Problem]:
        return [p for p in self.problems if p.kind in kinds]

    def details(self) -> list[str]:
        """The details after the verdict, one statement each, in plain text."""
        lines: list[str] = []
        if self.empty is not None:
            return lines
        if not self.ok:
            lines.extend(self._integrity())
        lines.extend(
            f"Missing checkpoints in stream {p.stream!r}: {p.message}"
            for p in self._problems("missing")
        )
        lines.extend(self._configuration())
        lines.extend(self._replay())
        lines.extend(f"Note: {note}" for note in self.notes)
        return lines

    def _integrity(self) -> list[str]:
        integrity = self._problems(*INTEGRITY_KINDS)
        total = self.checkpoints_checked + len(integrity)
        streams = f"{len(self.streams)} stream{_s(self.streams)}"
        if not integrity:
            return [f"Integrity: {total} checkpoints in {streams} intact."]
        lines = [f"Integrity: {len(integrity)} of {total} checkpoints in {streams} fail:"]
        lines.extend(
            f"  {_place(p)} of stream {p.stream!r}: {p.kind}: {p.message}" for p in integrity
        )
        return lines

    def _configuration(self) -> list[str]:
        """Each distinct difference once, with the streams it concerns.

        The first group's message is the verdict's reason already; a single difference too.
        """
        groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        for p in self._problems("configuration"):
            groups.setdefault((p.message, p.differences), []).append(p.stream)
        lines = []
        for i, ((message, differences), streams) in enumerate(groups.items()):
            of = f" ({_streams(streams)})" if len(self.streams) > 1 else ""
            if i == 0 and len(differences) > 1:
                lines.append(f"Differences{of}:")
            elif i > 0:
                lines.append(f"{message}{of}" + (":" if differences else "."))
            else:
                continue
            lines.extend(f"  {d}" for d in differences)
        return lines

    def _replay(self) -> list[str]:
        d = self.divergence
        if d is not None:
            configured = bool(self._problems("configuration"))
            of = "" if d.stream is None or len(self.streams) == 1 else f" of stream {d.stream!r}"
            lines = [
                f"Replay{' with the sampler given' if configured else ''} diverged at trial "
                f"{d.trial_number}{of}, {_what(d)}{_before(d.matched)}:",
                f"  recorded {d.recorded}",
                f"  replayed {d.replayed}",
            ]
            # The configuration, when it differs, is the verdict already.
            causes = [c for c in d.likely_causes if not (configured and c == CONFIGURED_OTHERWISE)]
            if causes:
                lines.append("Likely causes:")
                lines.extend(f"  - {cause}" for cause in causes)
            return lines
        if self.replay_not_run is not None:
            return [] if self.ok else [f"Replay not run: {self.replay_not_run}."]
        if not self.not_replayed:
            return []
        lines = ["Checked for integrity but not replayed:"]
        lines.extend(f"  stream {name!r}: {why}" for name, why in self.not_replayed.items())
        return lines

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-compatible data."""
        return {
            "study_name": self.study_name,
            "ok": self.ok,
            "verdict": self.verdict,
            "reason": self.reason,
            "streams": self.streams,
            "checkpoints_checked": self.checkpoints_checked,
            "problems": [
                {**vars(p), "trials": list(p.trials), "differences": list(p.differences)}
                for p in self.problems
            ],
            "replayed_streams": self.replayed_streams,
            "trials_replayed": self.trials_replayed,
            "divergence": None if self.divergence is None else vars(self.divergence),
            "not_replayed": self.not_replayed,
            "replay_not_run": self.replay_not_run,
            "by_position": self.by_position,
            "notes": self.notes,
        }

    def __str__(self) -> str:
        return "\n".join([f"{self.verdict}: {self.reason}", *(f"  {d}" for d in self.details())])


def _place(problem: Problem) -> str:
    n = problem.trial_number
    return "initial checkpoint" if n is None else f"checkpoint of trial {n}"


def _what(divergence: Divergence) -> str:
    if divergence.param is None:
        return "the sampler's state after it differs from its checkpoint"
    return f"parameter {divergence.param!r}"


def numbers(trials: Sequence[int]) -> str:
    """``"trial 3"``, ``"trials 3, 4"``, or the first eight and how many in all."""
    shown = ", ".join(str(n) for n in trials[:8])
    if len(trials) > 8:
        shown += f", ... ({len(trials)} in all)"
    return f"trial{_s(trials)} {shown}"


def _before(matched: int) -> str:
    if matched == 0:
        return ""
    return (
        " (the trial before it matched)"
        if matched == 1
        else f" (the {matched} trials before it matched)"
    )


def _streams(names: Sequence[str] | dict[str, str]) -> str:
    return f"stream{_s(names)} " + ", ".join(repr(n) for n in names)


def _s(items: Sequence[Any] | dict[Any, Any] | range) -> str:
    return "" if len(items) == 1 else "s"
