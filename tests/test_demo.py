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
from optuna.trial import TrialState
from optuna.trial import create_trial
import pytest

import optuna_checkpoint
from optuna_checkpoint.demo._cli import main
from optuna_checkpoint.demo._compare import retry_notes
from optuna_checkpoint.demo._run import Kill
from optuna_checkpoint.demo._run import KillOutcome
from optuna_checkpoint.demo._run import Run
from optuna_checkpoint.demo._run import kills_summary


pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


@pytest.mark.timeout(120)
def test_demo_resumes_bit_for_bit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exit_code = main(["--trials", "12", "--kills", "2", "--dir", str(tmp_path)])

    out = capsys.readouterr().out
    assert exit_code == 0, out
    assert "12/12 trials identical to the uninterrupted run, bit for bit" in out
    assert "[checkpointed] kill 1/2:" in out
    assert "unwrapped TPESampler:" in out
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
        "SIGKILL after 0.50 s, cut off trial 2; 2 of 4 trials complete, resuming…"
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
