"""The demo of the README's first command: it must run, and find the resumed run identical."""

from __future__ import annotations

from pathlib import Path
import signal

import pytest

from optuna_checkpoint._demo import main


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
