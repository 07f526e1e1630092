"""What the benchmark scripts share: flags, throw-away databases, fresh processes, ABBA, tables.

Each script runs every measured study in a fresh subprocess of itself (``python
benchmarks/<script>.py --child JSON``, which prints one JSON line), so that no arm inherits the
other's heap, caches, connection pools or the wrapper's process-wide state, and import time stays
out of what is timed. The parent process only orchestrates and prints a markdown table.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
import importlib.metadata
import json
import os
from pathlib import Path
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool


SAMPLERS = {"random": "Random", "tpe": "TPE", "cmaes": "CMA-ES"}
STUDY = "bench"
BUSY = 0.10  # share of the CPUs other processes may take before the table says so


def parse_args(
    doc: str,
    defaults: dict[str, Any],
    quick: dict[str, Any],
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """The common flags a script uses (keys of ``defaults``), its own (``extra``) and ``--help``
    from its docstring; an unset flag takes its value from ``quick`` or ``defaults``.
    """
    summary, _, rest = doc.partition("\n")
    parser = argparse.ArgumentParser(
        description=summary, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    storage = "sqlite (default) or a PostgreSQL/MySQL URL, whose server gets databases bench_*"
    parser.add_argument("--storage", default="sqlite", metavar="sqlite|URL", help=storage)
    if "trials" in defaults:
        parser.add_argument("--trials", type=int, help=f"trials per study ({defaults['trials']})")
    if "repeats" in defaults:
        parser.add_argument("--repeats", type=int, help=f"ABBA pairs ({defaults['repeats']})")
    if "samplers" in defaults:
        parser.add_argument("--samplers", nargs="+", choices=list(SAMPLERS))
    if extra is not None:
        extra(parser)
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (0)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # JSON spec of a measured study
    args = parser.parse_args()
    for name, value in (quick if args.quick else defaults).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if min(getattr(args, name, 1) for name in ("trials", "repeats")) < 1:
        parser.error("--trials and --repeats must be at least 1")
    return args


def quiet() -> None:
    """Silence Optuna's logging and warnings in a child: its stdout is one JSON line."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_sampler(kind: str, seed: int, wrapped: bool) -> Any:
    """A default-configured seeded sampler, wrapped in ``CheckpointingSampler`` or not."""
    import optuna

    from optuna_checkpoint import CheckpointingSampler

    name = {"random": "RandomSampler", "tpe": "TPESampler", "cmaes": "CmaEsSampler"}[kind]
    sampler = getattr(optuna.samplers, name)(seed=seed)
    return CheckpointingSampler(sampler) if wrapped else sampler


def objective(trial: Any) -> float:
    """The trivial objective of every measured study: the cost is Optuna's and the wrapper's."""
    x = trial.suggest_float("x", -10.0, 10.0)
    y = trial.suggest_float("y", -10.0, 10.0)
    return float(x**2 + y**2)


@contextmanager
def connect(url: str | sa.URL, **engine_kwargs: Any) -> Iterator[sa.Connection]:
    """A connection that is really closed afterwards: no pool keeps it open."""
    engine = sa.create_engine(url, poolclass=NullPool, **engine_kwargs)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


class Databases:
    """Fresh SQLite files in a temporary directory, or ``bench_<random>`` databases made and
    dropped through an AUTOCOMMIT connection to the ``--storage`` URL; the ``with`` block's end,
    also by an error or Ctrl-C, drops those left. ``directory``: where the temporary directory
    goes (default: the system's), e.g. a RAM disk when the disk's fsync is not what is measured.
    """

    def __init__(self, storage: str, directory: str | None = None) -> None:
        self._server = None if storage == "sqlite" else sa.make_url(storage)
        self._made: set[str] = set()
        self.name, self.backend = f"SQLite {sqlite3.sqlite_version}", "sqlite"
        if self._server is not None:
            self.backend = self._server.get_backend_name()
            labels = {"postgresql": "PostgreSQL", "mysql": "MySQL", "mariadb": "MariaDB"}
            if self.backend not in labels:
                raise SystemExit(f"--storage: sqlite or a PostgreSQL/MySQL URL, not {storage}")
            with self._admin() as connection:
                dialect = connection.dialect
            kind = "MariaDB" if getattr(dialect, "is_mariadb", False) else labels[self.backend]
            self.name = f"{kind} {'.'.join(map(str, dialect.server_version_info or ()))}"
        self._dir = Path(tempfile.mkdtemp(prefix="optuna-checkpoint-bench-", dir=directory))

    def __enter__(self) -> Databases:
        return self

    def __exit__(self, *exc: object) -> None:
        for name in sorted(self._made):
            self.drop(self._url(name))
        shutil.rmtree(self._dir, ignore_errors=True)

    def _admin(self) -> Any:
        assert self._server is not None
        return connect(self._server, isolation_level="AUTOCOMMIT")

    def _url(self, name: str) -> str:
        if self._server is None:
            return f"sqlite:///{self._dir / name}.db"
        return self._server.set(database=name).render_as_string(hide_password=False)

    def create(self, *, copy_of: str | None = None) -> str:
        """A new empty database, or a copy of ``copy_of`` (no one may be connected to it)."""
        name = f"bench_{secrets.token_hex(6)}"
        url = self._url(name)
        origin = None if copy_of is None else sa.make_url(copy_of).database
        if self._server is None:
            if origin is not None:
                shutil.copyfile(origin, str(sa.make_url(url).database))
            return url
        self._made.add(name)  # before it exists, so that it is dropped even if half made
        with self._admin() as connection:
            if origin is None:
                connection.exec_driver_sql(f"CREATE DATABASE {name}")
            elif self.backend == "postgresql":
                connection.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {origin}")
            else:  # MySQL has no templates: recreate every table from its definition, fill it
                tables = connection.exec_driver_sql(f"SHOW TABLES FROM {origin}").scalars().all()
                for sql in (f"CREATE DATABASE {name}", f"USE {name}", "SET FOREIGN_KEY_CHECKS=0"):
                    connection.exec_driver_sql(sql)
                for table in tables:
                    ddl = connection.exec_driver_sql(f"SHOW CREATE TABLE {origin}.`{table}`")
                    connection.exec_driver_sql(ddl.one()[1])
                    connection.exec_driver_sql(
                        f"INSERT INTO `{table}` SELECT * FROM {origin}.`{table}`"
                    )
        return url

    def drop(self, url: str) -> None:
        """Remove a database made here."""
        name = str(sa.make_url(url).database)
        if self._server is None:
            Path(name).unlink(missing_ok=True)
            return
        force = " WITH (FORCE)" if self.backend == "postgresql" else ""
        with self._admin() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
        self._made.discard(name)


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (Linux; 0 elsewhere)."""
    try:  # the first line: user nice system idle iowait irq softirq steal ...
        ticks = [int(field) for field in Path("/proc/stat").read_text().split()[1:9]]
    except OSError:
        return 0.0
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _machine() -> tuple[float, float, float]:
    """Now: the machine's busy CPU seconds, the wall clock, and the CPU seconds of this process
    and its waited-for children.
    """
    return _busy_cpu_s(), time.perf_counter(), sum(os.times()[:4])


def _others_cpu(before: tuple[float, float, float]) -> float:
    """The share of the machine's CPUs that other processes used since ``before``."""
    (busy0, wall0, own0), (busy1, wall1, own1) = before, _machine()
    others = busy1 - busy0 - (own1 - own0)  # own: this and its children
    return max(0.0, others) / ((wall1 - wall0) * (os.cpu_count() or 1))


def run_child(script: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``script --child spec`` in a fresh interpreter and return its JSON result.

    ``others_cpu`` in the result is the share of the machine's CPUs that other processes used
    meanwhile: the timings assume an otherwise idle machine, and this tells when it was not.
    """
    before = _machine()
    command = [sys.executable, str(Path(script).resolve()), "--child", json.dumps(spec)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    others = _others_cpu(before)
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["others_cpu"] = others
    return result


def run_children(
    script: str, specs: Sequence[dict[str, Any]], timeout: float
) -> list[dict[str, Any]]:
    """Run ``script --child spec`` for every spec at once, each in a fresh interpreter, and
    return their JSON results, each with the ``others_cpu`` of the whole run.

    Every child calls ``start_together`` when its imports are done; all are released at once,
    so that none runs alone while the others still start. If a child fails, or the run takes
    more than ``timeout`` seconds, every child is killed and the error shows its stderr.
    """
    before, command = _machine(), [sys.executable, str(Path(script).resolve()), "--child"]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    procs = [subprocess.Popen([*command, json.dumps(s)], text=True, **pipes) for s in specs]
    failed: subprocess.Popen[str] | None = None
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline() != "ready\n":
                failed = proc
                raise RuntimeError("a child exited before it was ready")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        deadline, outputs = time.monotonic() + timeout, []
        for proc in procs:
            failed = proc
            outputs.append(proc.communicate(timeout=max(0.0, deadline - time.monotonic()))[0])
            if proc.returncode != 0:
                raise RuntimeError(f"exit status {proc.returncode}")
    except (Exception, KeyboardInterrupt) as error:
        for proc in procs:
            proc.kill()
        errors = [proc.communicate()[1] for proc in procs]  # and reap them all
        index = 0 if failed is None else procs.index(failed)
        spec, stderr = specs[index], errors[index][-3000:]
        raise RuntimeError(f"child {spec} failed ({error!r}):\n{stderr}") from error
    others = _others_cpu(before)
    results = [json.loads(output.strip().splitlines()[-1]) for output in outputs]
    return [{**result, "others_cpu": others} for result in results]


def start_together() -> None:
    """In a child of ``run_children``: say that it is ready, and wait until every child is."""
    print("ready", flush=True)
    sys.stdin.readline()


def abba(keys: Sequence[str], repeats: int) -> Iterator[tuple[int, str, tuple[bool, bool]]]:
    """Yield ``(repeat, key, order)``, ``order`` being the arms' ``wrapped`` flags in turn.

    The order alternates from one repeat to the next and from one key to the next (AB, BA, AB,
    ...), so slow drift of the machine and warm caches favour neither arm.
    """
    for repeat in range(repeats):
        for index, key in enumerate(keys):
            yield repeat, key, (False, True) if (repeat + index) % 2 == 0 else (True, False)


def spread(values: Sequence[float], fmt: str = "{:.3f}") -> tuple[float, str]:
    """The median of ``values``, and their ``min..max`` formatted with ``fmt``."""
    return statistics.median(values), f"{fmt.format(min(values))}..{fmt.format(max(values))}"


def progress(message: str) -> None:
    """A progress line on stderr; stdout carries only the table."""
    print(message, file=sys.stderr, flush=True)


def print_table(
    title: str,
    dbs: Databases,
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    timed: Sequence[dict[str, Any]] = (),
) -> None:
    """Print the title and environment, then a markdown table, numbers right-aligned, then a
    note if other processes took more than ``BUSY`` of the CPUs while a ``timed`` child ran.
    """
    versions = ", ".join(
        f"{n} {importlib.metadata.version(n)}" for n in ("optuna", "optuna-checkpoint")
    )
    python = ".".join(map(str, sys.version_info[:3]))
    print(f"{title}; {dbs.name}, Python {python}, {versions}, {os.cpu_count()} CPUs\n")
    print("| " + " | ".join(headers) + " |")
    print("| --- |" + " ---: |" * (len(headers) - 1))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    worst = max((r["others_cpu"] for r in timed), default=0.0)
    if worst > BUSY:
        print(f"\nOther processes used up to {worst:.0%} of the CPUs during measured runs.")
