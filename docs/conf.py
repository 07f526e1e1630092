"""Sphinx configuration of the optuna-checkpoint user guide.

Build with ``python -m sphinx -W --keep-going -n -b html docs docs/_build/html``; the pages
are Markdown, read by myst-parser. ``tests/test_docs.py`` runs the same build.
"""

from __future__ import annotations

from pathlib import Path
import shutil
import sys

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.ext.graphviz import graphviz


# Document the checkout the guide sits in, not whichever release happens to be installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import optuna_checkpoint


project = "optuna-checkpoint"
author = "the optuna-checkpoint authors"
copyright = f"%Y, {author}"
release = optuna_checkpoint.__version__
version = ".".join(release.split(".")[:2])

# No sphinx.ext.intersphinx: it fetches inventories over the network, and the guide must build
# offline (tests/test_docs.py builds it in CI). References to Optuna's and NumPy's types
# therefore stay plain text; nitpick_ignore_regex below keeps them from failing the build.
extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.graphviz",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "examples"]

# Anchors for "## 5. Leases" and the like, so that links such as design.md#5-leases resolve.
myst_heading_anchors = 3

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

# Nitpicky mode (-n) checks every cross-reference to this package. Other packages' types cannot
# resolve without intersphinx, so they are exempt: qualified names, and the bare names the
# package's annotations use (it imports Optuna's types under TYPE_CHECKING only).
_OPTUNA_TYPES = [
    "ArtifactStore",
    "BaseDistribution",
    "BasePruner",
    "BaseSampler",
    "BaseStorage",
    "FixedTrial",
    "FrozenTrial",
    "Study",
    "Trial",
    "TrialState",
]
nitpick_ignore_regex = [
    (r"py:.*", r"(optuna|numpy|np|collections|typing|types|os)\..*"),
    (r"py:class", "|".join(_OPTUNA_TYPES)),
]
# Private names that public docstrings mention: the worker-id rule's module (design.md gives the
# rule) and the constant behind Retention's "newest two" (its docstring gives the value).
nitpick_ignore = [
    ("py:mod", "optuna_checkpoint.attach._worker"),
    ("py:data", "RESUME_LOOKBACK"),
]

html_theme = "furo"
html_title = f"optuna-checkpoint {release}"

# Pictures (design.md's pipeline) are ```{graphviz} blocks, drawn as SVG by Graphviz's `dot`
# (apt install graphviz, brew install graphviz). Without `dot` the extension would fail the build
# under -W, so the guide then shows each picture's DOT source as a literal block instead (with
# the class below, which tests/test_docs.py looks for): see setup().
graphviz_output_format = "svg"
GRAPHVIZ_FALLBACK_CLASS = "graphviz-fallback"


def _graphviz_source_without_dot(app: Sphinx, doctree: nodes.document) -> None:
    """Replace each graphviz node by a literal block of its DOT source if ``dot`` is absent."""
    if shutil.which(app.config.graphviz_dot) is not None:
        return
    for node in list(doctree.findall(graphviz)):
        source = nodes.literal_block(
            node["code"], node["code"], language="text", classes=[GRAPHVIZ_FALLBACK_CLASS]
        )
        node.replace_self(source)


def setup(app: Sphinx) -> None:
    """Show graph sources instead of pictures when Graphviz's ``dot`` is not installed."""
    app.connect("doctree-read", _graphviz_source_without_dot)
