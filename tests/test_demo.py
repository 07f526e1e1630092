"""The demo of the README's first command: it must run, and find the resumed run identical."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
import signal
import subprocess
import sys

import pytest

import optuna_checkpoint
from optuna_checkpoint.demo._cli import main


pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


@pytest.mark.timeout(120)
def test_demo_resumes_bit_for_bit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exit_code = main(["--trials", "12", "--kills", "2", "--dir", str(tmp_path)])

    out = capsys.readouterr().out
    assert exit_code == 0, out
    assert "12/12 trials identical to the uninterrupted run, bit for bit" in out
    assert "[checkpointed] kill 1/2:" in out
    assert "unwrapped TPESampler:" in out
    assert {p.name for p in tmp_path.glob("*.db")} == {
        "demo-reference.db",
        "demo-checkpointed.db",
        "demo-unwrapped.db",
    }


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
