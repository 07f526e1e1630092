"""How many bytes per trial does CheckpointingSampler add to the study's database?

Method: for each of RandomSampler, TPESampler and CmaEsSampler (default arguments, seeded), the
same study runs plain and wrapped in ``CheckpointingSampler``, each in a fresh subprocess and a
fresh database, with the trivial objective x**2 + y**2 over two float parameters. The database
is measured after a warm-up of --trials/10 trials (which creates the tables and the wrapper's
stream: fixed costs, not per trial) and again after --trials more; the growth divided by --trials
is the bytes per trial. The size is the file on SQLite, the tables with their indexes and TOAST
(``pg_total_relation_size``) on PostgreSQL, and ``data_length + index_length`` after ``ANALYZE
TABLE`` on MySQL. Space is allocated in pages (4 KB on SQLite, 8 KB on PostgreSQL, 16 KB on
MySQL), so a few hundred trials are needed for a precise figure. The wrapper keeps every
checkpoint by default (no ``retention``), which is what is measured. With --repeats above 1 the
arms alternate in ABBA order and the medians are reported.

Run from the repository root, in the project's virtualenv:

    python benchmarks/bytes_per_trial.py          # 500 trials per study
    python benchmarks/bytes_per_trial.py --quick  # smoke test
    python benchmarks/bytes_per_trial.py --storage postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import json
from pathlib import Path
import statistics
from typing import Any

import sqlalchemy as sa

from _common import SAMPLERS
from _common import STUDY
from _common import Databases
from _common import abba
from _common import connect
from _common import make_sampler
from _common import objective
from _common import parse_args
from _common import print_table
from _common import progress
from _common import quiet
from _common import run_child


def database_bytes(url: str) -> int:
    """The size of a study database: the SQLite file, or its tables with their indexes."""
    backend = sa.make_url(url).get_backend_name()
    if backend == "sqlite":
        return Path(str(sa.make_url(url).database)).stat().st_size
    with connect(url) as connection:
        if backend == "postgresql":  # TOAST included; the catalogs are not the study's
            query = (
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
            )
            return int(connection.exec_driver_sql(query).scalar_one())
        tables = sa.inspect(connection).get_table_names()
        # InnoDB refreshes these statistics in the background; ANALYZE makes them current.
        connection.exec_driver_sql(f"ANALYZE TABLE {', '.join(tables)}").all()
        query = (
            "SELECT coalesce(sum(data_length + index_length), 0)"
            " FROM information_schema.tables WHERE table_schema = DATABASE()"
        )
        return int(connection.exec_driver_sql(query).scalar_one())


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one study; measure its database after the warm-up and after the measured trials."""
    import optuna

    quiet()
    sampler = make_sampler(spec["sampler"], spec["seed"], spec["wrapped"])
    study = optuna.create_study(study_name=STUDY, storage=spec["storage"], sampler=sampler)
    study.optimize(objective, n_trials=max(1, spec["trials"] // 10))
    before = database_bytes(spec["storage"])
    study.optimize(objective, n_trials=spec["trials"])
    growth = database_bytes(spec["storage"]) - before
    return {
        "bytes_per_trial": growth / spec["trials"],
        "params": [t.params for t in study.get_trials(deepcopy=False)],
    }


def main() -> None:
    """Run the studies and print the table."""
    args = parse_args(
        __doc__ or "",
        defaults={"trials": 500, "repeats": 1, "samplers": list(SAMPLERS)},
        quick={"trials": 30, "repeats": 1, "samplers": list(SAMPLERS)},
    )
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    runs: dict[str, dict[bool, list[dict[str, Any]]]] = {
        kind: {False: [], True: []} for kind in args.samplers
    }
    with Databases(args.storage) as dbs:
        for repeat, kind, order in abba(args.samplers, args.repeats):
            for wrapped in order:
                url = dbs.create()
                spec = {
                    "sampler": kind,
                    "wrapped": wrapped,
                    "seed": args.seed + repeat,
                    "trials": args.trials,
                    "storage": url,
                }
                result = run_child(__file__, spec)
                dbs.drop(url)
                runs[kind][wrapped].append(result)
                progress(
                    f"{SAMPLERS[kind]} {repeat + 1}/{args.repeats} "
                    f"{'wrapped' if wrapped else 'plain'}: "
                    f"{result['bytes_per_trial']:.0f} bytes/trial"
                )
    rows = []
    for kind, arms in runs.items():
        plain, wrapped = (
            statistics.median(r["bytes_per_trial"] for r in arms[arm]) for arm in (False, True)
        )
        same = all(
            p["params"] == w["params"] for p, w in zip(arms[False], arms[True], strict=True)
        )
        rows.append(
            [
                SAMPLERS[kind],
                f"{plain:,.0f}",
                f"{wrapped:,.0f}",
                f"{wrapped - plain:,.0f}",
                f"{wrapped / plain:.2f}" if plain > 0 else "n/a",
                "yes" if same else "NO",
            ]
        )
    print_table(
        f"Database growth per trial, {args.trials} trials after {max(1, args.trials // 10)} "
        f"of warm-up, median of {args.repeats}",
        dbs,
        ["sampler", "plain B/trial", "wrapped B/trial", "wrapped - plain", "ratio", "same params"],
        rows,
    )


if __name__ == "__main__":
    main()
