"""Overhead of ``CheckpointingSampler`` against plain Optuna: wall time, bytes, resume time.

Targets checked (reported, never asserted): at most 3 % wall-time overhead per trial, at most
8 KB (8000 bytes) of database per trial for TPE, resume in at most 20 ms.

Method
------
*Per-trial overhead.* For each of ``RandomSampler``, ``TPESampler`` and ``CmaEsSampler`` (default
arguments, seeded) the same study is run plain and wrapped in ``CheckpointingSampler``: a fresh
SQLite *file* database, ``--trials`` trials of a trivial objective ``x**2 + y**2`` over two float
parameters, timed around ``study.optimize``. Both arms of a pair use the same seed, so they
propose the same parameters (the wrapper is transparent; the script checks it) and do the same
work apart from the wrapper's. The arms are interleaved in ABBA order (the order alternates from
one repetition and one sampler to the next), ``--repeats`` times, so slow drift of the machine
hits both arms alike. The overhead is the ratio wrapped/plain of each pair; the median of the
per-pair ratios is reported with their minimum and maximum.

Every measured study runs in a fresh subprocess. Import time is then outside the timed region,
and neither arm inherits the other's heap, garbage-collector generations, SQLAlchemy statement
caches, engine pools, or the wrapper's process-wide state (its lease heartbeat thread and its
registry of live samplers). The collector is left enabled, as in real use: garbage the wrapper
creates is part of its cost. The benchmark assumes an otherwise idle machine: around every
measured process it reads the machine's busy CPU time (``/proc/stat``) and subtracts its own, and
the report warns when other processes took more than 10 % of the CPUs during any measured run,
and gives the median over the pairs that stayed below that.

*Lockstep check.* Because one busy spell can spoil a whole run, each sampler is also run once
with a plain and a wrapped study side by side in one process, one trial of each in turn (ABBA),
timing every ``optimize(n_trials=1)`` call. Noise then hits both arms within milliseconds of each
other; the overhead is ``sum(wrapped) / sum(plain) - 1`` with a 95 % bootstrap interval over the
trial pairs. The two studies share the process (heap, collector, statement caches), which is why
this is a cross-check and the separate-process pairs remain the primary figure. ``--no-lockstep``
skips it.

*Bytes per trial.* From each wrapped database: the payload bytes of the checkpoint table
(``sum(length(payload))`` over its rows, one per trial plus the initial one), the whole row
(payload, checksum, adapter name, trial values and state, plus 8 bytes per integer column), the
pages SQLite uses for the checkpoint tables and indexes (``dbstat``, when compiled in), and the
growth of the database file against the plain run of the same pair, divided by the trials. The
target is judged on the file growth, the cost a user actually pays on disk.

*Resume time.* A copy of a wrapped TPE database with ``--trials`` trials is opened in a fresh
process with a freshly constructed ``CheckpointingSampler(TPESampler(seed=...))`` and
``study.ask()`` is timed; ``ask()`` runs ``before_trial``, which resumes (lease, checkpoint lookup,
checksum, decode, RNG restore). The same is timed with a plain ``TPESampler`` on the same
database; the resume cost is the difference of the medians over ``--resume-repeats`` processes
per arm. The wrapped ``before_trial`` is also timed alone, called directly on a trial created
with the storage after the same storage calls ``ask()`` makes first (they load the study into
Optuna's trial cache, which the resume reads), again against the plain sampler's; this isolates
the resume from the noise of the rest of ``ask()``. Each process gets its own copy of the
database, because ``ask()`` leaves a RUNNING trial behind that the next resume would otherwise
have to close.

Run (from the repository root, in the project's virtualenv)::

    python benchmarks/overhead.py                 # defaults: 500 trials, 3 repeats (~7 min)
    python benchmarks/overhead.py --quick         # smoke run: 50 trials, 1 repeat (< 1 min)
    python benchmarks/overhead.py --json > out.json
    python benchmarks/overhead.py --samplers tpe --trials 1000 --repeats 5 --keep --workdir /tmp/b

Progress goes to stderr; the table (or, with ``--json``, a JSON document) to stdout.
"""

from __future__ import annotations

import argparse
from contextlib import closing
import hashlib
import importlib.util
import json
import os
from pathlib import Path
import platform
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any


SAMPLERS = ("random", "tpe", "cmaes")
LABELS = {"random": "Random", "tpe": "TPE", "cmaes": "CMA-ES"}
STUDY_NAME = "overhead"

TARGET_OVERHEAD = 0.03  # wrapped/plain - 1, per trial
TARGET_BYTES_PER_TRIAL = 8000  # TPE, database growth per trial
TARGET_RESUME_S = 0.020  # wrapped ask() - plain ask() in a fresh process
BUSY_WARNING = 0.10  # warn when other processes used more of the CPUs during a measured run


# -- worker side (runs in a fresh subprocess) --------------------------------------------------


def _quiet() -> None:
    import logging
    import warnings

    import optuna

    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna_checkpoint").setLevel(logging.WARNING)


def _make_sampler(kind: str, seed: int, wrapped: bool) -> Any:
    import optuna

    from optuna_checkpoint import CheckpointingSampler

    sampler: optuna.samplers.BaseSampler
    if kind == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    elif kind == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed)
    elif kind == "cmaes":
        sampler = optuna.samplers.CmaEsSampler(seed=seed)
    else:
        raise ValueError(f"unknown sampler {kind!r}")
    return CheckpointingSampler(sampler) if wrapped else sampler


def _objective(trial: Any) -> float:
    x = trial.suggest_float("x", -10.0, 10.0)
    y = trial.suggest_float("y", -10.0, 10.0)
    return float(x**2 + y**2)


def _worker_optimize(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one study and time ``study.optimize`` (and each trial's end, for the first trial)."""
    import gc

    import optuna

    _quiet()
    sampler = _make_sampler(spec["sampler"], spec["seed"], spec["wrapped"])
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=f"sqlite:///{spec['db']}", sampler=sampler
    )
    ends: list[float] = []

    def record(_study: Any, _trial: Any) -> None:  # the same sub-microsecond cost in both arms
        ends.append(time.perf_counter())

    gc.collect()  # start both arms from an equally clean heap
    cpu0, wall0 = time.process_time(), time.perf_counter()
    study.optimize(_objective, n_trials=spec["trials"], callbacks=[record])
    wall1, cpu1 = time.perf_counter(), time.process_time()

    trajectory = hashlib.sha256()
    for trial in study.get_trials(deepcopy=False):
        trajectory.update(repr((trial.number, sorted(trial.params.items()))).encode())
    return {
        "wall_s": wall1 - wall0,
        "cpu_s": cpu1 - cpu0,
        "first_trial_s": ends[0] - wall0,
        "trajectory": trajectory.hexdigest()[:16],
    }


def _rng_key_digest(sampler: Any) -> str:
    """Digest of the TPE sampler's Parzen RNG state, to tell a restored RNG from a fresh one."""
    from optuna_checkpoint import CheckpointingSampler

    inner: Any = sampler.sampler if isinstance(sampler, CheckpointingSampler) else sampler
    return hashlib.sha256(inner._rng.rng.get_state()[1].tobytes()).hexdigest()[:16]


def _worker_resume(spec: dict[str, Any]) -> dict[str, Any]:
    """Time the first ``ask()`` (or the first ``before_trial`` alone) of a fresh process."""
    import gc

    import optuna

    _quiet()
    sampler = _make_sampler("tpe", spec["seed"], spec["wrapped"])
    fresh_rng = _rng_key_digest(_make_sampler("tpe", spec["seed"], False))
    gc.collect()
    t0 = time.perf_counter()
    study = optuna.load_study(
        study_name=STUDY_NAME, storage=f"sqlite:///{spec['db']}", sampler=sampler
    )
    t1 = time.perf_counter()
    if spec["mode"] == "ask":
        study.ask()
        t2 = time.perf_counter()
    else:
        # Exactly the storage calls ``Study.ask`` makes before ``before_trial``: the first one
        # loads every trial into Optuna's cache, which the resume then reads from. Skipping it
        # would bill the wrapper for loading the study, which ``ask()`` does anyway.
        from optuna.trial import TrialState

        storage = study._storage
        storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,))
        trial = storage.get_trial(storage.create_new_trial(study._study_id))
        t1 = time.perf_counter()
        sampler.before_trial(study, trial)
        t2 = time.perf_counter()
    return {
        "load_study_s": t1 - t0,
        "timed_s": t2 - t1,
        "rng_restored": _rng_key_digest(sampler) != fresh_rng,
    }


def _worker_lockstep(spec: dict[str, Any]) -> dict[str, Any]:
    """Run a plain and a wrapped study side by side, one trial of each in turn (ABBA)."""
    import gc

    import optuna

    _quiet()
    studies = {
        wrapped: optuna.create_study(
            study_name=STUDY_NAME,
            storage=f"sqlite:///{spec['db']}-{'wrapped' if wrapped else 'plain'}.db",
            sampler=_make_sampler(spec["sampler"], spec["seed"], wrapped),
        )
        for wrapped in (False, True)
    }
    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    gc.collect()
    for number in range(spec["trials"]):
        for wrapped in (False, True) if number % 4 in (0, 3) else (True, False):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            studies[wrapped].optimize(_objective, n_trials=1)
            wall[wrapped].append(time.perf_counter() - wall0)
            cpu[wrapped].append(time.process_time() - cpu0)
    return {
        "plain_wall_s": wall[False],
        "wrapped_wall_s": wall[True],
        "plain_cpu_s": cpu[False],
        "wrapped_cpu_s": cpu[True],
    }


def _worker_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    workers = {
        "optimize": _worker_optimize,
        "resume": _worker_resume,
        "lockstep": _worker_lockstep,
    }
    print(json.dumps(workers[spec["task"]](spec)))


# -- orchestrator side -------------------------------------------------------------------------


def _busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has been busy since boot (Linux ``/proc/stat``)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds used by this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; note how busy other processes kept the CPUs."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    busy0, own0, wall0 = _busy_cpu_s(), _own_cpu_s(), time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec} failed ({proc.returncode}):\n{proc.stderr}")
    busy1, own1, wall1 = _busy_cpu_s(), _own_cpu_s(), time.perf_counter()
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    # Share of the machine's CPU capacity used by *other* processes while this one ran: the
    # benchmark assumes an otherwise idle machine, and this tells when it was not.
    result["foreign_cpu_share"] = (
        None
        if busy0 is None or busy1 is None
        else max(0.0, (busy1 - busy0) - (own1 - own0)) / ((wall1 - wall0) * (os.cpu_count() or 1))
    )
    return result


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _checkpoint_bytes(db: Path) -> dict[str, Any]:
    """Sizes of the checkpoint rows of a wrapped database."""
    with closing(sqlite3.connect(db)) as connection:
        rows, payload, row_bytes = connection.execute(
            "SELECT count(*), sum(length(payload)), sum(length(payload) + length(checksum)"
            " + length(adapter) + coalesce(length(trial_values), 0)"
            " + coalesce(length(trial_state), 0) + 4 * 8)"
            " FROM optuna_checkpoint_checkpoints"
        ).fetchone()
        try:
            (pages,) = connection.execute(
                "SELECT sum(pgsize) FROM dbstat WHERE name LIKE '%optuna_checkpoint%'"
            ).fetchone()
        except sqlite3.OperationalError:  # SQLite built without the dbstat table
            pages = None
    return {"rows": rows, "payload_bytes": payload, "row_bytes": row_bytes, "page_bytes": pages}


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _measure_overhead(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in args.samplers}
    total = args.repeats * len(args.samplers) * 2
    done = 0
    for repeat in range(args.repeats):
        for index, kind in enumerate(args.samplers):
            seed = args.seed + repeat
            order = (False, True) if (repeat + index) % 2 == 0 else (True, False)  # ABBA
            pair: dict[bool, dict[str, Any]] = {}
            for wrapped in order:
                arm = "wrapped" if wrapped else "plain"
                db = workdir / f"{kind}-{arm}-r{repeat}.db"
                result = _run_worker(
                    {
                        "task": "optimize",
                        "sampler": kind,
                        "wrapped": wrapped,
                        "seed": seed,
                        "trials": args.trials,
                        "db": str(db),
                    }
                )
                result["db"] = str(db)
                result["db_file_bytes"] = db.stat().st_size
                pair[wrapped] = result
                done += 1
                _progress(
                    f"[{done:2d}/{total}] {LABELS[kind]:<6} {arm:<7} repeat {repeat}: "
                    f"{result['wall_s'] / args.trials * 1e3:7.2f} ms/trial"
                )
            plain, wrapped_run = pair[False], pair[True]
            wrapped_run.update(_checkpoint_bytes(Path(wrapped_run["db"])))
            runs[kind].append(
                {
                    "repeat": repeat,
                    "seed": seed,
                    "order": ["wrapped" if w else "plain" for w in order],
                    "plain": plain,
                    "wrapped": wrapped_run,
                    "same_trajectory": plain["trajectory"] == wrapped_run["trajectory"],
                }
            )
    return {kind: _summarise(pairs, args.trials) for kind, pairs in runs.items()}


def _summarise(pairs: list[dict[str, Any]], trials: int) -> dict[str, Any]:
    plain = [p["plain"] for p in pairs]
    wrapped = [p["wrapped"] for p in pairs]

    def per_trial_ms(runs: list[dict[str, Any]], key: str = "wall_s") -> float:
        return statistics.mean(float(r[key]) for r in runs) / trials * 1e3

    def steady_ms(run: dict[str, Any]) -> float:
        return float(run["wall_s"] - run["first_trial_s"]) / max(trials - 1, 1) * 1e3

    ratios = [w["wall_s"] / p["wall_s"] - 1 for p, w in zip(plain, wrapped, strict=True)]
    cpu_ratios = [w["cpu_s"] / p["cpu_s"] - 1 for p, w in zip(plain, wrapped, strict=True)]
    steady_ratios = [steady_ms(w) / steady_ms(p) - 1 for p, w in zip(plain, wrapped, strict=True)]
    quiet_ratios = [
        ratio
        for ratio, p, w in zip(ratios, plain, wrapped, strict=True)
        if max(p["foreign_cpu_share"] or 0.0, w["foreign_cpu_share"] or 0.0) <= BUSY_WARNING
    ]
    growth = [
        (w["db_file_bytes"] - p["db_file_bytes"]) / trials
        for p, w in zip(plain, wrapped, strict=True)
    ]
    last = wrapped[-1]
    return {
        "pairs": pairs,
        "plain_ms_per_trial": per_trial_ms(plain),
        "wrapped_ms_per_trial": per_trial_ms(wrapped),
        "delta_ms_per_trial": per_trial_ms(wrapped) - per_trial_ms(plain),
        "plain_cpu_ms_per_trial": per_trial_ms(plain, "cpu_s"),
        "wrapped_cpu_ms_per_trial": per_trial_ms(wrapped, "cpu_s"),
        "overhead": _spread(ratios),
        "overhead_cpu": _spread(cpu_ratios),
        "overhead_steady": _spread(steady_ratios),
        "overhead_quiet_pairs": _spread(quiet_ratios) if quiet_ratios else None,
        "quiet_pairs": len(quiet_ratios),
        "plain_first_trial_ms": statistics.median(r["first_trial_s"] * 1e3 for r in plain),
        "wrapped_first_trial_ms": statistics.median(r["first_trial_s"] * 1e3 for r in wrapped),
        "same_trajectory": all(p["same_trajectory"] for p in pairs),
        "checkpoint_rows": last["rows"],
        "payload_bytes_per_checkpoint": last["payload_bytes"] / last["rows"],
        "row_bytes_per_checkpoint": last["row_bytes"] / last["rows"],
        "page_bytes_per_trial": (
            None if last["page_bytes"] is None else last["page_bytes"] / trials
        ),
        "file_growth_bytes_per_trial": statistics.median(growth),
        "max_foreign_cpu_share": _max_share([*plain, *wrapped]),
    }


def _max_share(runs: list[dict[str, Any]]) -> float | None:
    shares = [r["foreign_cpu_share"] for r in runs if r["foreign_cpu_share"] is not None]
    return max(shares) if shares else None


def _bootstrap_ratio(
    plain: list[float], wrapped: list[float], resamples: int = 2000
) -> dict[str, float]:
    """``sum(wrapped) / sum(plain) - 1`` with a 95 % bootstrap interval over paired trials."""
    rng = random.Random(0)
    n = len(plain)
    ratios = []
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        ratios.append(sum(wrapped[i] for i in picks) / sum(plain[i] for i in picks) - 1)
    ratios.sort()
    return {
        "ratio": sum(wrapped) / sum(plain) - 1,
        "ci_low": ratios[int(0.025 * resamples)],
        "ci_high": ratios[int(0.975 * resamples) - 1],
    }


def _measure_lockstep(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for done, kind in enumerate(args.samplers, 1):
        result = _run_worker(
            {
                "task": "lockstep",
                "sampler": kind,
                "seed": args.seed,
                "trials": args.trials,
                "db": str(workdir / f"{kind}-lockstep"),
            }
        )
        wall = _bootstrap_ratio(result["plain_wall_s"], result["wrapped_wall_s"])
        cpu = _bootstrap_ratio(result["plain_cpu_s"], result["wrapped_cpu_s"])
        summary[kind] = {
            "plain_ms_per_trial": statistics.mean(result["plain_wall_s"]) * 1e3,
            "wrapped_ms_per_trial": statistics.mean(result["wrapped_wall_s"]) * 1e3,
            "overhead": wall,
            "overhead_cpu": cpu,
            "max_foreign_cpu_share": result["foreign_cpu_share"],
            "trials": result,
        }
        _progress(
            f"[{done:2d}/{len(args.samplers)}] lockstep {LABELS[kind]:<6}: "
            f"overhead {wall['ratio']:+.1%} [{wall['ci_low']:+.1%}, {wall['ci_high']:+.1%}]"
        )
    return summary


def _measure_resume(args: argparse.Namespace, source_db: Path, workdir: Path) -> dict[str, Any]:
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        mode: {"plain": [], "wrapped": []} for mode in ("ask", "before_trial")
    }
    total = 4 * args.resume_repeats
    done = 0
    for repeat in range(args.resume_repeats):
        for mode in ("ask", "before_trial"):
            order = (False, True) if repeat % 2 == 0 else (True, False)
            for wrapped in order:
                arm = "wrapped" if wrapped else "plain"
                db = workdir / f"resume-{mode}-{arm}-r{repeat}.db"
                shutil.copyfile(source_db, db)
                result = _run_worker(
                    {
                        "task": "resume",
                        "mode": mode,
                        "wrapped": wrapped,
                        "seed": args.seed + args.repeats - 1,
                        "db": str(db),
                    }
                )
                db.unlink()
                results[mode][arm].append(result)
                done += 1
                _progress(
                    f"[{done:2d}/{total}] resume {mode:<12} {arm:<7}: "
                    f"{result['timed_s'] * 1e3:7.2f} ms"
                )
    summary: dict[str, Any] = {"source_db": str(source_db), "processes": results}
    for mode, arms in results.items():
        plain = statistics.median(r["timed_s"] for r in arms["plain"])
        wrapped = statistics.median(r["timed_s"] for r in arms["wrapped"])
        summary[mode] = {
            "plain_ms": plain * 1e3,
            "wrapped_ms": wrapped * 1e3,
            "resume_ms": (wrapped - plain) * 1e3,
            "wrapped_min_ms": min(r["timed_s"] for r in arms["wrapped"]) * 1e3,
            "wrapped_max_ms": max(r["timed_s"] for r in arms["wrapped"]) * 1e3,
            "rng_restored": all(r["rng_restored"] for r in arms["wrapped"])
            and not any(r["rng_restored"] for r in arms["plain"]),
            "max_foreign_cpu_share": _max_share([*arms["plain"], *arms["wrapped"]]),
        }
    return summary


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _format_report(report: dict[str, Any]) -> str:
    config = report["config"]
    lines = [
        f"optuna-checkpoint overhead: {config['trials']} trials, {config['repeats']} interleaved "
        f"pair(s) per sampler, SQLite file storage; {report['environment']['summary']}",
        "",
        "Overhead per trial: median of per-pair wrapped/plain ratios [min, max]",
    ]
    for kind, s in report["samplers"].items():
        o = s["overhead"]
        lines.append(
            f"  {LABELS[kind]:<6}  plain {s['plain_ms_per_trial']:6.2f} ms/trial  "
            f"wrapped {s['wrapped_ms_per_trial']:6.2f} ms/trial  "
            f"overhead {o['median']:+6.1%} [{o['min']:+.1%}, {o['max']:+.1%}]  "
            f"(target <= {TARGET_OVERHEAD:.0%}: {_verdict(o['median'] <= TARGET_OVERHEAD)})"
        )
    lockstep = report.get("lockstep")
    if lockstep:
        lines += [
            "",
            "Lockstep check: one process, plain and wrapped trials alternated ABBA; "
            "sum(wrapped)/sum(plain) [95 % bootstrap CI over trial pairs]",
        ]
        for kind, s in lockstep.items():
            o, c = s["overhead"], s["overhead_cpu"]
            lines.append(
                f"  {LABELS[kind]:<6}  plain {s['plain_ms_per_trial']:6.2f} ms/trial  "
                f"wrapped {s['wrapped_ms_per_trial']:6.2f} ms/trial  "
                f"overhead {o['ratio']:+6.1%} [{o['ci_low']:+.1%}, {o['ci_high']:+.1%}]  "
                f"cpu {c['ratio']:+.1%} [{c['ci_low']:+.1%}, {c['ci_high']:+.1%}]  "
                f"(target <= {TARGET_OVERHEAD:.0%}: {_verdict(o['ratio'] <= TARGET_OVERHEAD)})"
            )
    lines += ["", "Detail per sampler"]
    for kind, s in report["samplers"].items():
        cpu, steady = s["overhead_cpu"], s["overhead_steady"]
        lines.append(
            f"  {LABELS[kind]:<6}  {s['delta_ms_per_trial']:+.3f} ms/trial wall  "
            f"cpu overhead {cpu['median']:+.1%} [{cpu['min']:+.1%}, {cpu['max']:+.1%}]  "
            f"w/o first trial {steady['median']:+.1%}  "
            f"first trial {s['plain_first_trial_ms']:.1f} -> {s['wrapped_first_trial_ms']:.1f} ms"
            f"  same trajectory: {'yes' if s['same_trajectory'] else 'NO'}"
            f"  other processes' CPU <= {_share(s['max_foreign_cpu_share'])}"
        )
        quiet = s["overhead_quiet_pairs"]
        quiet_text = (
            ""
            if quiet is None
            else f", overhead {quiet['median']:+.1%} [{quiet['min']:+.1%}, {quiet['max']:+.1%}]"
        )
        lines.append(
            f"          pairs with other processes' CPU <= {BUSY_WARNING:.0%}: "
            f"{s['quiet_pairs']} of {len(s['pairs'])}{quiet_text}"
        )
    lines += ["", "Bytes per trial (checkpoint rows = trials + the initial one)"]
    for kind, s in report["samplers"].items():
        pages = s["page_bytes_per_trial"]
        growth = s["file_growth_bytes_per_trial"]
        target = (
            f"  (target <= {TARGET_BYTES_PER_TRIAL / 1000:.0f} KB: "
            f"{_verdict(growth <= TARGET_BYTES_PER_TRIAL)})"
            if kind == "tpe"
            else ""
        )
        lines.append(
            f"  {LABELS[kind]:<6}  payload {s['payload_bytes_per_checkpoint'] / 1000:.2f} KB  "
            f"row {s['row_bytes_per_checkpoint'] / 1000:.2f} KB  "
            f"pages {'n/a' if pages is None else f'{pages / 1000:.2f} KB'}  "
            f"file growth {growth / 1000:.2f} KB/trial{target}"
        )
    resume = report.get("resume")
    if resume is not None:
        ask, hook = resume["ask"], resume["before_trial"]
        lines += [
            "",
            f"Resume of a {config['trials']}-trial TPE study in a fresh process, median of "
            f"{config['resume_repeats']} process(es) per arm",
            f"  study.ask()      plain {ask['plain_ms']:6.2f} ms  wrapped {ask['wrapped_ms']:6.2f}"
            f" ms [{ask['wrapped_min_ms']:.2f}, {ask['wrapped_max_ms']:.2f}]  "
            f"resume cost {ask['resume_ms']:+6.2f} ms  "
            f"(target <= {TARGET_RESUME_S * 1e3:.0f} ms: "
            f"{_verdict(ask['resume_ms'] <= TARGET_RESUME_S * 1e3)})",
            f"  before_trial()   plain {hook['plain_ms']:6.2f} ms  wrapped "
            f"{hook['wrapped_ms']:6.2f} ms [{hook['wrapped_min_ms']:.2f}, "
            f"{hook['wrapped_max_ms']:.2f}]  resume cost {hook['resume_ms']:+6.2f} ms",
            f"  RNG state restored by every wrapped process and by no plain one: "
            f"{'yes' if ask['rng_restored'] and hook['rng_restored'] else 'NO'}",
        ]
    shares = [s["max_foreign_cpu_share"] for s in report["samplers"].values()]
    shares += [s["max_foreign_cpu_share"] for s in (lockstep or {}).values()]
    if resume is not None:
        shares += [resume[mode]["max_foreign_cpu_share"] for mode in ("ask", "before_trial")]
    busiest = max((share for share in shares if share is not None), default=None)
    if busiest is not None and busiest > BUSY_WARNING:
        lines += [
            "",
            f"WARNING: other processes used up to {busiest:.0%} of the machine's CPUs during "
            "measured runs; the timings are unreliable. Rerun on an idle machine.",
        ]
    source = report["source_digest"]
    if source["start"] != source["end"]:
        lines += [
            "",
            "WARNING: the optuna_checkpoint sources changed during the run "
            f"({source['start']} -> {source['end']}); runs may have measured different code.",
        ]
    lines += ["", f"Total runtime {report['runtime_s']:.0f} s (sources {source['end']})"]
    return "\n".join(lines)


def _share(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.0%}"


def _source_digest() -> str | None:
    """Digest of the installed ``optuna_checkpoint`` sources, to notice edits during a run."""
    spec = importlib.util.find_spec("optuna_checkpoint")
    if spec is None or spec.origin is None:
        return None
    digest = hashlib.sha256()
    for path in sorted(Path(spec.origin).parent.rglob("*.py")):
        digest.update(str(path).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _environment() -> dict[str, Any]:
    from importlib.metadata import version

    versions = {
        name: version(name) for name in ("optuna", "optuna-checkpoint", "sqlalchemy", "numpy")
    }
    summary = (
        f"Python {platform.python_version()}, optuna {versions['optuna']}, "
        f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPU(s)"
    )
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
        "versions": versions,
        "summary": summary,
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure CheckpointingSampler's overhead against plain Optuna."
    )
    parser.add_argument("--trials", type=int, default=None, help="trials per study (500)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved pairs (3)")
    parser.add_argument(
        "--resume-repeats", type=int, default=None, help="fresh processes per resume arm (7)"
    )
    parser.add_argument(
        "--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS), help="samplers to run"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the first repetition")
    parser.add_argument(
        "--no-lockstep", action="store_true", help="skip the same-process lockstep check"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 trials, 1 repeat")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the databases go (kept); default: a temp dir",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary databases")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = {"trials": 50, "repeats": 1, "resume_repeats": 2}
    full = {"trials": 500, "repeats": 3, "resume_repeats": 7}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.trials < 2 or args.repeats < 1 or args.resume_repeats < 1:
        parser.error("need --trials >= 2, --repeats >= 1 and --resume-repeats >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the report."""
    args = _parse_args(argv)
    if args.worker is not None:
        _worker_main(args.worker)
        return
    start = time.perf_counter()
    source_before = _source_digest()
    owned = args.workdir is None  # only a directory made here is removed afterwards
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="optuna-checkpoint-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        samplers = _measure_overhead(args, workdir)
        lockstep = None if args.no_lockstep else _measure_lockstep(args, workdir)
        resume = None
        if "tpe" in samplers:
            source = Path(samplers["tpe"]["pairs"][-1]["wrapped"]["db"])
            resume = _measure_resume(args, source, workdir)
        report = {
            "config": {
                "trials": args.trials,
                "repeats": args.repeats,
                "resume_repeats": args.resume_repeats,
                "samplers": args.samplers,
                "seed": args.seed,
                "workdir": str(workdir),
            },
            "environment": _environment(),
            "targets": {
                "overhead": TARGET_OVERHEAD,
                "tpe_bytes_per_trial": TARGET_BYTES_PER_TRIAL,
                "resume_s": TARGET_RESUME_S,
            },
            "samplers": samplers,
            "lockstep": lockstep,
            "resume": resume,
            "source_digest": {"start": source_before, "end": _source_digest()},
            "runtime_s": time.perf_counter() - start,
        }
    finally:
        if owned and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_format_report(report))


if __name__ == "__main__":
    main()
