"""How long does a restarted process take to resume, against the size of the study?

Method: one study is built in steps up to each size in --sizes (100, 1,000 and 10,000 trials),
each step a fresh process that continues the study with ``CheckpointingSampler(RandomSampler)``,
as a user's restarted script would: every trial has its real checkpoint row. (RandomSampler keeps
the build fast, and its first proposal costs the same with any history, so the difference between
the arms is the resume. The build's commits skip the wait for the disk, which changes when they
reach it, not what they write.) At each size, fresh processes, each on its own copy of the
database (a proposal leaves a RUNNING trial behind), time the start-up of the study up to its
first proposal: constructing the sampler, ``optuna.load_study``, ``study.ask()`` and the two
``suggest_float`` calls. Imports are not timed, including those Optuna's storage makes on first
use. Plain ``RandomSampler(seed)`` and the wrapped one alternate in ABBA order over --repeats
pairs; reported are each arm's median, the median and min..max of the per-pair differences
wrapped - plain, and the median per-pair ratio. The script checks that every wrapped process
proposes what an uninterrupted run (computed in memory) proposes at that trial, and counts the
plain processes that start their sequence again, proposing trial 0's point.

Run from the repository root, in the project's virtualenv:

    python benchmarks/resume_time.py                     # 100, 1000, 10000 trials, 5 pairs
    python benchmarks/resume_time.py --quick             # smoke test
    python benchmarks/resume_time.py --sizes 100 1000 --repeats 9 \\
        --storage postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time
from typing import Any

import sqlalchemy as sa

from _common import STUDY
from _common import Databases
from _common import abba
from _common import make_sampler
from _common import objective
from _common import parse_args
from _common import print_table
from _common import progress
from _common import quiet
from _common import run_child
from _common import spread


def build(spec: dict[str, Any]) -> dict[str, Any]:
    """Continue the wrapped study up to ``size`` trials; return what a resume must propose."""
    import optuna

    quiet()
    storage: Any = spec["storage"]
    backend = sa.make_url(storage).get_backend_name()
    if backend == "sqlite":

        @sa.event.listens_for(sa.engine.Engine, "connect")
        def _no_sync(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA synchronous = OFF")

    elif backend == "postgresql":
        options = {"connect_args": {"options": "-c synchronous_commit=off"}}
        storage = optuna.storages.RDBStorage(storage, engine_kwargs=options)
    sampler = make_sampler("random", spec["seed"], wrapped=True)
    study = optuna.create_study(
        study_name=STUDY, storage=storage, sampler=sampler, load_if_exists=True
    )
    study.optimize(objective, n_trials=spec["size"] - len(study.trials))
    # The uninterrupted run, in memory: the build itself resumed at every step, so check it too.
    reference = optuna.create_study(sampler=make_sampler("random", spec["seed"], wrapped=False))
    reference.optimize(objective, n_trials=spec["size"] + 1)
    built = [t.params for t in study.get_trials(deepcopy=False)]
    return {
        "exact": built == [t.params for t in reference.trials[: spec["size"]]],
        "next": reference.trials[-1].params,
        "first": reference.trials[0].params,
    }


def resume(spec: dict[str, Any]) -> dict[str, Any]:
    """Time a fresh process from after its imports to the first trial's proposal."""
    import gc

    import optuna

    quiet()
    # Imports are not timed, in both arms: the library's, and those Optuna's storage makes on
    # first use (Alembic, the SQL dialect and driver: 0.3 to 0.8 s, which would only add noise).
    importlib.import_module("optuna_checkpoint")
    optuna.storages.RDBStorage("sqlite://")
    sa.create_engine(spec["storage"]).dispose()
    # A full collection inside the timed window would traverse everything the imports left, in
    # whichever arm crosses the threshold first; frozen objects are not traversed again.
    gc.collect()
    gc.freeze()
    start = time.perf_counter()
    sampler = make_sampler("random", spec["seed"], spec["wrapped"])
    study = optuna.load_study(study_name=STUDY, storage=spec["storage"], sampler=sampler)
    trial = study.ask()
    params = {name: trial.suggest_float(name, -10.0, 10.0) for name in ("x", "y")}
    return {"s": time.perf_counter() - start, "params": params}


def main() -> None:
    """Build the study size by size, time the resumes, print the table."""

    def sizes(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--sizes", type=int, nargs="+", help="study sizes (100 1000 10000)")

    args = parse_args(
        __doc__ or "",
        defaults={"sizes": [100, 1000, 10000], "repeats": 5},
        quick={"sizes": [20, 100], "repeats": 2},
        extra=sizes,
    )
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps((build if spec["task"] == "build" else resume)(spec)))
        return
    rows, runs, plain_first, wrapped_next = [], [], 0, 0
    with Databases(args.storage) as dbs:
        source = dbs.create()
        for size in sorted(set(args.sizes)):
            start = time.perf_counter()
            spec = {"task": "build", "storage": source, "seed": args.seed, "size": size}
            built = run_child(__file__, spec)
            progress(f"built {size} trials in {time.perf_counter() - start:.0f} s")
            arms: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
            for _, _, order in abba([str(size)], args.repeats):
                for wrapped in order:
                    url = dbs.create(copy_of=source)
                    spec = {"task": "resume", "storage": url, "seed": args.seed}
                    result = run_child(__file__, {**spec, "wrapped": wrapped})
                    dbs.drop(url)
                    arms[wrapped].append(result)
                    progress(
                        f"{size} trials {'wrapped' if wrapped else 'plain'}: "
                        f"{result['s'] * 1e3:.1f} ms"
                    )
            pairs = list(zip(arms[False], arms[True], strict=True))
            delta, delta_range = spread([(w["s"] - p["s"]) * 1e3 for p, w in pairs], "{:+.1f}")
            ratio = statistics.median(w["s"] / p["s"] for p, w in pairs)
            exact = built["exact"] and all(w["params"] == built["next"] for w in arms[True])
            plain_first += sum(p["params"] == built["first"] for p in arms[False])
            wrapped_next += sum(w["params"] == built["next"] for w in arms[True])
            runs += [*arms[False], *arms[True]]
            rows.append(
                [
                    f"{size:,}",
                    f"{statistics.median(p['s'] for p in arms[False]) * 1e3:.1f}",
                    f"{statistics.median(w['s'] for w in arms[True]) * 1e3:.1f}",
                    f"{delta:+.1f}",
                    delta_range,
                    f"{ratio:.2f}",
                    "yes" if exact else "NO",
                ]
            )
    print_table(
        f"First proposal of a restarted process, {args.repeats} ABBA pairs per size",
        dbs,
        ["trials", "plain ms", "wrapped ms", "wrapped - plain", "min..max", "ratio", "exact"],
        rows,
        timed=runs,
    )
    total = len(runs) // 2
    print(
        f"\nThe wrapped process proposed the uninterrupted run's next point in {wrapped_next} of "
        f"{total} processes; the plain one proposed trial 0's point again in {plain_first} of "
        f"{total}."
    )


if __name__ == "__main__":
    main()
