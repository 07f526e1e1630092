"""Determinism audit: does the objective return the same values for the same trial again?

A resume is bit-identical only if the objective is a deterministic function of the trial: the
sampler's next proposals follow from the values it returned. The audit re-evaluates a few
COMPLETE trials with their parameters and seeds and compares the values bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
import math
import numbers
from typing import Any

from optuna.study import Study
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_checkpoint.tools._seeding import ReplayTrial


_CAUSES = """\
Likely causes, and what to do (details in docs/objective.md):
  - Unseeded randomness in the objective (random, numpy, torch, TensorFlow, data shuffling,
    dropout): call optuna_checkpoint.seed_everything(trial) first thing in the objective, and
    build your own generators from optuna_checkpoint.trial_seed(trial, "<name>").
  - GPU kernels: cuDNN autotuning and atomic-add kernels vary between runs; pass
    deterministic=True to seed_everything, or run the audit on CPU to confirm.
  - Thread pools and BLAS threads: parallel reductions sum in a varying order; pin
    OMP_NUM_THREADS / MKL_NUM_THREADS / OPENBLAS_NUM_THREADS, or use a single thread.
  - Data loaders with worker processes: give the loader a torch.Generator seeded with
    trial_seed(trial, "data"), seed other libraries in worker_init_fn, or use num_workers=0.
  - Wall-clock time: timeouts, time budgets or early stopping on elapsed time end training at
    different points; budget in steps or epochs instead.
  - External state: files, datasets, caches, services or library versions that changed since
    the trial ran; pin them, or snapshot the data.
  - String hashing: the order of a set of strings, and hash(), change from process to
    process; sort before iterating, or start Python with PYTHONHASHSEED=0."""


@dataclass(frozen=True)
class TrialAudit:
    """One trial, evaluated again.

    Attributes:
        number: The trial's number in the study.
        params: Its parameters.
        recorded: The values stored when it ran.
        recomputed: The values the objective returned now; ``None`` if it raised.
        identical: Whether ``recomputed`` equals ``recorded`` bit for bit (NaN equals NaN).
        error: The exception the objective raised now, as ``"Type: message"``; else ``None``.
    """

    number: int
    params: Mapping[str, Any]
    recorded: tuple[float, ...]
    recomputed: tuple[float, ...] | None
    identical: bool
    error: str | None = None


@dataclass(frozen=True)
class DeterminismReport:
    """The result of :func:`audit_determinism`; ``str(report)`` explains it.

    Attributes:
        study_name: The audited study.
        trials: The trials evaluated again, in trial-number order.
    """

    study_name: str
    trials: tuple[TrialAudit, ...]

    @property
    def identical(self) -> bool:
        """Whether every audited trial returned its recorded values bit for bit."""
        return all(t.identical for t in self.trials)

    @property
    def differing(self) -> tuple[TrialAudit, ...]:
        """The audited trials whose values differ from the recorded ones."""
        return tuple(t for t in self.trials if not t.identical)

    @property
    def summary(self) -> str:
        """One line: how many trials were audited and how many differ."""
        n, bad = len(self.trials), len(self.differing)
        if not bad:
            return (
                f"Study {self.study_name!r}: all {n} audited trials returned their recorded "
                "values bit for bit."
            )
        return (
            f"Study {self.study_name!r}: {bad} of {n} audited trials returned other values "
            "than recorded."
        )

    def __str__(self) -> str:
        lines = [self.summary]
        for audit in self.trials:
            if audit.identical:
                lines.append(f"  trial {audit.number}: identical {_show(audit.recorded)}")
                continue
            lines.append(f"  trial {audit.number}: DIFFERS  params {dict(audit.params)!r}")
            lines.append(f"    recorded   {_show(audit.recorded)}")
            if audit.error is not None:
                lines.append(f"    now raised {audit.error}")
            else:
                assert audit.recomputed is not None
                lines.append(f"    now        {_show(audit.recomputed)}")
        if not self.identical:
            lines.append(
                "The objective is not deterministic, so a resumed study cannot follow the\n"
                "original trajectory: the sampler's next proposals depend on these values."
            )
            lines.append(_CAUSES)
        return "\n".join(lines)


def audit_determinism(
    study: Study,
    objective: Callable[[Any], float | Sequence[float]],
    *,
    trials: int | Sequence[int] = 3,
) -> DeterminismReport:
    """Evaluate some COMPLETE trials again and check that the objective returns the same values.

    Each trial is re-evaluated in this process by calling ``objective`` with a
    :class:`~optuna.trial.FixedTrial` holding the trial's parameters and number, on which
    :func:`trial_seed` and :func:`seed_everything` give the seeds the trial got when it ran.
    ``report`` and ``should_prune`` do nothing on it, and it has no ``study``. The values are
    compared bit for bit (``float.hex``; NaN equals NaN), every objective of a multi-objective
    study included. The objective runs for real: audit few trials if it is expensive.

    Args:
        study: The study whose trials to check.
        objective: The study's objective function.
        trials: How many COMPLETE trials to evaluate again, chosen spread evenly over the
            study, first and last included (one: the first); or the numbers of the trials.

    Returns:
        The per-trial results; ``str(report)`` names the likely causes of any difference.

    Raises:
        ValueError: The study has no COMPLETE trial, ``trials`` is not positive, or a given
            number is not a COMPLETE trial of the study.
    """
    chosen = _choose(study, trials)
    audits = tuple(_evaluate_again(study, trial, objective) for trial in chosen)
    return DeterminismReport(study_name=study.study_name, trials=audits)


def _choose(study: Study, trials: int | Sequence[int]) -> list[FrozenTrial]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise ValueError(
            f"study {study.study_name!r} has no COMPLETE trial to audit; run some trials first."
        )
    if isinstance(trials, bool) or not isinstance(trials, (int, Sequence)):
        raise TypeError(f"trials must be a count or a sequence of trial numbers, got {trials!r}")
    if isinstance(trials, int):
        if trials < 1:
            raise ValueError(f"trials must be at least 1, got {trials}")
        return [complete[i] for i in _spread(len(complete), trials)]
    by_number = {t.number: t for t in complete}
    missing = [n for n in trials if n not in by_number]
    if missing:
        raise ValueError(
            f"trials {missing} are not COMPLETE trials of study {study.study_name!r}: only "
            "COMPLETE trials have values to compare."
        )
    return [by_number[n] for n in sorted(set(trials))]


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices into ``range(n)``, evenly spread, first and last included."""
    if k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    # Integer rounding: the same choice on every platform. Distinct, since (n-1)/(k-1) > 1.
    return [(i * (n - 1) + (k - 1) // 2) // (k - 1) for i in range(k)]


def _evaluate_again(
    study: Study, trial: FrozenTrial, objective: Callable[[Any], float | Sequence[float]]
) -> TrialAudit:
    recorded = tuple(trial.values)
    recomputed: tuple[float, ...] | None = None
    error = None
    try:
        recomputed = _as_values(objective(ReplayTrial.of(study, trial)))
    except Exception as exception:  # reported: the recorded run did not raise
        error = f"{type(exception).__name__}: {exception}"
    identical = recomputed is not None and _same(recorded, recomputed)
    return TrialAudit(trial.number, dict(trial.params), recorded, recomputed, identical, error)


def _as_values(result: Any) -> tuple[float, ...]:
    if isinstance(result, numbers.Real):
        return (float(result),)
    return tuple(float(v) for v in result)


def _same(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(
        (math.isnan(x) and math.isnan(y)) or float.hex(x) == float.hex(y)
        for x, y in zip(a, b, strict=True)
    )


def _show(values: Sequence[float]) -> str:
    shown = ", ".join(f"{v!r} ({float.hex(v)})" for v in values)
    return shown if len(values) == 1 else f"[{shown}]"
