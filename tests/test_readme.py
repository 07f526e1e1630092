"""README.md's two set-up commands are the ones the project supports and CI runs."""

from __future__ import annotations

from pathlib import Path
import re


ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", readme)


def test_readme_has_exactly_two_setup_commands_demo_and_tests() -> None:
    demo, tests = _setup_commands()
    assert demo.endswith("pip install . && optuna-checkpoint-demo")
    assert tests.endswith('pip install ".[test]" && pytest')


def test_demo_command_names_the_installed_console_script() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'optuna-checkpoint-demo = "optuna_checkpoint.demo._cli:main"' in pyproject


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    # CI greps README for the command and runs it verbatim.
    assert "grep -m1 -E '^python3 -m venv \\.venv .*pytest' README.md" in ci
    assert 'bash -c "$test_command"' in ci
