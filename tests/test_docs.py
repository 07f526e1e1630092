"""The user guide in docs/ builds with Sphinx without a single warning, and lists every page."""

from __future__ import annotations

from pathlib import Path
import re
import shutil
import subprocess
import sys

import pytest

import optuna_checkpoint


ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BUILD_TIMEOUT = 120


def _require_sphinx() -> None:
    for module in ("sphinx", "myst_parser", "furo"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install '.[docs]'")


def _build(source: Path, out: Path, builder: str = "html") -> subprocess.CompletedProcess[str]:
    # -W: warnings are errors; -n: every cross-reference must resolve; -q: only warnings shown.
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", builder]
    return subprocess.run(
        [*command, str(source), str(out)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        cwd=ROOT,
    )


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def _toctree_entries(page: Path) -> set[str]:
    entries = set()
    for block in re.findall(r"```\{toctree\}\n(.*?)```", page.read_text(), re.DOTALL):
        for line in block.splitlines():
            line = line.strip()
            if line and not line.startswith(":"):
                # "Title <page>" or "page".
                entries.add(re.sub(r"^.*<(.+)>$", r"\1", line))
    return entries


def test_docs_build_with_no_warnings(tmp_path: Path) -> None:
    _require_sphinx()
    result = _build(DOCS, tmp_path / "html")
    assert result.returncode == 0, _output(result)
    assert (tmp_path / "html" / "index.html").is_file()
    assert (tmp_path / "html" / "api.html").is_file()


def test_every_page_is_in_the_index_toctree() -> None:
    pages = {p.stem for p in DOCS.glob("*.md")} - {"index"}
    listed = _toctree_entries(DOCS / "index.md")
    assert pages - listed == set(), "pages missing from the toctrees of docs/index.md"
    assert listed - pages == set(), "toctree entries without a page"


def test_a_page_left_out_of_the_toctree_fails_the_build(tmp_path: Path) -> None:
    # Control for the two tests above: Sphinx itself refuses an unlisted page under -W.
    _require_sphinx()
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs, ignore=shutil.ignore_patterns("_build"))
    (tmp_path / "src").symlink_to(ROOT / "src")  # conf.py documents ../src
    (docs / "stray.md").write_text("# Stray\n\nA page no toctree lists.\n")
    result = _build(docs, tmp_path / "out", builder="dummy")
    assert result.returncode != 0, _output(result)
    assert "stray.md" in result.stderr, _output(result)
    assert "document isn't included in any toctree" in result.stderr, _output(result)


def test_api_page_documents_every_public_name() -> None:
    api = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^\.\. auto\w+:: optuna_checkpoint\.(\w+)$", api, re.MULTILINE))
    missing = set(optuna_checkpoint.__all__) - documented
    assert missing == set(), f"add these to docs/api.md: {sorted(missing)}"
