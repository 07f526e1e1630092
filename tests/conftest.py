"""Fixtures and hooks for the whole suite, and the kill-fuzz tiers (``tests/kill_fuzz/tiers.py``).

* ``--fuzz-seed N`` seeds every random kill instant (the ``kill_rng`` fixture) and the soak
  sample; it defaults to 0, so ``pytest`` is the same run every time. ``--fuzz-seed random``
  takes one from the clock. The seed is printed in the header and reaches the xdist workers.
* Parametrised kill-fuzz tests run a covering set of their cases by default; every other case is
  marked ``soak`` and runs under ``pytest -m soak``. ``--fuzz-sample K`` keeps K of the soak
  cases, chosen by the seed (``pytest -m soak --fuzz-seed N --fuzz-sample K``).
* A failing kill-fuzz case prints the command that runs it again with the same kill instants.
* ``-n auto`` starts two xdist workers per CPU; ``--dist loadgroup`` keeps each
  ``xdist_group`` (the tests that import torch) on one worker; ``tmp_path`` is on tmpfs.
"""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Sequence
import json
import os
from pathlib import Path
import random
import shlex
import shutil
import tempfile
import time
from typing import Any

import optuna
import pytest

from tests.kill_fuzz import tiers


KILL_FUZZ = Path(__file__).parent / "kill_fuzz"
REPRODUCE = "kill-fuzz: reproduce"

_SEED = pytest.StashKey[int]()
_FAST = pytest.StashKey[dict[str, set[str]]]()  # function node id -> ids of its fast cases
_NODE_ID = pytest.StashKey[str]()  # as collected, before xdist adds "@group" for loadgroup


@pytest.fixture(autouse=True)
def _quiet_optuna() -> Iterator[None]:
    """Keep Optuna's per-trial INFO lines out of the test output, and show caplog Optuna's tree.

    The library logs in Optuna's logger tree, whose root does not propagate: without
    propagation, pytest's ``caplog`` (a handler on the root logger) would see none of its lines.
    """
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.logging.enable_propagation()
    yield
    optuna.logging.disable_propagation()
    optuna.logging.set_verbosity(previous)


@pytest.fixture
def kill_rng(request: pytest.FixtureRequest) -> random.Random:
    """The generator of this case's random kill instants: ``--fuzz-seed`` and the node id."""
    return random.Random(tiers.case_seed(fuzz_seed(request.config), node_id(request.node)))


def fuzz_seed(config: pytest.Config) -> int:
    """The run's ``--fuzz-seed`` (on an xdist worker, the one the controller resolved)."""
    return config.stash[_SEED]


def node_id(item: pytest.Item) -> str:
    """The item's node id as collected (what a reproduce command selects it with)."""
    return item.stash.get(_NODE_ID, item.nodeid)


# -- options, seed and workers -------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kill-fuzz", "kill-fuzz tiers (tests/kill_fuzz/tiers.py)")
    group.addoption(
        "--fuzz-seed",
        default=None,
        metavar="N",
        help=f"seed of the kill-fuzz kill instants and of --fuzz-sample (default "
        f"{tiers.DEFAULT_FUZZ_SEED}, fixed; 'random': one from the clock, printed)",
    )
    group.addoption(
        "--fuzz-sample",
        type=int,
        default=None,
        metavar="K",
        help="keep only K soak-tier kill-fuzz cases, chosen by --fuzz-seed (with -m soak)",
    )


def _resolve_seed(config: pytest.Config) -> int:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "fuzz_seed" in workerinput:
        return int(workerinput["fuzz_seed"])
    value = config.getoption("fuzz_seed")
    if value is None:
        return tiers.DEFAULT_FUZZ_SEED
    if value == "random":
        return time.time_ns() % 2**31
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(
            f"--fuzz-seed takes an integer or 'random', not {value!r}"
        ) from None


TMPFS_ENV = "OPTUNA_CHECKPOINT_TEST_TMPFS"
TMPFS = Path("/dev/shm")


def _tmpfs_temp_root(config: pytest.Config) -> Path | None:
    """Where ``tmp_path`` goes: tmpfs, unless the run chose otherwise or there is none.

    The kill-fuzz children commit hundreds of SQLite transactions; on a disk each waits for an
    fsync. A killed process loses nothing a tmpfs kept (only a machine's crash would, which no
    test makes), so the default run uses it; ``OPTUNA_CHECKPOINT_TEST_TMPFS=0`` keeps the
    system's temp folder (CI runs its soak sample so, on the disk). Workers take the folder the
    controller chose.
    """
    if getattr(config, "workerinput", None) is not None or config.option.basetemp:
        return None
    if os.environ.get(TMPFS_ENV) == "0" or os.environ.get("PYTEST_DEBUG_TEMPROOT"):
        return None
    try:
        mounts = Path("/proc/mounts").read_text().split("\n")
        stats = os.statvfs(TMPFS)
    except OSError:
        return None
    is_tmpfs = any(line.split()[1:3] == [str(TMPFS), "tmpfs"] for line in mounts if line)
    if not is_tmpfs or not os.access(TMPFS, os.W_OK) or stats.f_bavail * stats.f_frsize < 2**31:
        return None
    return TMPFS


def pytest_configure(config: pytest.Config) -> None:
    root = _tmpfs_temp_root(config)
    if root is not None:
        # pytest's documented variable; read when the first temporary folder is made.
        os.environ["PYTEST_DEBUG_TEMPROOT"] = str(root)
    config.stash[_SEED] = _resolve_seed(config)
    config.stash[_FAST] = {}
    sample = config.getoption("fuzz_sample")
    if sample is not None and sample < 0:
        raise pytest.UsageError("--fuzz-sample takes a count of cases, 0 or more")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Give each xdist worker the seed the controller resolved (``random`` is drawn once),
    and the folder where it tells the controller the ``xdist_group`` of its items."""
    node.workerinput["fuzz_seed"] = fuzz_seed(node.config)
    node.workerinput["xdist_groups"] = str(_groups_folder(node.config))


# pytest-xdist 3.8 groups ``xdist_group`` items by renaming them (``item._nodeid``), which
# pytest 9.2 no longer reads (pytest-xdist issue 1386): grouped tests were spread over every
# worker. Each worker writes the groups of its items to a file instead, and the controller's
# scheduler (LoadGroupScheduling, which also still honours a renamed item) reads them.
_GROUPS = pytest.StashKey[Path]()


def _groups_folder(config: pytest.Config) -> Path:
    if _GROUPS not in config.stash:
        config.stash[_GROUPS] = Path(tempfile.mkdtemp(prefix="pytest-xdist-groups-"))
        config.add_cleanup(lambda: shutil.rmtree(config.stash[_GROUPS], ignore_errors=True))
    return config.stash[_GROUPS]


def _write_groups(config: pytest.Config, items: Sequence[pytest.Item]) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or "xdist_groups" not in workerinput:
        return
    groups = {
        item.nodeid: "_".join(sorted({str(m.args[0]) for m in marks}))
        for item in items
        if (marks := list(item.iter_markers("xdist_group")))
    }
    folder = Path(workerinput["xdist_groups"])
    partial = folder / f"{workerinput['workerid']}.partial"
    partial.write_text(json.dumps(groups))
    partial.replace(folder / f"{workerinput['workerid']}.json")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    folder = _groups_folder(config)

    class MarkedGroupScheduling(LoadGroupScheduling):  # type: ignore[misc]
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            scope = str(super()._split_scope(nodeid))
            if scope != nodeid:  # renamed by xdist, as before pytest 9.2
                return scope
            if self.groups is None:  # every worker has collected by the time it schedules
                self.groups = {}
                for path in sorted(folder.glob("*.json")):
                    self.groups.update(json.loads(path.read_text()))
            return self.groups.get(nodeid, nodeid)

    return MarkedGroupScheduling(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Two workers per CPU, at most 8: the tests mostly wait on their child processes."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return min(8, 2 * cpus)


def pytest_report_header(config: pytest.Config) -> list[str]:
    sample = config.getoption("fuzz_sample")
    temp_root = os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir()
    return [
        f"kill-fuzz: --fuzz-seed {fuzz_seed(config)}"
        + ("" if sample is None else f", --fuzz-sample {sample} (soak cases kept)")
        + "; default tier: a covering sample of each kill-fuzz grid, the rest is -m soak",
        f"tmp_path under {temp_root} ({TMPFS_ENV}=0: the system's temp folder)",
    ]


# -- tiers ---------------------------------------------------------------------------------------


def _tiered(node: pytest.Item | Any) -> bool:
    """Kill-fuzz tests, and any test that pins fast cases, have their grid split in tiers."""
    path = Path(node.path)
    return path.is_relative_to(KILL_FUZZ) or node.get_closest_marker("fast_tier") is not None


@pytest.hookimpl(wrapper=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> Iterator[None]:
    """Once every parametrisation of a function is known, choose its fast cases."""
    result = yield
    definition = metafunc.definition
    calls: Sequence[Any] = metafunc._calls  # every case, fixture params included
    if calls and _tiered(definition) and definition.get_closest_marker("soak") is None:
        cases = [{name: tiers.value_key(v) for name, v in c.params.items()} for c in calls]
        marks = list(definition.iter_markers("fast_tier"))
        pins = [pin for mark in marks for pin in mark.args]
        pairs = all(mark.kwargs.get("pairs", True) for mark in marks)
        fast = tiers.fast_cases(cases, pins=pins, pairs=pairs)
        metafunc.config.stash[_FAST][definition.nodeid] = {calls[i].id for i in fast}
    return result


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the cases outside the fast tier ``soak``; keep a sample of them if asked.

    Runs before ``-m`` and ``-k`` deselect, and before xdist renames grouped items.
    """
    fast = config.stash[_FAST]
    for item in items:
        item.stash[_NODE_ID] = item.nodeid
        callspec = getattr(item, "callspec", None)
        function = f"{item.parent.nodeid}::{getattr(item, 'originalname', item.name)}"
        if callspec is not None and function in fast and callspec.id not in fast[function]:
            item.add_marker(pytest.mark.soak)
    sample = config.getoption("fuzz_sample")
    if sample is not None:
        soak = [item.nodeid for item in items if item.get_closest_marker("soak") is not None]
        kept = set(tiers.soak_sample(soak, sample, fuzz_seed(config)))
        dropped = [i for i in items if i.get_closest_marker("soak") and i.nodeid not in kept]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            gone = set(map(id, dropped))
            items[:] = [item for item in items if id(item) not in gone]


@pytest.hookimpl(tryfirst=True)  # before xdist tells the controller it has collected
def pytest_collection_finish(session: pytest.Session) -> None:
    """Note the items' xdist groups; start the kill-fuzz zygote if kill-fuzz cases will run."""
    _write_groups(session.config, session.items)
    if session.config.option.collectonly:
        return
    if any(Path(item.path).is_relative_to(KILL_FUZZ) for item in session.items):
        from tests.kill_fuzz.harness import warm_up_zygote

        warm_up_zygote()


# -- reproducing a failure -----------------------------------------------------------------------


def reproduce_command(config: pytest.Config, item_id: str) -> str:
    """The command that runs one case again, alone, with the same seed (so the same kills)."""
    return (
        f"pytest -n0 -p no:cacheprovider -m '' --fuzz-seed {fuzz_seed(config)} "
        f"{shlex.quote(item_id)}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and Path(item.path).is_relative_to(KILL_FUZZ):
        report.sections.append((REPRODUCE, reproduce_command(item.config, node_id(item))))
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    commands = [
        content
        for key in ("failed", "error")
        for report in terminalreporter.stats.get(key, [])
        for title, content in getattr(report, "sections", [])
        if title == REPRODUCE
    ]
    if not commands:
        return
    terminalreporter.write_sep("=", REPRODUCE)
    for command in dict.fromkeys(commands):
        terminalreporter.write_line(command)
    sample = config.getoption("fuzz_sample")
    if sample is not None:
        terminalreporter.write_line(
            f"the whole sample: pytest -m soak --fuzz-seed {fuzz_seed(config)} "
            f"--fuzz-sample {sample} -p no:cacheprovider"
        )


from tests.servers import database_url  # noqa: E402, F401 - fixtures for every test module
from tests.servers import mysql_url  # noqa: E402, F401
from tests.servers import postgres_url  # noqa: E402, F401
from tests.servers import redis_url  # noqa: E402, F401
