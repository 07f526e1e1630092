"""What does the deterministic parallel mode cost, in throughput and in the results found?

Throughput: for each K in --workers, K worker processes run one study on a fresh database until
it has --trials trials (each stops after its current trial once the study has that many, so a
few more may finish). Plain arm: ``TPESampler(seed=s + i, constant_liar=True)`` in worker i
(distinct seeds, else the workers propose the same points); deterministic arm: every worker
wraps ``TPESampler(seed=s, constant_liar=True)`` in ``CheckpointingSampler(...,
deterministic_workers=K)``. The objective is the 2-D Rosenbrock function plus a sleep drawn
log-normal (median --median-duration, sigma 0.5) from a random stream of each worker's own, the
same in both arms. The study is created first; the workers import everything, then start
together, and the wall time runs from that start to the end of the last ``optimize``. Reported
per K, as medians over --repeats ABBA pairs: finished trials per second of each arm, the ratio
deterministic/plain of a pair, and the share of the trials' time spent before the objective
started (from the trial's creation: sampling, and in the deterministic arm the wait for the
trials at positions up to n - K); "same" says whether every repeat of the deterministic arm
(same seed) gave the first --trials trials the same parameters.

Quality: the best value after --quality-trials trials for --seeds seeds, on the 3-D sphere
shifted to (1.5, 1.5, 1.5), the 2-D Rosenbrock and the 4-D Rastrigin functions, with 4 threads
(``n_jobs=4``) on a SQLite file in /dev/shm when there is one, the objective sleeping log-normal
with a 0.01 s median so that the threads interleave as real trials would. Arms: plain
``TPESampler(seed, constant_liar=True)``, and wrapped with ``deterministic_workers=4``. Reported
per function: each arm's median best value, and on how many seeds the deterministic arm was at
least as good.

Run from the repository root, in the project's virtualenv:

    python benchmarks/parallel.py                 # K = 2, 4, 8; 64 trials; 3 pairs; 20 seeds
    python benchmarks/parallel.py --quick         # smoke test
    python benchmarks/parallel.py --only quality  # one of the two tables
    python benchmarks/parallel.py \\
        --storage postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import json
import math
import os
import random
import statistics
import time
from typing import Any

from _common import STUDY
from _common import Databases
from _common import abba
from _common import parse_args
from _common import print_table
from _common import progress
from _common import quiet
from _common import run_child
from _common import run_children
from _common import start_together


SIGMA = 0.5  # of the log-normal objective durations
THREADS = 4  # K of the quality table
QUALITY_MEDIAN = 0.01  # seconds, median duration of the quality table's objective
FUNCTIONS: dict[str, tuple[int, float, Callable[[list[float]], float]]] = {
    # name: (dimensions, bound of the box [-bound, bound] in every dimension, function)
    "sphere 3-D, shifted": (3, 5.0, lambda x: sum((v - 1.5) ** 2 for v in x)),
    "Rosenbrock 2-D": (2, 2.0, lambda x: 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2),
    "Rastrigin 4-D": (4, 5.12, lambda x: sum(v * v + 10 - 10 * math.cos(math.tau * v) for v in x)),
}
THROUGHPUT_FUNCTION = "Rosenbrock 2-D"


def make_objective(function: str, durations: random.Random, median: float) -> Any:
    """``function`` over its box, sleeping a log-normal time; notes when the objective began."""
    dims, bound, f = FUNCTIONS[function]

    def objective(trial: Any) -> float:
        trial.set_user_attr("started", time.time())
        x = [trial.suggest_float(f"x{i}", -bound, bound) for i in range(dims)]
        time.sleep(median * durations.lognormvariate(0.0, SIGMA))
        return f(x)

    return objective


def make_sampler(seed: int, workers: int | None) -> Any:
    """TPE with the constant liar, wrapped for ``workers`` deterministic workers or not."""
    import optuna

    from optuna_checkpoint import CheckpointingSampler

    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if workers is None:
        return sampler
    return CheckpointingSampler(sampler, deterministic_workers=workers)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One worker of a throughput study: its trials until the study has enough."""
    import optuna

    quiet()
    det, index = spec["deterministic"], spec["index"]
    sampler = make_sampler(spec["seed"] + (0 if det else index), spec["workers"] if det else None)
    study = optuna.load_study(study_name=STUDY, storage=spec["storage"], sampler=sampler)
    durations = random.Random(f"{spec['repeat']}/{index}")  # the same in both arms
    objective = make_objective(THROUGHPUT_FUNCTION, durations, spec["median"])
    stop = optuna.study.MaxTrialsCallback(spec["trials"], states=None)
    start_together()
    start = time.time()
    study.optimize(objective, callbacks=[stop])
    return {"start": start, "end": time.time()}


def quality(spec: dict[str, Any]) -> dict[str, Any]:
    """The studies of one seed: the best value of each."""
    import optuna

    quiet()
    best = []
    for run in spec["runs"]:
        sampler = make_sampler(spec["seed"], THREADS if run["deterministic"] else None)
        study = optuna.create_study(study_name=STUDY, storage=run["storage"], sampler=sampler)
        durations = random.Random(spec["seed"])
        objective = make_objective(run["function"], durations, QUALITY_MEDIAN)
        study.optimize(objective, n_trials=spec["trials"], n_jobs=THREADS)
        best.append(study.best_value)
    return {"best": best}


def measure(url: str, results: list[dict[str, Any]], trials: int, det: bool) -> dict[str, Any]:
    """Trials/s and waiting share of a finished run; in the deterministic arm, also the first
    ``trials`` logical positions' parameters and how many attempts were interrupted and hidden.
    """
    import optuna

    from optuna_checkpoint import uninterrupted_trials

    storage = optuna.storages.RDBStorage(url)
    try:
        study = optuna.load_study(study_name=STUDY, storage=storage)
        done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        logical = uninterrupted_trials(study) if det else done  # ordered by position
    finally:
        storage.engine.dispose()  # so that the database can be dropped
    timed = [t for t in done if "started" in t.user_attrs and t.datetime_complete is not None]
    waited = sum(t.user_attrs["started"] - t.datetime_start.timestamp() for t in timed)
    took = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in timed)
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    params = [t.params for t in logical[:trials]]
    rate, interrupted = len(done) / wall, len(done) - len(logical)
    return {"rate": rate, "waiting": waited / took, "params": params, "interrupted": interrupted}


def throughput(args: argparse.Namespace, dbs: Databases) -> None:
    """Run the throughput pairs and print their table."""
    import optuna

    runs: dict[int, list[dict[bool, dict[str, Any]]]] = {k: [] for k in args.workers}
    timed = []
    for repeat, key, order in abba([str(k) for k in args.workers], args.repeats):
        workers, pair = int(key), {}
        for det in order:
            url = dbs.create()
            storage = optuna.storages.RDBStorage(url)
            optuna.create_study(study_name=STUDY, storage=storage)
            storage.engine.dispose()
            spec = {"role": "worker", "storage": url, "deterministic": det, "repeat": repeat}
            spec |= {"workers": workers, "seed": args.seed, "trials": args.trials}
            specs = [{**spec, "index": i, "median": args.median_duration} for i in range(workers)]
            # Generous: a hang in the deterministic mode must not block the benchmark forever.
            timeout = 120 + 20 * args.trials * args.median_duration
            results = run_children(__file__, specs, timeout)
            timed.append(results[0])
            pair[det] = measure(url, results, args.trials, det)
            dbs.drop(url)
            progress(
                f"K={workers} pair {repeat + 1}/{args.repeats} "
                f"{'deterministic' if det else 'plain'}: {pair[det]['rate']:.2f} trials/s, "
                f"{pair[det]['waiting']:.1%} waiting, {pair[det]['interrupted']} interrupted"
            )
        runs[workers].append(pair)
    rows = []
    for workers, pairs in runs.items():
        plain, det = (statistics.median(p[arm]["rate"] for p in pairs) for arm in (False, True))
        ratio = statistics.median(p[True]["rate"] / p[False]["rate"] for p in pairs)
        waits = [statistics.median(p[arm]["waiting"] for p in pairs) for arm in (False, True)]
        same = all(p[True]["params"] == pairs[0][True]["params"] for p in pairs)
        reproduced = "n/a" if len(pairs) < 2 else "yes" if same else "NO"
        rate = [f"{plain:.2f}", f"{det:.2f}", f"{ratio:.3f}"]
        rows.append([workers, *rate, f"{waits[0]:.1%}", f"{waits[1]:.1%}", reproduced])
    print_table(
        f"Throughput, {args.trials} trials of ~{args.median_duration} s per study, "
        f"{args.repeats} ABBA pairs",
        dbs,
        ["K", "plain trials/s", "det. trials/s", "ratio", "plain waiting", "det. waiting", "same"],
        rows,
        timed=timed,
    )


def compare_quality(args: argparse.Namespace) -> None:
    """Run the quality studies, one child per seed, and print their table."""
    ram = "/dev/shm" if os.path.isdir("/dev/shm") else None  # the disk's fsync is not measured
    best: dict[tuple[str, bool], list[float]] = {}
    with Databases("sqlite", directory=ram) as dbs:
        for index in range(args.seeds):
            seed = args.seed + index
            runs = [
                {"function": name, "deterministic": det, "storage": dbs.create()}
                for name in FUNCTIONS
                for det in (False, True)
            ]
            spec = {"role": "quality", "seed": seed, "trials": args.quality_trials, "runs": runs}
            result = run_child(__file__, spec)
            for run, value in zip(runs, result["best"], strict=True):
                best.setdefault((run["function"], run["deterministic"]), []).append(value)
                dbs.drop(run["storage"])
            progress(f"quality seed {index + 1}/{args.seeds} done")
        rows = []
        for name in FUNCTIONS:
            plain, det = best[name, False], best[name, True]
            wins = sum(d <= p for p, d in zip(plain, det, strict=True))
            medians = [f"{statistics.median(values):.4g}" for values in (plain, det)]
            rows.append([name, *medians, f"{wins}/{args.seeds}"])
        print()
        print_table(
            f"Best value after {args.quality_trials} trials, {THREADS} threads, "
            f"{args.seeds} seeds",
            dbs,
            ["function", "plain median", "det. median", "det. at least as good"],
            rows,
        )


def main() -> None:
    """Run both comparisons and print their tables."""

    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--workers", type=int, nargs="+", help="K values (2 4 8)")
        parser.add_argument("--median-duration", type=float, default=0.2, help="seconds (0.2)")
        parser.add_argument("--quality-trials", type=int, help="trials per quality study (60)")
        parser.add_argument("--seeds", type=int, help="seeds of the quality table (20)")
        parser.add_argument("--only", choices=["throughput", "quality"], help="one table only")

    full = {"trials": 64, "repeats": 3, "workers": [2, 4, 8], "quality_trials": 60, "seeds": 20}
    quick = {**full, "trials": 16, "repeats": 1, "quality_trials": 12, "seeds": 2}
    args = parse_args(__doc__ or "", defaults=full, quick=quick, extra=extra)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps((worker if spec["role"] == "worker" else quality)(spec)))
        return
    quiet()  # the parent creates the throughput studies
    if args.only != "quality":
        with Databases(args.storage) as dbs:
            throughput(args, dbs)
    if args.only != "throughput":
        compare_quality(args)


if __name__ == "__main__":
    main()
