"""Named studies for the coverage kill-fuzz: a sampler, optionally its own objective and pruner.

``child.py`` runs the scenario named by ``config["scenario"]``. Each area of coverage keeps its
scenarios in a module of its own (``scenarios_*.py`` in this folder) that defines
``SCENARIOS: dict[str, Scenario]``; :func:`scenario` finds them all. A scenario without an
objective runs the child's standard one.

Imported by ``child.py`` (run as a script, from this folder) and by the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
import importlib
from pathlib import Path

import optuna


Objective = Callable[[optuna.Trial, float], "float | Sequence[float]"]


@dataclass(frozen=True)
class Scenario:
    """One study configuration to kill and resume.

    Attributes:
        sampler: Builds the (unwrapped) sampler from the run's seed.
        objective: ``objective(trial, delay)``; ``None`` for the child's standard objective.
        directions: The study's directions; one minimised objective by default.
        pruner: Builds the (unwrapped) pruner; ``None`` for Optuna's default.
        catch: Exceptions ``study.optimize`` catches (the trial then FAILs genuinely).
        preload: Modules the run imports anyway and slowly (torch): the kill-fuzz zygote
            imports them once, before it forks the runs of this scenario.
    """

    sampler: Callable[[int | None], optuna.samplers.BaseSampler]
    objective: Objective | None = None
    directions: Sequence[str] = ("minimize",)
    pruner: Callable[[], optuna.pruners.BasePruner] | None = None
    catch: tuple[type[Exception], ...] = field(default=())
    preload: tuple[str, ...] = ()


def all_scenarios() -> dict[str, Scenario]:
    """Every scenario of every ``scenarios_*.py`` module in this folder."""
    found: dict[str, Scenario] = {}
    package = __name__.rpartition(".")[0]
    for path in sorted(Path(__file__).parent.glob("scenarios_*.py")):
        module_name = f"{package}.{path.stem}" if package else path.stem
        module = importlib.import_module(module_name)
        for name, entry in module.SCENARIOS.items():
            assert name not in found, f"scenario {name!r} is defined twice"
            found[name] = entry
    return found


def scenario(name: str) -> Scenario:
    """The scenario called ``name``."""
    return all_scenarios()[name]
