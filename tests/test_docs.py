"""The user guide in docs/ builds with Sphinx without a single warning, and lists every page."""

from __future__ import annotations

import ast
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys

import pytest

import optuna_checkpoint


ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PACKAGE_SRC = ROOT / "src" / "optuna_checkpoint"
BUILD_TIMEOUT = 120
GRAPHVIZ_FALLBACK_CLASS = "graphviz-fallback"  # docs/conf.py's, without dot


def _require_sphinx() -> None:
    for module in ("sphinx", "myst_parser", "furo"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install '.[docs]'")


def _build(
    source: Path, out: Path, builder: str = "html", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # -W: warnings are errors; -n: every cross-reference must resolve; -q: only warnings shown.
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", builder]
    return subprocess.run(
        [*command, str(source), str(out)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        cwd=ROOT,
        env=env,
    )


@pytest.fixture(scope="module")
def built_guide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guide built once as HTML, for the tests that read the pages."""
    _require_sphinx()
    out = tmp_path_factory.mktemp("guide") / "html"
    result = _build(DOCS, out)
    assert result.returncode == 0, _output(result)
    return out


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


def test_docs_build_with_no_warnings(built_guide: Path) -> None:
    assert (built_guide / "index.html").is_file()
    assert (built_guide / "api.html").is_file()


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


# ---------------------------------------------------------------- design.md's architecture

# Words the pipeline picture shows, whether drawn (SVG text) or given as its DOT source.
PIPELINE_WORDS = ("StreamAttacher", "Resumer", "TrialRecorder.begin", "TrialRecorder.capture")


def _pipeline_picture(page: Path) -> str:
    """The pipeline as the built design page shows it: the SVG's text, or the fallback block."""
    html = page.read_text()
    drawn = re.search(r'<object data="(_images/graphviz-[^"]+\.svg)" type="image/svg\+xml"', html)
    if drawn is not None:
        return (page.parent / drawn.group(1)).read_text()
    fallback = re.search(rf'<div class="{GRAPHVIZ_FALLBACK_CLASS}[ "].*?</div>', html, re.DOTALL)
    return "" if fallback is None else fallback.group(0)


def test_design_page_shows_the_pipeline_picture(built_guide: Path) -> None:
    page = built_guide / "design.html"
    picture = _pipeline_picture(page)
    # With Graphviz's dot the picture is drawn; without it, docs/conf.py shows its source.
    if shutil.which("dot") is not None:
        assert picture.startswith(("<?xml", "<svg")), "dot is installed, yet no SVG was drawn"
    else:
        assert GRAPHVIZ_FALLBACK_CLASS in picture, "no picture, and no fallback, on design.html"
    missing = [word for word in PIPELINE_WORDS if word not in picture]
    assert missing == [], f"the pipeline picture does not show {missing}"


def test_the_guide_builds_without_graphviz(tmp_path: Path) -> None:
    # Control for the fallback: a PATH without dot, as on a machine without Graphviz.
    _require_sphinx()
    result = _build(DOCS, tmp_path / "html", env={**os.environ, "PATH": str(tmp_path)})
    assert result.returncode == 0, _output(result)
    picture = _pipeline_picture(tmp_path / "html" / "design.html")
    assert GRAPHVIZ_FALLBACK_CLASS in picture
    assert all(word in picture for word in PIPELINE_WORDS), picture


def _architecture_rows() -> list[list[str]]:
    """The cells of each row of the table in design.md's "Architecture" section."""
    design = (DOCS / "design.md").read_text()
    section = design.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("| ---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # without the header


def _named_paths(cell: str) -> list[str]:
    return [t for t in re.findall(r"`([^`]+)`", cell) if t.endswith((".py", "/"))]


def _files(path: str) -> list[Path]:
    target = PACKAGE_SRC / path
    return sorted(target.rglob("*.py")) if path.endswith("/") else [target]


def _defined_names(module: Path) -> set[str]:
    names = set()
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_architecture_table_names_only_modules_that_exist() -> None:
    rows = _architecture_rows()
    assert len(rows) > 20, "the architecture table was not found in docs/design.md"
    named = [path for row in rows for cell in row for path in _named_paths(cell)]
    missing = [path for path in named if not (PACKAGE_SRC / path).exists()]
    assert missing == [], f"design.md's architecture table names missing modules: {missing}"


def test_architecture_table_names_what_its_modules_define() -> None:
    wrong = []
    for layer, modules, _job, main in _architecture_rows():
        defined = set().union(
            *(_defined_names(f) for p in _named_paths(modules) for f in _files(p) if f.exists())
        )
        for name in re.findall(r"`([^`]+)`", main):
            if name.removesuffix("()") not in defined:
                wrong.append(f"layer {layer}: {name} is not defined in {_named_paths(modules)}")
    assert wrong == [], "fix design.md's architecture table:\n" + "\n".join(wrong)


def test_architecture_table_covers_every_module() -> None:
    covered = {f for row in _architecture_rows() for p in _named_paths(row[1]) for f in _files(p)}
    modules = {
        path
        for path in PACKAGE_SRC.rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py") or path.parent == PACKAGE_SRC
    }
    unlisted = sorted(str(path.relative_to(PACKAGE_SRC)) for path in modules - covered)
    assert unlisted == [], f"add these to design.md's architecture table: {unlisted}"
