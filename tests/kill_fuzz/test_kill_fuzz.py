"""Kill the study at random instants and at every named crash point; resume; compare bit for bit.

Each test runs the child study (``child.py``) in real processes, interrupts it with real signals
(SIGKILL, SIGTERM with its default action, SIGINT delivered as KeyboardInterrupt), re-runs it
until it has ``N_COMPLETE`` COMPLETE trials, and compares the whole trajectory (COMPLETE, PRUNED
and genuinely FAILed trials, params and values via ``float.hex``) with an uninterrupted run. The
controls run the unwrapped sampler under the same kills and require a divergence, which shows
that the comparison would catch one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
import random
import signal
from typing import Any

import pytest

from optuna_checkpoint._faults import POINTS
from optuna_checkpoint.state._seal import SIGNING_KEY_ENV
from tests.checkpoint_rows import seals
from tests.kill_fuzz.harness import RunLog
from tests.kill_fuzz.harness import assert_resumed_exactly
from tests.kill_fuzz.harness import first_difference
from tests.kill_fuzz.harness import run_to_completion
from tests.kill_fuzz.harness import run_with_crash_points
from tests.kill_fuzz.harness import run_with_random_kills
from tests.kill_fuzz.harness import sqlite_url
from tests.kill_fuzz.harness import trajectory


N_COMPLETE = 20
SEED = 7
KILLS = 3
MAX_KILL_DELAY = 0.8  # seconds after the child is ready; a run of the child lasts about 1 s
# Random kills fall within this share of an uninterrupted run (measured once per session), so
# that they land even when a run goes twice as fast as the measured one (a machine's load varies).
KILL_SPAN = 0.5
CONTROL_MIN_KILL_DELAY = 0.3  # the first trials of a run take well under this
CONTROL_DELAY_IN_OBJECTIVE = 0.05  # about 20 trials then outlast MAX_KILL_DELAY
DELAY_IN_OBJECTIVE = 0.005  # so that random kills land inside the objective too

# The three kinds of state: a generator only, TPE's, CMA-ES's (its optimizer in the trials).
BASE = ["random", "tpe", "cmaes"]
# Other configurations of the same samplers. Each runs its own adapter path (the variant's own
# attributes and optimizer class), but how a process dies does not depend on it.
VARIANTS = ["tpe-independent", "tpe-group", "cmaes-sep", "cmaes-margin", "cmaes-lr-adapt"]
SEEDED = BASE + VARIANTS
UNSEEDED = BASE
SIGNALS = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT]

# Plain Optuna's CmaEsSampler(with_margin=True) crashes inside cmaes (CMAwM.tell gets solutions
# of different lengths) once the conditional branch changes the search space, so that variant
# runs the objective without it.
CONFIG_EXTRAS: dict[str, dict[str, Any]] = {"cmaes-margin": {"conditional": False}}


def _config(
    sampler: str, storage: str, *, seed: int | None = SEED, **extra: Any
) -> dict[str, Any]:
    return {
        "sampler": sampler,
        "seed": seed,
        "storage": storage,
        "n_complete": N_COMPLETE,
        "delay": DELAY_IN_OBJECTIVE,
        **CONFIG_EXTRAS.get(sampler, {}),
        **extra,
    }


def _kill_window(run_seconds: float) -> float:
    """The latest instant after ``ready`` to kill at: within the run, however fast it is."""
    return min(MAX_KILL_DELAY, KILL_SPAN * run_seconds)


# By default every base sampler meets every signal; each variant meets one (every pair under
# -m soak). Pinned besides: Ctrl-C in CMA-ES with margin, whose numerics changed when a Ctrl-C
# landed in cmaes's import (see state/adapters/_cmaes.py).
@pytest.mark.fast_tier(
    *({"sampler": sampler, "sig": sig} for sampler in BASE for sig in SIGNALS),
    {"sampler": "cmaes-margin", "sig": signal.SIGINT},
    pairs=False,
)
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("sampler", SEEDED)
def test_resume_after_random_kills_matches_uninterrupted_run(
    sampler: str,
    sig: signal.Signals,
    tmp_path: Path,
    reference: Any,
    run_length: Callable[[str], float],
    kill_rng: random.Random,
) -> None:
    url = sqlite_url(tmp_path / "study.db")
    log = run_with_random_kills(
        _config(sampler, url),
        kills=KILLS,
        signals=[sig],
        rng=kill_rng,
        max_delay=_kill_window(run_length(sampler)),
    )
    assert log.kills_landed >= 1, "no kill landed: the test would prove nothing"
    assert_resumed_exactly(url, reference(sampler), log, N_COMPLETE)


def test_signed_checkpoints_resume_after_random_kills(
    tmp_path: Path,
    reference: Any,
    run_length: Callable[[str], float],
    monkeypatch: pytest.MonkeyPatch,
    kill_rng: random.Random,
) -> None:
    # Every process of the run, killed or not, signs with the key from its environment.
    monkeypatch.setenv(SIGNING_KEY_ENV, "a-key-for-the-kill-fuzz-test")
    url = sqlite_url(tmp_path / "study.db")
    log = run_with_random_kills(
        _config("tpe", url),
        kills=KILLS,
        signals=[signal.SIGKILL],
        rng=kill_rng,
        max_delay=_kill_window(run_length("tpe")),
    )
    assert log.kills_landed >= 1, "no kill landed: the test would prove nothing"
    assert_resumed_exactly(url, reference("tpe"), log, N_COMPLETE)
    found = seals(url)
    assert found and all(seal.startswith("hmac-sha256:") for seal in found)


# The loop is the same for every signal: by default each sampler and each signal occur once, every
# pair under -m soak.
@pytest.mark.fast_tier(pairs=False)
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_ask_tell_loop_resumes_after_random_kills_like_uninterrupted_optimize(
    sampler: str,
    sig: signal.Signals,
    tmp_path: Path,
    reference: Any,
    run_length: Callable[[str], float],
    kill_rng: random.Random,
) -> None:
    # study.tell goes through the same after_trial and commit as study.optimize, so the
    # ask/tell trajectory equals the optimize reference.
    url = sqlite_url(tmp_path / "study.db")
    log = run_with_random_kills(
        _config(sampler, url, loop="ask_tell"),
        kills=KILLS,
        signals=[sig],
        rng=kill_rng,
        max_delay=_kill_window(run_length(sampler)),
    )
    assert log.kills_landed >= 1
    assert_resumed_exactly(url, reference(sampler), log, N_COMPLETE)


@pytest.mark.parametrize("sampler", UNSEEDED)
def test_unseeded_study_resumes_to_its_own_continuation(
    sampler: str, tmp_path: Path, run_length: Callable[[str], float], kill_rng: random.Random
) -> None:
    # The uninterrupted run of an unseeded study is the one its first process would have made:
    # replay it from the initial RNG state the killed run recorded, without the wrapper.
    url = sqlite_url(tmp_path / "study.db")
    log = run_with_random_kills(
        _config(sampler, url, seed=None),
        kills=KILLS,
        signals=SIGNALS,
        rng=kill_rng,
        max_delay=_kill_window(run_length(sampler)),
    )
    assert log.kills_landed >= 1
    reference_url = sqlite_url(tmp_path / "reference.db")
    run_to_completion(
        _config(sampler, reference_url, seed=None, wrap=False, initial_state_from=url), RunLog()
    )
    assert_resumed_exactly(url, trajectory(reference_url, wrapped=False), log, N_COMPLETE)


def _crash_plans() -> list[tuple[str, list[str]]]:
    plans = []
    for point in POINTS:
        if point == "after_save":
            continue  # never passed on SQL storages: their checkpoint goes with the commit
        if point in ("inside_trial_state_save", "after_artifact_upload"):
            continue  # passed only by objectives that save their state (test_trial_checkpoint_*)
        if point in ("inside_import", "inside_reseal"):
            continue  # passed only by the import and rekey tools (test_transfer, test_rekey)
        if point == "after_resume":
            # Passed once per process, when it resumes: create something to resume first.
            plans.append((point, ["objective:6", "after_resume:1", "after_resume:1"]))
        else:
            # Crash mid-run, then again on the second pass after resuming.
            plans.append((point, [f"{point}:7", f"{point}:2"]))
    return plans


CRASH_PLANS = _crash_plans()


def _with_signal(plan: list[str], sig: signal.Signals) -> list[str]:
    return [f"{step}:{sig.name[3:]}" for step in plan]


@pytest.mark.parametrize("sampler", ["random", "tpe", "cmaes"])
@pytest.mark.parametrize(("point", "plan"), CRASH_PLANS, ids=[p for p, _ in CRASH_PLANS])
def test_resume_after_sigkill_at_crash_point_matches_uninterrupted_run(
    point: str, plan: list[str], sampler: str, tmp_path: Path, reference: Any
) -> None:
    url = sqlite_url(tmp_path / "study.db")
    log = run_with_crash_points(_config(sampler, url), _with_signal(plan, signal.SIGKILL))
    assert log.kills_landed == len(plan), f"crash point {point} was not reached: {log.signals}"
    assert_resumed_exactly(url, reference(sampler), log, N_COMPLETE)


# In the fast tier whatever the cover picks: Ctrl-C inside the commit, where KeyboardInterrupt
# unwinds through the storage's transaction instead of ending the process.
@pytest.mark.fast_tier({"point": "inside_commit", "sig": signal.SIGINT})
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
@pytest.mark.parametrize(("point", "plan"), CRASH_PLANS, ids=[p for p, _ in CRASH_PLANS])
def test_resume_after_signal_at_crash_point_matches_uninterrupted_run(
    point: str, plan: list[str], sig: signal.Signals, tmp_path: Path, reference: Any
) -> None:
    url = sqlite_url(tmp_path / "study.db")
    log = run_with_crash_points(_config("tpe", url), _with_signal(plan, sig))
    assert log.kills_landed == len(plan), f"crash point {point} was not reached: {log.signals}"
    assert_resumed_exactly(url, reference("tpe"), log, N_COMPLETE)


@pytest.mark.parametrize("sampler", BASE)
def test_control_unwrapped_sampler_diverges_under_the_same_random_kills(
    sampler: str, tmp_path: Path, reference: Any, kill_rng: random.Random
) -> None:
    _control_diverges(sampler, tmp_path, reference, kill_rng)


@pytest.mark.soak
@pytest.mark.parametrize("variant", VARIANTS)
def test_soak_control_unwrapped_variant_diverges_under_the_same_random_kills(
    variant: str, tmp_path: Path, reference: Any, kill_rng: random.Random
) -> None:
    _control_diverges(variant, tmp_path, reference, kill_rng)


def _control_diverges(
    sampler: str, tmp_path: Path, reference: Any, kill_rng: random.Random
) -> None:
    url = sqlite_url(tmp_path / "study.db")
    # Kills that land before any trial finished, or after the last, leave nothing to diverge
    # from: the control waits for the first trials and runs slowly enough to still be going.
    log = run_with_random_kills(
        _config(sampler, url, wrap=False, delay=CONTROL_DELAY_IN_OBJECTIVE),
        kills=KILLS,
        signals=[signal.SIGKILL],
        rng=kill_rng,
        max_delay=MAX_KILL_DELAY,
        min_delay=CONTROL_MIN_KILL_DELAY,
    )
    # One landed kill is enough to show the comparison catches a divergence; a later run may
    # finish the study before its kill.
    assert log.kills_landed >= 1
    assert first_difference(trajectory(url, wrapped=False), reference(sampler)) is not None


@pytest.mark.parametrize("sampler", ["random", "tpe", "cmaes"])
@pytest.mark.parametrize("point", ["objective", "between_trials"])
def test_control_unwrapped_sampler_diverges_at_crash_points(
    point: str, sampler: str, tmp_path: Path, reference: Any
) -> None:
    url = sqlite_url(tmp_path / "study.db")
    plan = _with_signal([f"{point}:7", f"{point}:2"], signal.SIGKILL)
    log = run_with_crash_points(_config(sampler, url, wrap=False), plan)
    assert log.kills_landed == len(plan)
    assert first_difference(trajectory(url, wrapped=False), reference(sampler)) is not None


SOAK_COMPLETE = 80
SOAK_KILLS = 15
SOAK_MAX_KILL_DELAY = 0.3  # short runs between kills, so that all of them land


@pytest.mark.soak
@pytest.mark.parametrize("sampler", SEEDED)
def test_soak_many_random_kills_with_every_signal(
    sampler: str, tmp_path: Path, kill_rng: random.Random
) -> None:
    reference_url = sqlite_url(tmp_path / "reference.db")
    run_to_completion(_config(sampler, reference_url, n_complete=SOAK_COMPLETE), RunLog())
    url = sqlite_url(tmp_path / "study.db")
    log = run_with_random_kills(
        _config(sampler, url, n_complete=SOAK_COMPLETE),
        kills=SOAK_KILLS,
        signals=SIGNALS,
        rng=kill_rng,
        max_delay=SOAK_MAX_KILL_DELAY,
    )
    difference = first_difference(
        trajectory(url, wrapped=True), trajectory(reference_url, wrapped=True)
    )
    assert difference is None, f"{difference}\n(after {log.kills_landed} kills: {log.signals})"
    # A run that finishes before its kill ends the loop early; most kills must still land.
    assert log.kills_landed >= SOAK_KILLS // 2, f"only {log.kills_landed} kills landed"
