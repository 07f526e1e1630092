"""The library versions recorded with each checkpoint, and what a change means on resume.

A checkpoint restores the sampler's state exactly under any versions, but whether the restored
sampler then proposes what the uninterrupted run proposed depends on the code that runs next:
a new Optuna may sample differently from the same state, a new NumPy may round the last bit of
a float differently. Such changes are therefore reported, precisely, when a stream resumes from
a checkpoint written under other versions. Only a pickled state under another Python version is
refused: cloudpickle serializes functions by bytecode, which is not portable across versions.
"""

from __future__ import annotations

from collections.abc import Mapping
import functools
import importlib.util
import platform
import sys

from optuna_checkpoint._logging import get_logger
from optuna_checkpoint.exceptions import VersionMismatchError


_logger = get_logger(__name__)

_PYTHON = "python"
_THIS_PACKAGE = "optuna-checkpoint"
_CMAES = "cmaes"
# Not a library: which statistics cmaes's CMA-ES with margin computes with (see
# :func:`cmaes_statistics`). Recorded beside the versions, and compared like them.
_CMAES_STATISTICS = "cmaes statistics"
SCIPY = "scipy"
BUILT_IN = "built-in"

# What a change of each library can do to the trajectory after the resume.
_CONSEQUENCES = {
    "optuna": "a sampler may propose differently from the same state under another Optuna",
    "numpy": "NumPy's generators keep their streams, but its numerics may differ in the last bit",
    _CMAES: "CMA-ES updates may differ under another cmaes",
    _PYTHON: "the standard library's numerics may differ",
    _CMAES_STATISTICS: (
        "CMA-ES with margin computes its margin with SciPy on one side and with cmaes's "
        "approximations on the other, which differ in the last bits"
    ),
}


def library_versions() -> dict[str, str]:
    """Return the versions of this package, optuna, numpy, cmaes and Python, as recorded.

    Read from the modules themselves: looking distributions up with ``importlib.metadata``
    scans the whole path and costs tens of milliseconds, on the resume's clock. cmaes is
    recorded once something has imported it (CMA-ES samplers do, before their first proposal);
    importing it here would cost far more than the rest of a resume.
    """
    versions = dict(_loaded_versions())
    cmaes = sys.modules.get(_CMAES)
    if cmaes is not None:
        versions[_CMAES] = str(getattr(cmaes, "__version__", "unknown"))
    statistics = cmaes_statistics()
    if statistics is not None:
        versions[_CMAES_STATISTICS] = statistics
    return versions


def cmaes_statistics() -> str | None:
    """Which statistics cmaes's ``CMAwM`` uses in this process: SciPy's or its own.

    cmaes imports SciPy's normal CDF and chi-squared quantile when it can and otherwise falls
    back on its own approximations, silently. The two differ in the last bits, and so do the
    proposals of ``CmaEsSampler(with_margin=True)``. A process can fall back even with SciPy
    installed: a Ctrl-C that lands while SciPy's C extensions initialize reaches cmaes as an
    ImportError (pybind11 reports any failure of a module's initialization so), and the
    process goes on. Returns ``None`` before cmaes is imported, or if cmaes no longer has the
    attribute this reads (``test_versions`` notices that).
    """
    margin = sys.modules.get("cmaes._cmawm")
    norm_cdf = getattr(margin, "norm_cdf", None)
    if norm_cdf is None:
        return None
    own = getattr(sys.modules.get("cmaes._stats"), "norm_cdf", None)
    return BUILT_IN if norm_cdf is own else SCIPY


def warn_if_cmaes_fell_back() -> None:
    """Warn when cmaes uses its own statistics although SciPy is installed.

    Then cmaes's import of SciPy failed in this process, typically cut off by Ctrl-C, and
    CMA-ES with margin proposes what a process with SciPy would not, from the first trial on.
    """
    if cmaes_statistics() != BUILT_IN or importlib.util.find_spec(SCIPY) is None:
        return
    _logger.warning(
        "cmaes is computing with its own statistics although SciPy is installed: its import of "
        "SciPy failed in this process (a Ctrl-C during the import does this, and the process "
        "goes on). CmaEsSampler(with_margin=True) then proposes differently, in the last bits, "
        "from a process that uses SciPy, so this run will not follow the trajectory of an "
        "uninterrupted one. Stop this process and start it again."
    )


@functools.cache
def _loaded_versions() -> tuple[tuple[str, str], ...]:
    import numpy
    import optuna

    from optuna_checkpoint._version import __version__

    return (
        (_THIS_PACKAGE, __version__),
        ("optuna", optuna.__version__),
        ("numpy", numpy.__version__),
        (_PYTHON, platform.python_version()),
    )


def check_versions(recorded: Mapping[str, str], *, where: str, pickled: bool) -> None:
    """Warn about library versions that differ from those ``recorded`` with a checkpoint.

    Args:
        recorded: The versions stored with the checkpoint (empty for checkpoints written before
            versions were recorded, which are not checked). A library recorded on one side only
            (cmaes, before it was imported) is not compared.
        where: Names the checkpoint in messages, e.g. "the checkpoint of trial 41 in stream
            'main'".
        pickled: Whether the checkpoint holds pickled objects.

    Raises:
        VersionMismatchError: The checkpoint holds pickles written under another Python
            minor version.
    """
    current = library_versions()
    changed = {
        name: (str(old), current[name])
        for name, old in recorded.items()
        if name in current and str(old) != current[name]
    }
    if not changed:
        return
    if pickled and _PYTHON in changed:
        old, new = changed[_PYTHON]
        if _minor(old) != _minor(new):
            raise VersionMismatchError(
                f"{where} holds pickled objects written under Python {old}, and this is Python "
                f"{new}: pickled code does not carry across Python versions. Resume under Python "
                f"{_minor(old)}, or pass start_new_stream=True to CheckpointingSampler to start "
                "the stream again from the sampler as constructed."
            )
    ours = changed.pop(_THIS_PACKAGE, None)
    if ours is not None:
        _logger.info("%s was written by optuna-checkpoint %s; this is %s.", where, *ours)
    if not changed:
        return
    lines = [
        f"  {name} {old} -> {new}: {_CONSEQUENCES[name]}" for name, (old, new) in changed.items()
    ]
    _logger.warning(
        "%s was written under other library versions:\n%s\nThe state is restored exactly, but "
        "the trajectory from here on matches the uninterrupted run only if the sampler's code "
        "behaves the same under these versions. Pin the versions to be sure, or check with "
        "`optuna-checkpoint verify` after the study has run on.",
        where[0].upper() + where[1:],
        "\n".join(lines),
    )


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])
