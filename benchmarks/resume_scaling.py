"""Resume time against study size: finding and loading the latest checkpoint must stay flat.

Target (reported, never asserted): a worker resumes in at most 20 ms, at 10,000 trials as at 100.

Method
------
*Studies.* For every ``--storage`` (``sqlite``, or the URL of a PostgreSQL or MySQL server, as in
``benchmarks/overhead.py``, whose database helpers this script uses) and every size in
``--trials`` (100 and 10,000), a fresh process builds a study in a fresh database the way a user
would: ``CheckpointingSampler(TPESampler(seed=--seed))`` in ``study.optimize`` with a trivial
objective of two float parameters. Every trial therefore has its real checkpoint row, written by
the wrapper's commit hook in the transaction of the trial's end, with TPE's real state (both of
its generators) as payload. Only the proposals are made cheap: after the wrapper has recorded the
sampler's configuration, the wrapped TPE's start-up phase is extended over the whole build, so
every trial is sampled the way TPE samples its first ten, at a constant cost per trial instead of
TPE's, which grows with the study (already about 60 ms a trial at 1,000 trials on 2 cores). What
was proposed does not enter the resume; the shape of the tables does, and it is the real one.
On PostgreSQL the build's connections use ``synchronous_commit = off``, which changes when
commits reach the disk, not what they write. The build checks that it left one checkpoint row
per trial plus the initial one, and no unfinished trial.

*Resume.* Exactly ``overhead.py``'s resume measurement, on every study: ``--resume-repeats``
fresh processes per arm, each on its own copy of the database (SQLite: a copy of the file;
PostgreSQL: ``CREATE DATABASE ... TEMPLATE``), since ``ask()`` leaves a RUNNING trial behind that
the next resume would have to close. (a) ``study.ask()`` up to the trial's first proposal, timed
with a freshly constructed ``CheckpointingSampler(TPESampler(seed=--seed))``, minus the same with
a plain ``TPESampler``, medians over the processes; (b) the sampler hooks up to the first
proposal alone (the wrapper's ``before_trial`` is the resume proper: lease, checkpoint lookup,
checksum, decode, RNG restore), called directly after the storage calls ``ask()`` makes before
them, against the plain sampler's. Both stop at the first proposal because the resume reads the
study through Optuna's per-trial cache, which plain TPE fills there; that proposal is a start-up
one in both arms, since TPE's model fit (2 s at 10,000 trials) costs them alike and would only
add its noise. (a) includes everything
``ask()`` does differently with the wrapper; at 10,000 trials it is also noisier.

Run (from the repository root, in the project's virtualenv)::

    python benchmarks/resume_scaling.py \
        --storage sqlite postgresql+psycopg://postgres@127.0.0.1:5432/postgres
    python benchmarks/resume_scaling.py --quick    # 100 and 1,000 trials, 3 processes per arm
    python benchmarks/resume_scaling.py --trials 100 1000 10000 --resume-repeats 9 --json

Building a 10,000-trial study takes 5 to 15 minutes per storage on 2 cores. Progress goes to
stderr; the table (or, with ``--json``, a JSON document) to stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import time
from typing import Any

from overhead import STUDY_NAME
from overhead import TARGET_RESUME_S
from overhead import Databases
from overhead import add_storage_argument
from overhead import checkpoint_bytes
from overhead import environment
from overhead import make_sampler
from overhead import max_share
from overhead import measure_resume
from overhead import objective
from overhead import open_databases
from overhead import progress
from overhead import quiet
from overhead import reliability_warnings
from overhead import run_worker
from overhead import shown
from overhead import source_digest
from overhead import verdict
from overhead import work_directory


# -- worker side (runs in a fresh subprocess) --------------------------------------------------


def _build_engine_kwargs(url: str) -> dict[str, Any]:
    """Engine options that make building faster without changing what is written."""
    if url.startswith("postgresql"):
        return {"connect_args": {"options": "-c synchronous_commit=off"}}
    return {}


def _worker_build(spec: dict[str, Any]) -> dict[str, Any]:
    """Build a wrapped TPE study of ``spec["trials"]`` trials (see the module docstring)."""
    import optuna

    quiet()
    sampler = make_sampler("tpe", spec["seed"], wrapped=True)
    # The wrapper recorded the configuration when it was constructed, so the study's stream
    # carries the default TPE's; this only makes every proposal a start-up (random) one.
    sampler.sampler._n_startup_trials = spec["trials"] + 1
    storage = optuna.storages.RDBStorage(
        spec["storage"], engine_kwargs=_build_engine_kwargs(spec["storage"])
    )
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, sampler=sampler)
    start = time.perf_counter()
    study.optimize(objective, n_trials=spec["trials"])
    seconds = time.perf_counter() - start
    states: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    return {"build_s": seconds, "states": states}


def _worker_main(spec_json: str) -> None:
    print(json.dumps(_worker_build(json.loads(spec_json))))


# -- orchestrator side -------------------------------------------------------------------------


def _build(databases: Databases, trials: int, seed: int) -> tuple[str, dict[str, Any]]:
    """Build a study of ``trials`` trials in a fresh database; return its URL and a summary."""
    url = databases.create(f"study-{trials}")
    result = run_worker({"storage": url, "trials": trials, "seed": seed}, script=__file__)
    sizes = checkpoint_bytes(databases, url)
    if result["states"] != {"COMPLETE": trials} or sizes["rows"] != trials + 1:
        raise RuntimeError(
            f"the {trials}-trial study is not what a real run leaves: trial states "
            f"{result['states']}, {sizes['rows']} checkpoint rows"
        )
    return url, {
        "build_s": result["build_s"],
        "checkpoint_rows": sizes["rows"],
        "checkpoint_tables": sizes["checkpoint_tables"],
        "database_bytes": databases.database_bytes(url),
    }


def _measure_storage(args: argparse.Namespace, storage: str, workdir: Path) -> dict[str, Any]:
    with open_databases(storage, workdir) as databases:
        rows = []
        for trials in args.trials:
            tag = f"{databases.name}, {trials} trials: "
            progress(f"{tag}building the study")
            url, study = _build(databases, trials, args.seed)
            progress(
                f"{tag}built in {study['build_s']:.0f} s "
                f"({study['build_s'] / trials * 1e3:.1f} ms/trial)"
            )
            resume = measure_resume(
                databases, url, seed=args.seed, repeats=args.resume_repeats, tag=tag
            )
            rows.append({"trials": trials, "study": study, "resume": resume})
        return {"name": databases.name, "description": databases.description, "rows": rows}


def _format_report(report: dict[str, Any]) -> str:
    config = report["config"]
    target_ms = TARGET_RESUME_S * 1e3
    lines = [
        "optuna-checkpoint resume time against study size: wrapped minus plain TPE, median of "
        f"{config['resume_repeats']} fresh process(es) per arm; "
        f"{report['environment']['summary']}",
        "",
        f"  {'storage':<18} {'trials':>7}  {'ask()+suggest':>16}  {'hooks to 1st proposal':>21}"
        f"  {'plain':>11}  RNG restored",
    ]
    for storage in report["storages"]:
        for row in storage["rows"]:
            ask, hook = row["resume"]["ask"], row["resume"]["before_trial"]
            restored = ask["rng_restored"] and hook["rng_restored"]
            lines.append(
                f"  {storage['name']:<18} {row['trials']:>7}  "
                f"{ask['resume_ms']:+8.2f} ms {verdict(ask['resume_ms'] <= target_ms):>6}  "
                f"{hook['resume_ms']:+13.2f} ms {verdict(hook['resume_ms'] <= target_ms):>6}  "
                f"{ask['plain_ms']:8.1f} ms  {'yes' if restored else 'NO'}"
            )
    if len(config["trials"]) > 1:
        lines += _flatness_lines(report["storages"], target_ms)
    lines += ["", "Storages:", *(f"  {storage['description']}" for storage in report["storages"])]
    lines += _warnings(report)
    lines += [
        "",
        f"Total runtime {report['runtime_s']:.0f} s (sources {report['sources']['end']})",
    ]
    return "\n".join(lines)


def _flatness_lines(storages: list[dict[str, Any]], target_ms: float) -> list[str]:
    lines = [
        "",
        f"Target: at most {target_ms:.0f} ms, and flat; from the fewest to the most trials:",
    ]
    for storage in storages:
        first, last = storage["rows"][0], storage["rows"][-1]
        growth = {
            mode: last["resume"][mode]["resume_ms"] - first["resume"][mode]["resume_ms"]
            for mode in ("ask", "before_trial")
        }
        lines.append(
            f"  {storage['name']:<18} {first['trials']} -> {last['trials']} trials: "
            f"ask()+suggest {growth['ask']:+.2f} ms, hooks {growth['before_trial']:+.2f} ms"
        )
    return lines


def _warnings(report: dict[str, Any]) -> list[str]:
    runs = [
        process
        for storage in report["storages"]
        for row in storage["rows"]
        for arms in row["resume"]["processes"].values()
        for processes in arms.values()
        for process in processes
    ]
    return reliability_warnings(max_share(runs), report["sources"])


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure CheckpointingSampler's resume time against the study's size."
    )
    parser.add_argument(
        "--trials", type=int, nargs="+", default=None, help="study sizes (100 10000)"
    )
    add_storage_argument(parser, several=True)
    parser.add_argument(
        "--resume-repeats", type=int, default=None, help="fresh processes per arm (7)"
    )
    parser.add_argument("--seed", type=int, default=0, help="the studies' sampler seed")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 100 and 1000 trials, 3 processes"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the SQLite databases go (kept); default: a temp dir",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary SQLite files")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = {"trials": [100, 1000], "resume_repeats": 3}
    full = {"trials": [100, 10000], "resume_repeats": 7}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if min(args.trials) < 1 or args.resume_repeats < 1:
        parser.error("need --trials >= 1 and --resume-repeats >= 1")
    args.trials = sorted(set(args.trials))
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the report."""
    args = _parse_args(argv)
    if args.worker is not None:
        _worker_main(args.worker)
        return
    start = time.perf_counter()
    sources_before = source_digest()
    with work_directory(args.workdir, keep=args.keep, prefix="resume") as workdir:
        storages = [_measure_storage(args, storage, workdir) for storage in args.storage]
    report = {
        "config": {
            "trials": args.trials,
            "resume_repeats": args.resume_repeats,
            "seed": args.seed,
            "storages": [s if s == "sqlite" else shown(s) for s in args.storage],
            "workdir": str(workdir),
        },
        "environment": environment(),
        "target_resume_s": TARGET_RESUME_S,
        "storages": storages,
        "sources": {"start": sources_before, "end": source_digest()},
        "runtime_s": time.perf_counter() - start,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_format_report(report))


if __name__ == "__main__":
    main()
