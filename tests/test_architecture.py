"""The package's layering, read from its source: no import cycles, imports go down, small parts.

Every module under ``src/optuna_checkpoint`` is parsed with :mod:`ast` (nothing is imported), and
every import in it counts: at module level, inside functions, under ``if TYPE_CHECKING:``,
absolute and relative, ``import a.b`` and ``from a import b`` (where ``b`` is a submodule, that
submodule is what is imported), and ``importlib.import_module("...")`` with a literal name.
Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``; those implicit imports are not
counted (every module would then import the public ``__init__``, which imports everything), but
an explicit import of a package (``from optuna_checkpoint.stores import Checkpoint``) is an
import of its ``__init__``.

The checking functions take plain data (module names, import edges, source text), and the tests
at the end feed them a synthetic package with a cycle, an upward import and the rest, so that
each check is shown to fail when it should.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "optuna_checkpoint"
SRC = ROOT / "src" / PACKAGE

# The layers, bottom to top (docs/design.md, "Architecture"). A module may import from its own
# layer or a lower one. An entry covers the module or subpackage of that name and everything under
# it, except PACKAGE itself, which covers only the package's own __init__ (the public API). Every
# module must be covered by exactly one entry: place a new module here when adding it.
LAYERS: tuple[tuple[str, ...], ...] = (
    (f"{PACKAGE}.exceptions", f"{PACKAGE}._faults", f"{PACKAGE}._logging", f"{PACKAGE}._version"),
    (f"{PACKAGE}.study",),
    (f"{PACKAGE}.stores",),
    (f"{PACKAGE}.state",),  # with state.adapters
    (f"{PACKAGE}.attach",),
    (f"{PACKAGE}.resume",),
    (f"{PACKAGE}.record",),
    (f"{PACKAGE}.parallel",),
    (f"{PACKAGE}._pruner",),
    (f"{PACKAGE}._sampler",),
    (f"{PACKAGE}.tools",),
    (PACKAGE,),
    (f"{PACKAGE}.cli", f"{PACKAGE}.demo"),
)
# The clients on the top layer are held to less than "anything lower": they import the public
# names (the package itself, and the public module that defines its errors), the tools, and the
# modules of their own package, never another client nor the internals.
CLIENTS = (f"{PACKAGE}.cli", f"{PACKAGE}.demo")
CLIENT_MAY_IMPORT = (PACKAGE, f"{PACKAGE}.exceptions", f"{PACKAGE}.tools")

MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 350


@dataclass(frozen=True)
class Import:
    """One import statement's edge: ``importer`` imports ``target`` at ``line``."""

    importer: str
    target: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} (line {self.line}) imports {self.target}"


# ---------------------------------------------------------------- reading the source


def module_name(path: Path, src: Path = SRC, package: str = PACKAGE) -> str:
    """The dotted name of the module at ``path`` (a package's name for its ``__init__.py``)."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def package_sources(src: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(p, src, package): p for p in sorted(src.rglob("*.py"))}


def _resolve(name: str, modules: Iterable[str]) -> str:
    """``name``, or the module it names an attribute of (``a.b.f`` -> ``a.b``) if not a module."""
    known = set(modules)
    candidate = name
    while candidate not in known and "." in candidate:
        candidate = candidate.rsplit(".", 1)[0]
    return candidate if candidate in known else name


def imports_in(
    module: str,
    source: str,
    modules: Iterable[str],
    *,
    is_package: bool = False,
    package: str = PACKAGE,
) -> list[Import]:
    """Every import of a module of ``package`` that ``source`` makes, wherever it stands.

    ``modules`` are the package's module names, to tell ``from a import b`` of a submodule ``b``
    from that of a name defined in ``a``. ``is_package``: ``source`` is a package's ``__init__``,
    the base of its relative imports.
    """
    known = set(modules)
    found: list[Import] = []

    def add(target: str, line: int) -> None:
        if target == package or target.startswith(package + "."):
            found.append(Import(module, target, line))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                add(submodule if submodule in known else _resolve(origin, known), node.lineno)
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "import_module")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            add(_resolve(node.args[0].value, known), node.lineno)
    return found


def package_imports(src: Path = SRC, package: str = PACKAGE) -> list[Import]:
    """Every import, between modules of the package, that the package's source makes."""
    sources = package_sources(src, package)
    found = []
    for name, path in sources.items():
        found += imports_in(
            name, path.read_text(), sources, is_package=path.name == "__init__.py", package=package
        )
    return found


# ---------------------------------------------------------------- the checks


@dataclass(frozen=True)
class Knot:
    """Modules that import each other in a circle: one cycle spelled out, and all their imports."""

    cycle: list[Import]
    imports: list[Import]

    def __str__(self) -> str:
        path = " -> ".join(
            [self.cycle[0].importer, *(f"{i.target} (line {i.line})" for i in self.cycle)]
        )
        among = "".join(f"\n    {imp}" for imp in self.imports)
        return f"cycle {path}; every import among its modules:{among}"


def find_cycles(imports: Iterable[Import]) -> list[Knot]:
    """One knot for each group of modules that import each other in a circle.

    Tarjan's strongly connected components; a component of several modules (or one importing
    itself) holds a cycle, spelled out import by import from its first module, and the imports
    between its modules are the ones to look at to untie it.
    """
    imports = list(imports)
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports:
        edges.setdefault(imp.importer, {}).setdefault(imp.target, imp)
        edges.setdefault(imp.target, {})

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the number of modules
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)

    knots = []
    for component in components:
        if len(component) == 1 and component[0] not in edges[component[0]]:
            continue
        members = set(component)
        among = [i for i in imports if i.importer in members and i.target in members]
        knots.append(Knot(_cycle_within(component, edges), sorted(among, key=str)))
    return sorted(knots, key=lambda knot: knot.cycle[0].importer)


def _cycle_within(
    component: Sequence[str], edges: Mapping[str, Mapping[str, Import]]
) -> list[Import]:
    """A shortest cycle through the component's first module, staying inside the component."""
    members = set(component)
    start = component[0]
    came_by: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target, imp in sorted(edges[node].items()):
                if target not in members:
                    continue
                if target == start:
                    path = [imp]
                    while path[0].importer != start:
                        path.insert(0, came_by[path[0].importer])
                    return path
                if target not in came_by:
                    came_by[target] = imp
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle in the strongly connected component {component}")


def _covers(entry: str, module: str, package: str) -> bool:
    if entry == package:
        return module == package
    return module == entry or module.startswith(entry + ".")


def layer_of(
    module: str, layers: Sequence[Sequence[str]] = LAYERS, package: str = PACKAGE
) -> int | None:
    """The index in ``layers`` of the one entry covering ``module`` (``None``: none or several)."""
    found = {n for n, entries in enumerate(layers) for e in entries if _covers(e, module, package)}
    return found.pop() if len(found) == 1 else None


def placement_problems(
    modules: Iterable[str], layers: Sequence[Sequence[str]] = LAYERS, package: str = PACKAGE
) -> list[str]:
    """Modules no layer (or more than one) covers, and table entries that cover no module."""
    modules = sorted(modules)
    problems = []
    for module in modules:
        covering = [e for entries in layers for e in entries if _covers(e, module, package)]
        if len(covering) != 1:
            where = f"covered by {covering}" if covering else "in no layer"
            problems.append(f"{module}: {where}")
    for entries in layers:
        for entry in entries:
            if not any(_covers(entry, module, package) for module in modules):
                problems.append(f"layer entry {entry}: no such module")
    return problems


def layer_violations(
    imports: Iterable[Import],
    layers: Sequence[Sequence[str]] = LAYERS,
    clients: Sequence[str] = CLIENTS,
    client_may_import: Sequence[str] = CLIENT_MAY_IMPORT,
    package: str = PACKAGE,
) -> list[str]:
    """Imports that go up a layer, of an unplaced module, or from a client to what it may not."""
    problems = []
    for imp in imports:
        source = layer_of(imp.importer, layers, package)
        target = layer_of(imp.target, layers, package)
        if source is None or target is None:
            problems.append(f"{imp}: a module in no layer")
        elif target > source:
            problems.append(f"{imp}: up from layer {source} to layer {target}")
        client = next((c for c in clients if _covers(c, imp.importer, package)), None)
        if client is not None and not any(
            _covers(allowed, imp.target, package) for allowed in (client, *client_may_import)
        ):
            problems.append(
                f"{imp}: {client} may import only {sorted(client_may_import)} and its own modules"
            )
    return sorted(set(problems))


def size_problems(
    module: str,
    source: str,
    max_module_lines: int = MAX_MODULE_LINES,
    max_class_lines: int = MAX_CLASS_LINES,
) -> list[str]:
    """The module if it is longer than allowed, and each class in it that is."""
    problems = []
    lines = len(source.splitlines())
    if lines > max_module_lines:
        problems.append(f"{module}: {lines} lines (at most {max_module_lines})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - first + 1
            if length > max_class_lines:
                problems.append(
                    f"{module}: class {node.name} (line {node.lineno}) has {length} lines"
                    f" (at most {max_class_lines})"
                )
    return problems


def init_problems(
    package_name: str, source: str, modules: Iterable[str], package: str = PACKAGE
) -> list[str]:
    """Statements of a package's ``__init__`` beyond a docstring, ``__all__`` and own imports.

    Allowed: the docstring, ``from __future__ import ...``, an assignment to ``__all__``, and
    imports of the package's own modules (which includes importing them only for what importing
    does, as ``state/adapters/__init__.py`` does to register the adapters).
    """
    targets: dict[int, list[str]] = {}
    for imp in imports_in(package_name, source, modules, is_package=True, package=package):
        targets.setdefault(imp.line, []).append(imp.target)
    problems = []
    for position, node in enumerate(ast.parse(source).body):
        if (
            position == 0
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, ast.Assign | ast.AnnAssign):
            names = node.targets if isinstance(node, ast.Assign) else [node.target]
            if all(isinstance(t, ast.Name) and t.id == "__all__" for t in names):
                continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            own = [t for t in targets.get(node.lineno, []) if t.startswith(package_name + ".")]
            if len(own) == len(node.names):
                continue
        problems.append(
            f"{package_name}/__init__.py line {node.lineno}: {ast.unparse(node).splitlines()[0]}"
        )
    return problems


# ---------------------------------------------------------------- the package


def test_no_import_cycles() -> None:
    knots = find_cycles(package_imports())
    assert knots == [], "import cycles:\n" + "\n".join(map(str, knots))


def test_every_module_is_in_exactly_one_layer() -> None:
    problems = placement_problems(package_sources())
    assert problems == [], "place these in LAYERS of tests/test_architecture.py:\n" + "\n".join(
        problems
    )


def test_imports_go_only_to_the_same_or_a_lower_layer() -> None:
    problems = layer_violations(package_imports())
    assert problems == [], "imports against the layers:\n" + "\n".join(problems)


def test_modules_and_classes_are_small() -> None:
    problems = [
        problem
        for name, path in package_sources().items()
        for problem in size_problems(name, path.read_text())
    ]
    assert problems == [], "too long, split by job:\n" + "\n".join(problems)


def test_package_inits_hold_no_code() -> None:
    sources = package_sources()
    problems = [
        problem
        for name, path in sources.items()
        if path.name == "__init__.py"
        for problem in init_problems(name, path.read_text(), sources)
    ]
    assert problems == [], "code in a package's __init__.py:\n" + "\n".join(problems)


def test_the_scan_sees_the_package() -> None:
    # Guards the checks above against passing vacuously (a wrong SRC, a parser that finds nothing).
    sources = package_sources()
    assert f"{PACKAGE}._sampler" in sources
    assert f"{PACKAGE}.state.adapters" in sources
    edges = {(imp.importer, imp.target) for imp in package_imports()}
    assert (f"{PACKAGE}._sampler", f"{PACKAGE}.resume._resumer") in edges
    # Under TYPE_CHECKING, and a submodule imported by "from package import submodule".
    assert (f"{PACKAGE}.attach._attacher", f"{PACKAGE}.state._packing") in edges
    assert (f"{PACKAGE}.state._packing", f"{PACKAGE}.state._codec") in edges


# ---------------------------------------------------------------- the checks, on a fake package

FAKE = "pkg"
FAKE_MODULES = ["pkg", "pkg.low", "pkg.mid", "pkg.mid.a", "pkg.mid.b", "pkg.high", "pkg.app"]
FAKE_LAYERS = (("pkg.low",), ("pkg.mid",), ("pkg.high",), ("pkg",), ("pkg.app",))


def _fake_imports(module: str, source: str, is_package: bool = False) -> list[Import]:
    return imports_in(module, source, FAKE_MODULES, is_package=is_package, package=FAKE)


def test_imports_are_found_wherever_they_stand() -> None:
    source = "\n".join(
        [
            "from __future__ import annotations",
            "import os",
            "import pkg.low",
            "from typing import TYPE_CHECKING",
            "if TYPE_CHECKING:",
            "    from pkg.high import Thing",
            "def f():",
            "    from . import b",
            "    from .. import low",
            "    from ..low import helper",
            "    import importlib",
            "    importlib.import_module('pkg.app')",
            "from pkg import mid",
        ]
    )
    found = {(imp.target, imp.line) for imp in _fake_imports("pkg.mid.a", source)}
    assert found == {
        ("pkg.low", 3),
        ("pkg.high", 6),
        ("pkg.mid.b", 8),  # relative, and a submodule
        ("pkg.low", 9),
        ("pkg.low", 10),
        ("pkg.app", 12),
        ("pkg.mid", 13),  # a package's __init__
    }
    # In a package's __init__, "." is the package itself.
    assert {i.target for i in _fake_imports("pkg.mid", "from . import a", True)} == {"pkg.mid.a"}


def test_a_cycle_is_found_and_spelled_out() -> None:
    imports = [
        Import("pkg.mid.a", "pkg.mid.b", 3),
        Import("pkg.mid.b", "pkg.high", 7),
        Import("pkg.high", "pkg.mid.a", 9),
        Import("pkg.high", "pkg.low", 2),
        Import("pkg.app", "pkg", 1),
    ]
    (knot,) = find_cycles(imports)
    assert [(imp.importer, imp.target) for imp in knot.cycle] == [
        ("pkg.high", "pkg.mid.a"),
        ("pkg.mid.a", "pkg.mid.b"),
        ("pkg.mid.b", "pkg.high"),
    ]
    assert set(knot.imports) == set(imports[:3])  # not pkg.high -> pkg.low, outside the knot
    assert "pkg.mid.b (line 7) imports pkg.high" in str(knot)
    itself = Import("pkg.low", "pkg.low", 1)
    assert find_cycles([itself]) == [Knot([itself], [itself])]
    assert find_cycles(imports[:2] + imports[3:]) == []


def test_an_upward_import_is_found() -> None:
    problems = layer_violations(
        [
            Import("pkg.low", "pkg.mid.a", 4),  # up
            Import("pkg.mid.a", "pkg.mid.b", 5),  # same layer
            Import("pkg.high", "pkg.low", 6),  # down
            Import("pkg.app", "pkg", 7),  # a client, to the public names
            Import("pkg.app", "pkg.high", 8),  # a client, past the public names
            Import("pkg.mid.b", "pkg.nowhere", 9),  # to a module in no layer
        ],
        FAKE_LAYERS,
        clients=("pkg.app",),
        client_may_import=("pkg",),
        package=FAKE,
    )
    assert problems == [
        "pkg.app (line 8) imports pkg.high: pkg.app may import only ['pkg'] and its own modules",
        "pkg.low (line 4) imports pkg.mid.a: up from layer 0 to layer 1",
        "pkg.mid.b (line 9) imports pkg.nowhere: a module in no layer",
    ]


def test_an_unplaced_module_and_a_stale_entry_are_found() -> None:
    assert placement_problems(FAKE_MODULES, FAKE_LAYERS, FAKE) == []
    assert placement_problems([*FAKE_MODULES, "pkg.new"], FAKE_LAYERS, FAKE) == [
        "pkg.new: in no layer"
    ]
    assert placement_problems(FAKE_MODULES, (*FAKE_LAYERS, ("pkg.gone",)), FAKE) == [
        "layer entry pkg.gone: no such module"
    ]


def test_a_long_module_and_a_long_class_are_found() -> None:
    source = "\n".join(["x = 1", "@decorator", "class Long:", *["    y = 1"] * 5, "z = 2"])
    assert size_problems("pkg.low", source, 100, 10) == []
    assert size_problems("pkg.low", source, 8, 5) == [
        "pkg.low: 9 lines (at most 8)",
        "pkg.low: class Long (line 3) has 7 lines (at most 5)",
    ]


def test_code_in_an_init_is_found() -> None:
    clean = '"""Doc."""\nfrom pkg.mid import a  # registers\n'
    clean += 'from pkg.mid.b import B\n__all__ = ["B"]\n'
    assert init_problems("pkg.mid", clean, FAKE_MODULES, FAKE) == []
    dirty = clean + "from pkg.low import helper\nhelper()\n"
    assert init_problems("pkg.mid", dirty, FAKE_MODULES, FAKE) == [
        "pkg.mid/__init__.py line 5: from pkg.low import helper",
        "pkg.mid/__init__.py line 6: helper()",
    ]
