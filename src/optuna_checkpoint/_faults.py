"""Named crash points for deterministic fault injection in tests.

Set ``OPTUNA_CHECKPOINT_CRASH_AT=<point>:<n>[:<signal>]`` and the process sends itself
``<signal>`` (``KILL`` by default, also ``TERM`` or ``INT``) the ``n``-th time (1-based) it passes
``<point>``. Without the variable a crash point costs one attribute lookup.
"""

from __future__ import annotations

import os
import signal


POINTS = (
    "before_trial",
    "after_resume",
    "sample_relative",
    "sample_independent",
    "after_trial_start",
    "after_capture",
    "inside_commit",
    "after_save",  # stores without a commit hook: checkpoint saved, trial end not yet stored
    "inside_trial_state_save",  # SQL: the previous trial state deleted, the new one not inserted
    "after_artifact_upload",  # a trial state's body uploaded, its reference not yet committed
    "inside_import",  # a stream or a row of an import written, the next one not yet
    "inside_reseal",  # SQL: some of a re-keying's new seals written, not all (nor committed)
    # Passed by the kill-fuzz tests' own objective and callback, not by the library.
    "objective",
    "between_trials",
)

_ENV = "OPTUNA_CHECKPOINT_CRASH_AT"


class _CrashPlan:
    def __init__(self, spec: str | None) -> None:
        self.point: str | None = None
        self.remaining = 0
        self.signal = signal.SIGKILL
        if not spec:
            return
        point, _, rest = spec.partition(":")
        count, _, sig = rest.partition(":")
        if point not in POINTS:
            raise ValueError(f"{_ENV}: unknown crash point {point!r}; choose one of {POINTS}.")
        self.point = point
        self.remaining = int(count or "1")
        if sig:
            self.signal = getattr(signal, "SIG" + sig.upper())

    def passing(self, point: str) -> None:
        if point != self.point:
            return
        self.remaining -= 1
        if self.remaining == 0:
            if self.signal == signal.SIGINT:
                # A real SIGINT handled by Python raises KeyboardInterrupt at the next bytecode.
                os.kill(os.getpid(), signal.SIGINT)
            else:
                os.kill(os.getpid(), self.signal)


_plan = _CrashPlan(os.environ.get(_ENV))


def reload_plan() -> None:
    """Read the crash plan from the environment again (a test process forked after import)."""
    global _plan
    _plan = _CrashPlan(os.environ.get(_ENV))


def crash_point(point: str) -> None:
    """Mark a place where tests may kill the process (no-op unless configured)."""
    if _plan.point is not None:
        _plan.passing(point)
