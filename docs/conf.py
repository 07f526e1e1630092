"""Sphinx configuration of the optuna-checkpoint user guide.

Build with ``python -m sphinx -W --keep-going -n -b html docs docs/_build/html``; the pages
are Markdown, read by myst-parser. ``tests/test_docs.py`` runs the same build.
"""

from __future__ import annotations

from pathlib import Path
import sys


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
    (r"py:.*", r"(optuna|numpy|np|collections|typing|types)\..*"),
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
