"""The kill-fuzz tiers select what they promise: every value covered, fixed, and never nothing.

The functions of ``tests/kill_fuzz/tiers.py`` are checked on grids like the suite's; then the
suite's own collection is checked, in a child pytest, so that a change of pytest or of a
parametrisation cannot silently move every kill-fuzz case out of the default run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys
from typing import Any

import pytest

from tests.kill_fuzz import tiers


ROOT = Path(__file__).resolve().parents[1]
SIGNALS = ["SIGKILL", "SIGTERM", "SIGINT"]
SAMPLERS = ["random", "tpe", "cmaes", "cmaes-sep", "cmaes-margin"]
POINTS = ["before_trial", "after_resume", "sample_relative", "inside_commit", "objective"]


def covered_values(cases: list[dict[str, object]], chosen: list[int]) -> set[tuple[str, object]]:
    return {(name, value) for i in chosen for name, value in cases[i].items()}


def test_every_value_of_every_parameter_is_in_the_fast_tier() -> None:
    cases = tiers.grid(point=POINTS, sampler=["random", "tpe", "cmaes"])
    chosen = tiers.fast_cases(cases)
    assert covered_values(cases, chosen) == covered_values(cases, list(range(len(cases))))
    assert tiers.cover_report(cases, chosen) == set()
    # A cover, not the grid: the point is to leave cases to the soak tier.
    assert len(chosen) == len(POINTS) < len(cases)


def test_every_sampler_signal_pair_is_in_the_fast_tier() -> None:
    cases = tiers.grid(sampler=SAMPLERS, sig=SIGNALS, kills=[1, 3])
    chosen = tiers.fast_cases(cases)
    pairs = {(cases[i]["sampler"], cases[i]["sig"]) for i in chosen}
    assert pairs == {(s, g) for s in SAMPLERS for g in SIGNALS}
    assert {cases[i]["kills"] for i in chosen} == {1, 3}
    assert len(chosen) == len(SAMPLERS) * len(SIGNALS)  # the other kill count is soak


def test_without_pairs_every_value_occurs_but_not_every_pair() -> None:
    cases = tiers.grid(sampler=SAMPLERS, sig=SIGNALS)
    chosen = tiers.fast_cases(cases, pairs=False)
    assert {cases[i]["sampler"] for i in chosen} == set(SAMPLERS)
    assert {cases[i]["sig"] for i in chosen} == set(SIGNALS)
    assert len(chosen) == max(len(SAMPLERS), len(SIGNALS))
    assert not tiers.cover_report(cases, chosen, pairs=False)
    assert tiers.cover_report(cases, chosen)  # the pairs it leaves to the soak tier


def test_sampler_storage_and_signal_are_covered_together() -> None:
    cases = tiers.grid(address=["grpc", "journal-file"], sampler=["tpe", "cmaes"], plan=[1, 2])
    chosen = tiers.fast_cases(cases)
    assert {(cases[i]["address"], cases[i]["sampler"]) for i in chosen} == {
        ("grpc", "tpe"),
        ("grpc", "cmaes"),
        ("journal-file", "tpe"),
        ("journal-file", "cmaes"),
    }
    assert tiers.cover_report(cases, chosen) == set()


def test_a_leftover_case_is_reported_uncovered() -> None:
    # The check the tests above rely on can fail.
    cases = tiers.grid(sampler=["tpe", "cmaes"], sig=SIGNALS)
    assert tiers.cover_report(cases, [0]) != set()


def test_the_fast_tier_is_the_same_every_time_and_does_not_follow_the_collection_order() -> None:
    cases = tiers.grid(point=POINTS, sampler=SAMPLERS)
    first = tiers.fast_cases(cases)
    assert tiers.fast_cases(cases) == first
    # The choice among equally good covers is the seed's: another one may choose another.
    others = {tuple(tiers.fast_cases(cases, seed=seed)) for seed in range(20)}
    assert tuple(first) in others and len(others) > 1
    assert all(tiers.cover_report(cases, list(c)) == set() for c in others)


def test_pinned_cases_are_fast_and_a_pin_that_matches_nothing_is_an_error() -> None:
    cases = tiers.grid(point=POINTS, sampler=["random", "tpe", "cmaes"])
    chosen = tiers.fast_cases(cases, pins=[{"point": "inside_commit", "sampler": "cmaes"}])
    assert cases.index({"point": "inside_commit", "sampler": "cmaes"}) in chosen
    assert tiers.cover_report(cases, chosen) == set()
    with pytest.raises(ValueError, match="matches none"):
        tiers.fast_cases(cases, pins=[{"point": "nowhere"}])


def test_one_case_is_always_fast() -> None:
    assert tiers.fast_cases([{"sampler": "tpe"}]) == [0]
    assert tiers.fast_cases([{}]) == [0]


def test_signals_are_named_by_name() -> None:
    import signal

    assert tiers.value_key(signal.SIGINT) == "SIGINT"
    assert tiers.value_key(["a", 1]) == "['a', 1]"
    assert tiers.matches({"sig": "SIGINT"}, {"sig": signal.SIGINT})


def test_the_soak_sample_is_fixed_by_the_seed_and_differs_between_seeds() -> None:
    ids = [f"tests/kill_fuzz/test_x.py::test_y[case{i}]" for i in range(60)]
    sample = tiers.soak_sample(ids, 12, seed=123)
    assert len(sample) == 12 and set(sample) <= set(ids)
    assert tiers.soak_sample(list(reversed(ids)), 12, seed=123) == sample
    assert len({tuple(tiers.soak_sample(ids, 12, seed=s)) for s in range(10)}) == 10
    assert tiers.soak_sample(ids, 100, seed=1) == sorted(ids)
    assert tiers.soak_sample(ids, 0, seed=1) == []


def test_kill_instants_follow_the_seed_and_the_case() -> None:
    assert tiers.case_seed(0, "a") == tiers.case_seed(0, "a")
    assert len({tiers.case_seed(0, "a"), tiers.case_seed(1, "a"), tiers.case_seed(0, "b")}) == 3


# -- the suite's own collection ------------------------------------------------------------------


DUMP_PLUGIN = """
import json
import os

import pytest

from tests.kill_fuzz.tiers import value_key

seen = {"kept": [], "deselected": []}


def record(item):
    callspec = getattr(item, "callspec", None)
    params = {k: str(value_key(v)) for k, v in callspec.params.items()} if callspec else {}
    soak = item.get_closest_marker("soak") is not None
    return {"id": item.nodeid, "soak": soak, "params": params}


def pytest_deselected(items):
    seen["deselected"].extend(record(item) for item in items)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    seen["kept"] = [record(item) for item in items]


def pytest_collection_finish(session):
    with open(os.environ["TIER_DUMP"], "w") as out:
        json.dump(seen, out)
"""


def collect(tmp_path: Path, *args: str) -> dict[str, list[dict[str, Any]]]:
    """What a child pytest collecting ``tests/kill_fuzz`` with ``args`` kept and deselected."""
    (tmp_path / "tier_dump.py").write_text(DUMP_PLUGIN)
    dump = tmp_path / "tiers.json"
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n0", "-p", "tier_dump"]
    result = subprocess.run(
        [*command, "-p", "no:cacheprovider", "tests/kill_fuzz", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "PYTHONPATH": path, "TIER_DUMP": str(dump)},
    )
    assert result.returncode in (0, 5), result.stdout[-3000:] + result.stderr[-3000:]
    found: dict[str, list[dict[str, Any]]] = json.loads(dump.read_text())
    return found


def function_of(node_id: str) -> str:
    return node_id.partition("[")[0]


def test_the_suite_splits_every_kill_fuzz_grid_between_the_tiers(tmp_path: Path) -> None:
    # One collection of every case (-m ''), with a sample of the soak tier kept.
    found = collect(tmp_path, "-m", "", "--fuzz-sample", "5", "--fuzz-seed", "1")
    fast = [case for case in found["kept"] if not case["soak"]]
    sample = [case for case in found["kept"] if case["soak"]]
    soak = sample + found["deselected"]
    assert all(case["soak"] for case in found["deselected"])
    assert fast and len(sample) == 5
    # Every value of every parameter of a parametrised test is in its fast tier, unless the
    # whole test is a soak test.
    grids: dict[str, list[dict[str, Any]]] = {}
    for case in fast + soak:
        if case["params"]:
            grids.setdefault(function_of(case["id"]), []).append(case)
    for function, cases in grids.items():
        kept = [case for case in cases if not case["soak"]]
        if not kept:
            assert "soak" in function.rpartition("::")[2], f"{function} lost its fast tier"
            continue
        every = {(k, v) for case in cases for k, v in case["params"].items()}
        assert every == {(k, v) for case in kept for k, v in case["params"].items()}, function
    # The main grid: every kind of sampler state with every signal, in the default run; every
    # configuration of those samplers with one signal at least.
    random_kills = "test_kill_fuzz.py::test_resume_after_random_kills_matches_uninterrupted_run"
    pairs = {(c["params"]["sampler"], c["params"]["sig"]) for c in fast if random_kills in c["id"]}
    base = {(s, g) for s in ("random", "tpe", "cmaes") for g in ("SIGKILL", "SIGTERM", "SIGINT")}
    assert base <= pairs
    assert len({sampler for sampler, _ in pairs}) == 8
