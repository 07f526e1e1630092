"""The demo of the README's first command: it must run, and find the resumed run identical."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
import re
import signal
import subprocess
import sys

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
from optuna.trial import create_trial
import pytest

import optuna_checkpoint
from optuna_checkpoint.demo._cli import main
from optuna_checkpoint.demo._compare import retry_notes
from optuna_checkpoint.demo._compare import same_step
from optuna_checkpoint.demo._compare import why_different
from optuna_checkpoint.demo._run import Kill
from optuna_checkpoint.demo._run import KillOutcome
from optuna_checkpoint.demo._run import Run
from optuna_checkpoint.demo._run import describe_start
from optuna_checkpoint.demo._run import kills_summary
from optuna_checkpoint.demo._session import print_steps_redone
from optuna_checkpoint.demo._worker import FINISHED


pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


@pytest.mark.timeout(120)
def test_demo_resumes_bit_for_bit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exit_code = main(["--trials", "8", "--kills", "2", "--dir", str(tmp_path)])

    out = capsys.readouterr().out
    assert exit_code == 0, out
    assert "8/8 trials identical to the uninterrupted run, bit for bit," in out
    assert "intermediate values included, after " in out
    assert "[checkpointed] kill 1/2:" in out
    assert "unwrapped TPESampler:" in out
    # The seeded trajectory prunes some trials, and the table says where.
    assert re.search(r" PRUNED at step \d+ +=", out), out
    # One vocabulary: "trial N" is a stored number, a table row a logical trial.
    assert "#" not in out
    assert any(line.startswith("logical trial ") for line in out.splitlines())
    notes = re.findall(r"^ *\d+ .*[=≠] {2,}(\S.*)$", out, re.MULTILINE)
    for note in notes:
        assert re.fullmatch(
            r"(trial \d+ retries )?trials? \d+ \(\w+\)(, \d+ \(\w+\))*(, not retried)?", note
        ), note
    # The kills counted are those that landed, and each landed kill has its progress line.
    landed = re.findall(r"^\[checkpointed\] kill \d/2: SIG\w+ after", out, re.MULTILINE)
    kills = "kill" if len(landed) == 1 else "kills"
    assert f"after {len(landed)} {kills}" in out
    assert {p.name for p in tmp_path.glob("*.db")} == {
        "demo-reference.db",
        "demo-checkpointed.db",
        "demo-unwrapped.db",
    }
    check_progress_lines(out)
    check_steps_redone(out, tmp_path, len(landed))


PROGRESS = re.compile(
    r"^\[(?P<run>checkpointed|unwrapped)\] +(?:"
    r"kill \d/\d: SIG\w+ after [\d.]+ s, (?:cut off trial (?P<cut>\d+) "
    r"(?:at step (?P<step>\d+) of 10|before its first step)|between trials)"
    r"|trial (?P<retry>\d+) retries trials? (?P<retried>.+?)(?: and resumes at step "
    r"(?P<resumes>\d+) of 10| from step 1: it had saved no step|, whose 10 steps were all saved)"
    r"|trial (?P<new>\d+) starts at step 1; trials? (?P<abandoned>.+?) (?:is|are) not retried: "
    r"(?P<lost>\d+) steps? lost"
    r")"
)


def check_progress_lines(out: str) -> None:
    """Each trial a kill cut off is named, as it happens, by the trial that goes on after it.

    In the checkpointed run that trial retries it and resumes at the step the kill cut off,
    or the next one if that step was saved; in the unwrapped run it starts afresh at step 1
    and the cut-off trial's steps are lost.
    """
    cut_off: dict[str, list[tuple[int, int]]] = {"checkpointed": [], "unwrapped": []}
    retried = 0
    for line in out.splitlines():
        match = PROGRESS.match(line)
        if match is None:
            continue
        pending = cut_off[match["run"]]
        if match["cut"] is not None:
            pending.append((int(match["cut"]), int(match["step"] or 0)))
        named = match["retried"] or match["abandoned"]
        if named is None:
            continue
        numbers = [int(n) for n in re.findall(r"(\d+) \(SIG\w+\)", named)]
        assert numbers == [number for number, _ in pending], line
        last_step = max(step for _, step in pending)
        if match["retried"] is not None:
            assert match["run"] == "checkpointed", line
            resumes = int(match["resumes"] or (1 if "from step 1" in line else 11))
            assert resumes in (last_step, last_step + 1), line
            assert int(match["retry"]) > numbers[-1], line
            retried += len(numbers)
        else:
            assert match["run"] == "unwrapped", line
            assert int(match["lost"]) == sum(step for _, step in pending), line
        pending.clear()
    # Every trial the checkpointed run lost to a kill was retried, and said so.
    assert not cut_off["checkpointed"], out
    assert retried == len(re.findall(r"^\[checkpointed\] kill .*cut off", out, re.MULTILINE))


def check_steps_redone(out: str, directory: Path, landed: int) -> None:
    """The steps the verdict says were redone are those the workers' step logs show.

    A trial cut off at step k costs the resumed run at most one step, and the unwrapped run
    all k. Which of the two runs redoes more in all depends on where their kills land (a kill
    between trials costs nothing), so each run is held to its own count.
    """
    match = re.search(
        r"^steps redone: +(\d+) in the resumed run \(at most 1 per kill: .*\)\n"
        r" +(\d+) in the unwrapped run \(every step of its cut-off trials",
        out,
        re.MULTILINE,
    )
    assert match is not None, out
    redone, lost = int(match[1]), int(match[2])

    def logged(run: str) -> list[tuple[int, int]]:
        lines = (directory / f"demo-{run}.steps").read_text().splitlines()
        return [(int(n), int(s)) for n, s in (line.split() for line in lines)]

    # The resumed run began exactly the reference's steps, plus those it redid: at most one
    # per kill.
    assert len(logged("checkpointed")) - len(logged("reference")) == redone <= landed
    # The unwrapped run lost every step its cut-off trials had begun: those its kill lines
    # name, counted again from its step log and its study.
    study = optuna.load_study(
        study_name="demo", storage=f"sqlite:///{directory}/demo-unwrapped.db"
    )
    unfinished = {t.number for t in study.trials if t.state not in FINISHED}
    assert lost == sum(1 for number, _ in logged("unwrapped") if number in unfinished)
    printed = re.findall(r"^\[unwrapped\] +kill .*cut off trial \d+ at step (\d+)", out, re.M)
    assert lost == sum(int(step) for step in printed)


def test_retry_notes_name_the_retry_and_its_attempt_by_their_trial_numbers(
    tmp_path: Path,
) -> None:
    study = optuna.create_study()
    for number in range(6):  # trials 2 and 3 were cut off; trial 4 retries both
        state = TrialState.FAIL if number in (2, 3) else TrialState.COMPLETE
        study.add_trial(create_trial(state=state, value=None if number in (2, 3) else 0.0))
    run = Run("checkpointed", tmp_path, "demo", "tpe", 42, 4, wrap=True)
    run.outcomes = [
        KillOutcome(Kill(signal.SIGKILL, 0.5), True, True, 3, 2, cut_off=2),
        KillOutcome(Kill(signal.SIGTERM, 0.5), True, True, 4, 2, cut_off=3),
    ]
    trials = study.trials
    kept = [t for t in trials if t.number not in (2, 3)]

    assert retry_notes(trials, kept, run) == {2: "trial 4 retries trials 2 (SIGKILL), 3 (SIGTERM)"}
    assert run.outcomes[0].describe(4) == (
        "SIGKILL after 0.50 s, cut off trial 2 before its first step; 2 of 4 trials finished, "
        "resuming…"
    )


def test_the_trial_after_a_kill_says_where_it_goes_on_from() -> None:
    sigkill = KillOutcome(Kill(signal.SIGKILL, 0.5), True, True, 9, 8, 8, cut_off_step=7)
    sigterm = KillOutcome(Kill(signal.SIGTERM, 0.5), True, True, 10, 8, 9, cut_off_step=0)

    assert sigkill.describe(12) == (
        "SIGKILL after 0.50 s, cut off trial 8 at step 7 of 10; 8 of 12 trials finished, resuming…"
    )
    assert describe_start(9, 7, [sigkill], resumable=True) == (
        "trial 9 retries trial 8 (SIGKILL) and resumes at step 7 of 10"
    )
    assert describe_start(10, 8, [sigkill, sigterm], resumable=True) == (
        "trial 10 retries trials 8 (SIGKILL), 9 (SIGTERM) and resumes at step 8 of 10"
    )
    assert describe_start(10, 1, [sigterm], resumable=True) == (
        "trial 10 retries trial 9 (SIGTERM) from step 1: it had saved no step"
    )
    assert describe_start(9, 1, [sigkill], resumable=False) == (
        "trial 9 starts at step 1; trial 8 (SIGKILL) is not retried: 7 steps lost"
    )
    assert describe_start(9, 1, [], resumable=True) is None


def test_steps_redone_count_what_the_step_logs_hold_beyond_the_trajectory(
    tmp_path: Path,
) -> None:
    def run(name: str, wrap: bool, steps: str) -> Run:
        run = Run(name, tmp_path, name, "tpe", 42, 2, wrap=wrap)
        run.step_log_path.write_text(steps)
        return run

    def trial(state: TrialState, n_steps: int) -> FrozenTrial:
        reported = {step: 1.0 / step for step in range(1, n_steps + 1)}
        value = 0.25 if state == TrialState.COMPLETE else None
        return create_trial(state=state, value=value, intermediate_values=reported)

    # Trial 1 was cut off in step 3 after saving step 2; trial 2 retried it from step 3.
    checkpointed = run("checkpointed", True, "0 1\n0 2\n1 1\n1 2\n1 3\n2 3\n2 4\n")
    checkpointed.outcomes = [KillOutcome(Kill(signal.SIGKILL, 0.5), True, True, 2, 1, 1, 3)]
    resumed = [trial(TrialState.COMPLETE, 2), trial(TrialState.COMPLETE, 4)]
    # Ctrl-C failed trial 1 in step 3 and SIGKILL left trial 2 running in step 2: both lost.
    unwrapped = run("unwrapped", False, "0 1\n0 2\n1 1\n1 2\n1 3\n2 1\n2 2\n3 1\n3 2\n")
    study = optuna.create_study(storage=unwrapped.storage, study_name="demo")
    for state, n_steps in [
        (TrialState.COMPLETE, 2),
        (TrialState.FAIL, 3),
        (TrialState.RUNNING, 2),
        (TrialState.PRUNED, 2),
    ]:
        study.add_trial(trial(state, n_steps))
    lines: list[str] = []

    within = print_steps_redone(checkpointed, resumed, unwrapped, lambda *a: lines.extend(a))

    assert within
    assert lines == [
        "steps redone:",
        "1 in the resumed run (at most 1 per kill: each retry resumed at its trial's last save)",
        "5 in the unwrapped run (every step of its cut-off trials, which are not retried)",
    ]


def test_trials_are_the_same_only_if_their_intermediate_values_are(tmp_path: Path) -> None:
    def trial(intermediate: dict[int, float]) -> FrozenTrial:
        return create_trial(
            params={"lr": 0.1},
            distributions={"lr": FloatDistribution(0.01, 1.0)},
            value=0.5,
            intermediate_values=intermediate,
        )

    assert same_step(trial({1: 0.75, 2: 0.5}), trial({1: 0.75, 2: 0.5}))
    assert not same_step(trial({1: 0.75, 2: 0.5}), trial({1: 0.75000001, 2: 0.5}))
    assert not same_step(trial({1: 0.75, 2: 0.5}), trial({2: 0.5}))
    run = Run("checkpointed", tmp_path, "demo", "tpe", 42, 1, wrap=True)
    assert why_different([trial({1: 0.75})], [trial({1: 0.5})], 0, run) == (
        "the same params, but another state, value or intermediate values"
    )


def test_the_kills_counted_are_those_that_landed() -> None:
    sent = KillOutcome(Kill(signal.SIGKILL, 0.5), True, True, 3, 2, cut_off=2)
    between = KillOutcome(Kill(signal.SIGTERM, 0.5), True, True, 5, 4, cut_off=None)
    too_late = KillOutcome(Kill(signal.SIGINT, 0.5), False, False, 6, 6, cut_off=None)

    assert kills_summary([sent, between], 2) == "2 kills (SIGKILL, SIGTERM)"
    assert kills_summary([sent, between, too_late], 4) == (
        "2 kills (SIGKILL, SIGTERM) of the 4 planned (the run finished first)"
    )
    assert too_late.describe(6) == "not sent, the run finished first"


def test_demo_help_hides_the_worker_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])

    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--kills" in out
    assert "--worker" not in out


def test_python_m_runs_the_demo() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "optuna_checkpoint.demo", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: optuna-checkpoint-demo ")


# Each module of the demo imports only the modules before it, and of the library only its
# public names: the layering its package docstring describes.
LAYERS = ["_worker", "_run", "_compare", "_table", "_session", "_cli", "__main__"]


def test_the_demo_modules_import_only_downward() -> None:
    directory = Path(str(importlib.import_module("optuna_checkpoint.demo").__file__)).parent
    assert {path.stem for path in directory.glob("*.py")} == {"__init__", *LAYERS}
    init = ast.parse((directory / "__init__.py").read_text())
    assert [type(node) for node in init.body] == [ast.Expr]  # the docstring, nothing else
    for index, name in enumerate(LAYERS):
        for node in ast.walk(ast.parse((directory / f"{name}.py").read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0 and node.module is not None, name
                modules = [node.module]
                if node.module == "optuna_checkpoint":
                    assert {a.name for a in node.names} <= set(optuna_checkpoint.__all__), name
            else:
                continue
            for module in modules:
                if module.startswith("optuna_checkpoint.demo."):
                    assert module.split(".")[2] in LAYERS[:index], (name, module)
                else:
                    assert not module.startswith("optuna_checkpoint."), (name, module)
