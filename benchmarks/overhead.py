"""How much wall time per trial does CheckpointingSampler add to plain Optuna?

Method: for each of RandomSampler, TPESampler and CmaEsSampler (default arguments, seeded), the
same study runs plain and wrapped in ``CheckpointingSampler``: a fresh database, --trials trials
of the trivial objective x**2 + y**2 over two float parameters, with ``study.optimize`` timed
(the study's creation and the imports are not). Every study runs in a fresh subprocess. The two
arms of a pair use the same seed, so they must propose the same parameters; the script checks
that they do. Plain and wrapped alternate in ABBA order over --repeats pairs, so slow drift of the
machine hits both alike. Reported per sampler: the median ms/trial of each arm, the median of the
per-pair ratios wrapped/plain and their min..max, and the median per-pair difference of the CPU
time of the study's process per trial, which other processes on a busy machine disturb less
than the wall time (it leaves out waits for the disk and the database server's own work). A
note under the table says when other processes took more than 10 % of the CPUs meanwhile.

Run from the repository root, in the project's virtualenv:

    python benchmarks/overhead.py                 # 300 trials, 4 pairs per sampler
    python benchmarks/overhead.py --quick         # smoke test
    python benchmarks/overhead.py --trials 100 \\
        --storage postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import importlib
import json
import statistics
from typing import Any

from _common import SAMPLERS
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


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one study and time its ``optimize``."""
    import gc
    import time

    import optuna

    quiet()
    if spec["sampler"] == "cmaes":  # imported by the first trial (0.6 s, SciPy included)
        importlib.import_module("cmaes")
    sampler = make_sampler(spec["sampler"], spec["seed"], spec["wrapped"])
    study = optuna.create_study(study_name=STUDY, storage=spec["storage"], sampler=sampler)
    gc.collect()  # both arms start from an equally clean heap
    start, cpu = time.perf_counter(), time.process_time()
    study.optimize(objective, n_trials=spec["trials"])
    return {
        "wall_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu,
        "params": [t.params for t in study.get_trials(deepcopy=False)],
    }


def main() -> None:
    """Run the interleaved pairs and print the table."""
    args = parse_args(
        __doc__ or "",
        defaults={"trials": 300, "repeats": 4, "samplers": list(SAMPLERS)},
        quick={"trials": 20, "repeats": 2, "samplers": list(SAMPLERS)},
    )
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    pairs: dict[str, list[dict[bool, dict[str, Any]]]] = {kind: [] for kind in args.samplers}
    with Databases(args.storage) as dbs:
        for repeat, kind, order in abba(args.samplers, args.repeats):
            pair: dict[bool, dict[str, Any]] = {}
            for wrapped in order:
                url = dbs.create()
                spec = {
                    "sampler": kind,
                    "wrapped": wrapped,
                    "seed": args.seed + repeat,
                    "trials": args.trials,
                    "storage": url,
                }
                pair[wrapped] = run_child(__file__, spec)
                dbs.drop(url)
                progress(
                    f"{SAMPLERS[kind]} pair {repeat + 1}/{args.repeats} "
                    f"{'wrapped' if wrapped else 'plain'}: "
                    f"{pair[wrapped]['wall_s'] / args.trials * 1e3:.2f} ms/trial"
                )
            pairs[kind].append(pair)
    rows = []
    for kind, runs in pairs.items():
        ratio, ratio_range = spread([p[True]["wall_s"] / p[False]["wall_s"] for p in runs])
        cpu = statistics.median(p[True]["cpu_s"] - p[False]["cpu_s"] for p in runs)
        plain, wrapped = (
            statistics.median(p[arm]["wall_s"] for p in runs) / args.trials * 1e3
            for arm in (False, True)
        )
        same = all(p[False]["params"] == p[True]["params"] for p in runs)
        rows.append(
            [
                SAMPLERS[kind],
                f"{plain:.2f}",
                f"{wrapped:.2f}",
                f"{ratio:.3f}",
                ratio_range,
                f"{cpu / args.trials * 1e3:+.2f}",
                "yes" if same else "NO",
            ]
        )
    print_table(
        f"Per-trial wall time, {args.trials} trials, {args.repeats} ABBA pairs",
        dbs,
        [
            "sampler",
            "plain ms/trial",
            "wrapped ms/trial",
            "ratio",
            "min..max",
            "CPU ms/trial added",
            "same params",
        ],
        rows,
        timed=[run for runs in pairs.values() for pair in runs for run in pair.values()],
    )


if __name__ == "__main__":
    main()
