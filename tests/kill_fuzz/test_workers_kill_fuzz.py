"""Four worker processes on one PostgreSQL study, killed and restarted at random.

Each worker (``worker_child.py``, ids ``w0`` to ``w3``) runs ``CheckpointingSampler(sampler,
worker_id=...)`` on one study and logs what it does. The test kills a random worker with a random
signal (SIGKILL, SIGTERM with its default action, SIGINT delivered as KeyboardInterrupt) at random
instants, restarts it at once or after a while, and at the end checks, from the event logs and
the database:

1. no live trial was ever claimed as interrupted: each interrupted trial was run by a process the
   test killed, which never reported it finished, and was closed only after that process was
   gone; every process the test did not kill exited cleanly; no trial is left RUNNING;
2. no COMPLETE trial was lost: every trial a worker reported COMPLETE is COMPLETE in the
   database with the same number, parameters and value, bit for bit;
3. no two workers proposed the same point: no parameter vector occurs in two streams, and within
   a stream only interrupted attempts repeat a point, which their retry proposes again;
4. each worker's stream continued across its restarts: with RandomSampler a stream's proposals
   depend only on its own generator, so the points of a worker's kept trials equal, bit for bit,
   those of the same sampler run alone and uninterrupted.

The checks work on a plain snapshot of the run (``RunRecord``). Each is shown able to fail: on a
copy of the snapshot with one fact changed, and, for 3 and 4, by a control run of plain seeded
RandomSamplers under the same kind of kills, whose restarts start their streams over.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
import dataclasses
from dataclasses import dataclass
import json
import math
from pathlib import Path
import random
import re
import signal
import subprocess
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial
import pytest
import sqlalchemy as sa

from optuna_checkpoint.stores._sql import interrupted_trials
from optuna_checkpoint.stores._sql import streams
from optuna_checkpoint.stores._sql import trial_claims
from optuna_checkpoint.study._trials import CUT_OFF_BY_CTRL_C
from optuna_checkpoint.study._trials import INTERRUPTED_ATTR
from tests.kill_fuzz.harness import ChildProcess
from tests.kill_fuzz.harness import start_script
from tests.kill_fuzz.worker_child import PARAMS
from tests.kill_fuzz.worker_child import objective_value
from tests.kill_fuzz.worker_child import suggest_point
from tests.kill_fuzz.worker_child import worker_sampler


CHILD = Path(__file__).with_name("worker_child.py")
STUDY = "workers"
WORKERS = ("w0", "w1", "w2", "w3")
SEED = 7
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)
# Seconds an objective sleeps after drawing its point: longer than the test takes, on a busy
# machine, to notice the point was drawn and kill the process.
OBJECTIVE_DELAY = (0.1, 0.2)
AIM_JITTER = 0.03  # seconds after noticing the point was drawn
MAX_COMPLETE = 20_000  # a safety cap; the test stops the workers long before
STARTUP_TIMEOUT = 90.0  # for every worker to finish a trial (imports + first resume)
EXIT_TIMEOUT = 30.0  # for a signalled or stopped worker to exit
POLL = 0.01

Point = tuple[str, ...]  # a trial's parameters, in PARAMS order, as float.hex


@dataclass(frozen=True)
class Schedule:
    """How often, when and how the workers are killed and restarted.

    The first ``len(WORKERS)`` kills hit every worker once, in random order, each while its
    stream is under way and inside an objective, after the trial's point was drawn (so that
    the retry has a point to repeat). The rest hit random workers, some during startup or
    resume, at a random instant or, with probability ``aim_inside``, inside an objective.
    """

    name: str
    kills: int
    gap: tuple[float, float]  # seconds between kills
    immediate_restart: float  # probability of restarting as soon as the process is reaped
    restart_delay: tuple[float, float]  # otherwise, seconds after it was reaped
    aim_inside: float
    sampler: str = "random"
    wrap: bool = True


DEFAULT = Schedule(
    "default",
    kills=10,
    gap=(0.4, 2.5),
    immediate_restart=0.5,
    restart_delay=(0.2, 2.5),
    aim_inside=0.4,
)
SOAK_RANDOM = dataclasses.replace(DEFAULT, name="soak-random", kills=40)
SOAK_TPE = dataclasses.replace(DEFAULT, name="soak-tpe", kills=20, sampler="tpe")
CONTROL = dataclasses.replace(DEFAULT, name="control", kills=len(WORKERS), wrap=False)


def worker_seed(worker: str, *, wrap: bool) -> int:
    """Every wrapped worker gets the same seed (the wrapper derives its stream from the worker
    id); the unwrapped control needs a seed of its own per worker."""
    return SEED if wrap else SEED * 100 + WORKERS.index(worker)


def worker_config(
    schedule: Schedule, worker: str, storage: str, events: Path, stop_file: Path
) -> dict[str, Any]:
    return {
        "storage": storage,
        "study_name": STUDY,
        "worker_id": worker,
        "sampler": schedule.sampler,
        "seed": worker_seed(worker, wrap=schedule.wrap),
        "wrap": schedule.wrap,
        "events": str(events),
        "stop_file": str(stop_file),
        "delay": list(OBJECTIVE_DELAY),
        "max_complete": MAX_COMPLETE,
    }


# -- running the workers -------------------------------------------------------------------------


def read_events(path: Path) -> list[dict[str, Any]]:
    """The complete lines of an event log; a line a kill cut short is left out."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines(keepends=True)
    return [json.loads(line) for line in lines if line.endswith("\n")]


@dataclass
class WorkerProcess:
    """One process of one worker, and what the test did to it."""

    worker: str
    popen: ChildProcess  # forked from the kill-fuzz zygote, or a fresh interpreter
    events_path: Path
    output_path: Path
    spawned_at: float
    signal: signal.Signals | None = None
    killed_at: float | None = None
    reaped_at: float | None = None
    escalated: bool = False  # it outlived its signal by EXIT_TIMEOUT and was SIGKILLed

    @property
    def pid(self) -> int:
        return self.popen.pid

    def finished_count(self) -> int:
        return sum(e["event"] == "finished" for e in read_events(self.events_path))

    def describe(self) -> str:
        output = self.output_path.read_text() if self.output_path.exists() else ""
        return (
            f"worker {self.worker} pid {self.pid} (exit {self.popen.returncode}); its output:\n"
            f"{output[-3000:]}"
        )


class Fleet:
    """The worker processes of one study: started, killed, restarted and stopped by the test."""

    def __init__(self, schedule: Schedule, storage: str, directory: Path) -> None:
        self.schedule = schedule
        self.storage = storage
        self.directory = directory
        self.stop_file = directory / "stop"
        self.stop_requested_at: float | None = None
        self.processes: list[WorkerProcess] = []
        self.current: dict[str, WorkerProcess] = {}
        self.restart_at: dict[str, float] = {}  # workers waiting to be restarted
        # Seeds of the processes' objective delays: run_fleet derives them from its generator.
        self.delay_seeds = random.Random(0)

    def start(self, worker: str) -> WorkerProcess:
        name = f"{worker}-{sum(p.worker == worker for p in self.processes)}"
        events = self.directory / f"{name}.jsonl"
        output = self.directory / f"{name}.out"
        config = worker_config(self.schedule, worker, self.storage, events, self.stop_file)
        config["delay_seed"] = self.delay_seeds.getrandbits(64)
        spawned_at = time.time()
        popen = start_script(CHILD, config, output)
        process = WorkerProcess(worker, popen, events, output, spawned_at)
        self.processes.append(process)
        self.current[worker] = process
        return process

    def kill(self, worker: str, sig: signal.Signals) -> WorkerProcess:
        """Send ``sig`` to the worker's process and reap it (SIGKILL if it outlives the signal)."""
        process = self.current[worker]
        self.check_running(process)
        process.signal, process.killed_at = sig, time.time()
        process.popen.send_signal(sig)
        try:
            process.popen.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.escalated = True
            process.popen.kill()
            process.popen.wait()
        process.reaped_at = time.time()
        return process

    def check_running(self, process: WorkerProcess) -> None:
        """Fail at once if a process the test did not kill has exited."""
        if process.signal is None and process.popen.poll() is not None:
            raise AssertionError(f"a worker exited before it was told to:\n{process.describe()}")

    def pump(self) -> None:
        """Start the restarts that are due; check the live workers."""
        now = time.time()
        for worker, due in list(self.restart_at.items()):
            if due <= now:
                del self.restart_at[worker]
                self.start(worker)
        for worker, process in self.current.items():
            if worker not in self.restart_at:
                self.check_running(process)

    def sleep_until(self, deadline: float) -> None:
        while time.time() < deadline:
            self.pump()
            time.sleep(POLL)

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while not condition():
            if time.time() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            self.pump()
            time.sleep(POLL)

    def restarted(self, worker: str) -> Callable[[], bool]:
        return lambda: worker not in self.restart_at

    def point_drawn(self, worker: str) -> Callable[[], bool]:
        """Whether the worker's objective has drawn its point and not returned yet."""

        def drawn() -> bool:
            events = read_events(self.current[worker].events_path)
            return bool(events) and events[-1]["event"] == "drawn"

        return drawn

    def every_worker_finished_a_trial(self) -> bool:
        return not self.restart_at and all(self.current[w].finished_count() >= 1 for w in WORKERS)

    def stop(self) -> None:
        """Ask every worker to stop after its current trial, and wait for all to exit."""
        self.stop_requested_at = time.time()
        self.stop_file.touch()
        for process in self.current.values():
            try:
                process.popen.wait(timeout=EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"a worker did not stop:\n{process.describe()}") from None
            process.reaped_at = time.time()

    def cleanup(self) -> None:
        for process in self.processes:
            if process.popen.poll() is None:
                process.popen.kill()
                process.popen.wait()


def run_fleet(fleet: Fleet, rng: random.Random) -> None:
    """Start the workers, kill and restart them as the schedule says, then stop them all."""
    schedule = fleet.schedule
    # A generator of its own: restarts happen in an order that timing decides.
    fleet.delay_seeds = random.Random(rng.getrandbits(64))
    for worker in WORKERS:
        fleet.start(worker)
    fleet.wait_for(fleet.every_worker_finished_a_trial, STARTUP_TIMEOUT, "the first trials")
    extra = max(0, schedule.kills - len(WORKERS))
    targets = rng.sample(WORKERS, len(WORKERS)) + [rng.choice(WORKERS) for _ in range(extra)]
    for index, target in enumerate(targets[: schedule.kills]):
        gap, sig = rng.uniform(*schedule.gap), rng.choice(SIGNALS)
        aim = rng.random() < schedule.aim_inside or index < len(WORKERS)
        offset = rng.uniform(0.0, AIM_JITTER)
        restart = rng.random() < schedule.immediate_restart
        delay = 0.0 if restart else rng.uniform(*schedule.restart_delay)

        fleet.sleep_until(time.time() + gap)
        # A worker still waiting for its restart is killed soon after it is back.
        fleet.wait_for(fleet.restarted(target), EXIT_TIMEOUT, "a restart")
        if aim:
            fleet.wait_for(fleet.point_drawn(target), STARTUP_TIMEOUT, "a drawn point")
            fleet.sleep_until(time.time() + offset)
        process = fleet.kill(target, sig)
        assert process.reaped_at is not None
        fleet.restart_at[target] = process.reaped_at + delay
    # A worker runs at least one trial before it looks at the stop file: so every stream
    # resumes, and continues with one trial at least, after its last restart.
    fleet.wait_for(lambda: not fleet.restart_at, EXIT_TIMEOUT, "the last restarts")
    fleet.stop()


# -- what the run left behind --------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessFacts:
    worker: str
    pid: int
    spawned_at: float
    reaped_at: float
    signal: str | None  # None: not killed by the test
    killed_at: float | None
    escalated: bool
    returncode: int
    output: str
    events: tuple[dict[str, Any], ...]

    @property
    def killed(self) -> bool:
        return self.signal is not None

    def trial_ids(self, event: str) -> set[int]:
        return {e["trial_id"] for e in self.events if e["event"] == event}


@dataclass(frozen=True)
class TrialFacts:
    trial_id: int
    number: int
    state: str
    params: Point | None  # None until the objective drew them
    value: str | None
    started_at: float
    closed_at: float | None
    interrupted_attr: str | None
    retry_history: tuple[int, ...]


@dataclass(frozen=True)
class RunRecord:
    """A plain snapshot of one run: its processes and their events, and the study's trials."""

    processes: tuple[ProcessFacts, ...]
    trials: dict[int, TrialFacts]  # by trial id
    stream_of: dict[int, str]  # trial id -> the worker whose stream claimed it
    interrupted: dict[int, str | None]  # trial id -> the stream that recorded its interruption
    stream_names: tuple[str, ...]
    stop_requested_at: float
    exact_retries: bool  # the sampler proposes the same point again from the same state

    def started_by(self) -> dict[int, ProcessFacts]:
        return {t: p for p in self.processes for t in p.trial_ids("started")}

    def by_number(self) -> dict[int, TrialFacts]:
        return {t.number: t for t in self.trials.values()}

    def kept_points(self, worker: str) -> list[Point]:
        """The points of the worker's trials that were not interrupted, in trial order."""
        return [
            t.params
            for t in sorted(self.trials.values(), key=lambda t: t.number)
            if t.params is not None
            and self.stream_of.get(t.trial_id) == worker
            and t.trial_id not in self.interrupted
        ]


def point(trial: FrozenTrial) -> Point | None:
    if not all(name in trial.params for name in PARAMS):
        return None
    return tuple(float(trial.params[name]).hex() for name in PARAMS)


def _timestamp(moment: Any) -> float | None:
    return None if moment is None else float(moment.timestamp())


def trial_facts(trial: FrozenTrial) -> TrialFacts:
    attrs = trial.system_attrs
    return TrialFacts(
        trial_id=trial._trial_id,
        number=trial.number,
        state=trial.state.name,
        params=point(trial),
        value=None if trial.value is None else trial.value.hex(),
        started_at=float(trial.datetime_start.timestamp()) if trial.datetime_start else 0.0,
        closed_at=_timestamp(trial.datetime_complete),
        interrupted_attr=attrs.get(INTERRUPTED_ATTR),
        retry_history=tuple(attrs.get("retry_history", ())),
    )


def process_facts(process: WorkerProcess) -> ProcessFacts:
    assert process.reaped_at is not None and process.popen.returncode is not None
    return ProcessFacts(
        worker=process.worker,
        pid=process.pid,
        spawned_at=process.spawned_at,
        reaped_at=process.reaped_at,
        signal=None if process.signal is None else process.signal.name,
        killed_at=process.killed_at,
        escalated=process.escalated,
        returncode=process.popen.returncode,
        output=process.output_path.read_text(),
        events=tuple(read_events(process.events_path)),
    )


def record_run(fleet: Fleet) -> RunRecord:
    """Read the study, the side tables (wrapped runs) and the event logs of a stopped fleet."""
    study = optuna.load_study(study_name=STUDY, storage=fleet.storage)
    trials = {t._trial_id: trial_facts(t) for t in study.get_trials(deepcopy=False)}
    processes = tuple(process_facts(p) for p in fleet.processes)
    if fleet.schedule.wrap:
        stream_of, interrupted, names = _side_tables(fleet.storage, study._study_id)
    else:  # no claims without the wrapper: a trial is the stream of the worker that ran it
        stream_of = {t: p.worker for p in processes for t in p.trial_ids("started")}
        interrupted, names = {}, WORKERS
    assert fleet.stop_requested_at is not None
    return RunRecord(
        processes=processes,
        trials=trials,
        stream_of=stream_of,
        interrupted=interrupted,
        stream_names=names,
        stop_requested_at=fleet.stop_requested_at,
        exact_retries=fleet.schedule.sampler == "random",
    )


def _side_tables(
    storage: str, study_id: int
) -> tuple[dict[int, str], dict[int, str | None], tuple[str, ...]]:
    engine = sa.create_engine(storage)
    try:
        with engine.connect() as connection:
            names = {
                row.stream_id: row.name
                for row in connection.execute(
                    sa.select(streams.c.stream_id, streams.c.name).where(
                        streams.c.study_id == study_id
                    )
                )
            }
            claims = connection.execute(
                sa.select(trial_claims.c.trial_id, trial_claims.c.stream_id).where(
                    trial_claims.c.study_id == study_id
                )
            ).all()
            interruptions = connection.execute(
                sa.select(interrupted_trials.c.trial_id, interrupted_trials.c.stream_id).where(
                    interrupted_trials.c.study_id == study_id
                )
            ).all()
    finally:
        engine.dispose()
    stream_of = {row.trial_id: names[row.stream_id] for row in claims}
    interrupted = {row.trial_id: names.get(row.stream_id) for row in interruptions}
    return stream_of, interrupted, tuple(sorted(names.values()))


# -- the checks ----------------------------------------------------------------------------------


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*$", re.MULTILINE)
SIGINT_ERRORS = (
    "KeyboardInterrupt",
    # Optuna 5.0's _run_trial reads ``updated_state`` in a ``finally`` that a KeyboardInterrupt
    # inside ``_tell_with_warning`` reaches unassigned, so a Ctrl-C there ends with this error.
    "UnboundLocalError: cannot access local variable 'updated_state'",
    # A Ctrl-C in after_trial: Optuna still stores the trial's end in a ``finally``, which the
    # wrapper refuses, by design, so that the trial stays RUNNING and is retried.
    "optuna_checkpoint.exceptions.CheckpointIncompleteError: ",
)


def unexpected_errors(process: ProcessFacts) -> list[str]:
    """The errors a killed process reported, other than those a SIGINT causes by design."""
    errors = [m.group(0) for m in EXCEPTION_LINE.finditer(process.output)]
    if process.signal != "SIGINT":
        return errors
    return [e for e in errors if not e.startswith(SIGINT_ERRORS)]


def check_no_live_trial_interrupted(record: RunRecord) -> list[str]:
    """Assertion 1, and the bookkeeping it relies on."""
    problems: list[str] = []
    for p in record.processes:
        if not p.killed:
            if p.returncode != 0 or "Traceback" in p.output:
                problems.append(
                    f"{p.worker} pid {p.pid}, never killed, exited with {p.returncode}:\n"
                    f"{p.output[-3000:]}"
                )
            elif not any(
                e["event"] == "exit" and e["time"] >= record.stop_requested_at for e in p.events
            ):
                problems.append(f"{p.worker} pid {p.pid} stopped before it was asked to")
        elif unexpected_errors(p):
            problems.append(
                f"{p.worker} pid {p.pid}, sent {p.signal}, failed with {unexpected_errors(p)}:\n"
                f"{p.output[-3000:]}"
            )

    if set(record.stream_names) != set(WORKERS):
        problems.append(f"streams {record.stream_names}, expected one per worker {WORKERS}")
    started_by = record.started_by()
    for trial_id, trial in record.trials.items():
        if trial.state == "RUNNING":
            problems.append(f"trial {trial.number} was left RUNNING")
        if trial.state == "FAIL" and trial_id not in record.interrupted:
            problems.append(f"trial {trial.number} FAILed but was not taken for interrupted")
        if trial.interrupted_attr is not None and trial_id not in record.interrupted:
            problems.append(f"trial {trial.number} carries {INTERRUPTED_ATTR} but is not recorded")
        owner = record.stream_of.get(trial_id)
        if owner is None:
            problems.append(f"trial {trial.number} was claimed for no stream")
        starter = started_by.get(trial_id)
        if starter is not None and owner != starter.worker:
            problems.append(
                f"trial {trial.number}, run by {starter.worker}, is claimed for stream {owner}"
            )
        if trial.params is not None and starter is None:
            problems.append(f"trial {trial.number} has parameters but no process started it")

    for trial_id, interrupter in record.interrupted.items():
        trial = record.trials[trial_id]
        owner = record.stream_of.get(trial_id)
        if interrupter != owner:
            problems.append(
                f"trial {trial.number} of stream {owner} was taken for interrupted by "
                f"{interrupter}"
            )
        problems += _interruption_problems(record, trial, started_by.get(trial_id), owner)
    return problems


def _interruption_problems(
    record: RunRecord, trial: TrialFacts, starter: ProcessFacts | None, owner: str | None
) -> list[str]:
    """Why an interrupted trial may have been live when it was closed, if it may."""
    what = f"interrupted trial {trial.number}"
    if trial.state != "FAIL":
        return [f"{what} is {trial.state}"]
    if starter is not None:
        if not starter.killed:
            return [f"{what} was run by {starter.worker} pid {starter.pid}, never killed"]
        if trial.trial_id in starter.trial_ids("finished"):
            return [f"{what} was reported finished by pid {starter.pid} before it was killed"]
        if trial.interrupted_attr in (None, CUT_OFF_BY_CTRL_C):
            # Closed as FAIL by its own process: a KeyboardInterrupt in the objective (tagged
            # so by that process, unless Ctrl-C landed before the sampler's after_trial).
            if starter.signal != "SIGINT":
                return [f"{what} was failed by pid {starter.pid}, killed by {starter.signal}"]
            if trial.closed_at is None or trial.closed_at > starter.reaped_at:
                return [f"{what} was closed as FAIL after pid {starter.pid} was gone, untagged"]
            return []
        assert trial.closed_at is not None
        if trial.closed_at < starter.reaped_at:
            return [
                f"{what} was closed at {trial.closed_at:.3f}, while pid {starter.pid} of "
                f"{starter.worker}, which ran it, lived until {starter.reaped_at:.3f}"
            ]
        return []
    # No objective ran: its process was killed between creating it and the objective. That
    # process is one of the worker's, or one that died before it could claim any trial.
    candidates = [
        p
        for p in record.processes
        if p.killed
        and p.spawned_at <= trial.started_at <= p.reaped_at
        and (p.worker == owner or not p.trial_ids("started"))
    ]
    if not candidates:
        return [f"{what} (no objective ran) was created by no process the test killed"]
    if trial.closed_at is None or trial.closed_at < min(p.reaped_at for p in candidates):
        return [f"{what} (no objective ran) was closed while its process may have lived"]
    return []


def check_complete_trials_kept(record: RunRecord) -> list[str]:
    """Assertion 2: what a worker reported COMPLETE is stored COMPLETE, exactly.

    A process killed between storing a trial's end and its callback reports nothing: every
    COMPLETE trial's value must also be the objective's value at its point.
    """
    problems: list[str] = []
    reported = 0
    for p in record.processes:
        for e in p.events:
            if e["event"] != "finished":
                continue
            reported += 1
            trial = record.trials.get(e["trial_id"])
            expected = (e["number"], "COMPLETE", tuple(e["params"][n] for n in PARAMS))
            if e["state"] != "COMPLETE":
                problems.append(f"pid {p.pid} reported trial {e['number']} {e['state']}")
            elif trial is None:
                problems.append(f"trial {e['number']}, reported COMPLETE, is gone")
            elif (trial.number, trial.state, trial.params) != expected or trial.value != e[
                "value"
            ]:
                problems.append(
                    f"trial {e['number']} was reported COMPLETE with {expected[2]} -> "
                    f"{e['value']}, and is stored {trial.state} with {trial.params} -> "
                    f"{trial.value}"
                )
            elif trial.trial_id in record.interrupted:
                problems.append(
                    f"trial {e['number']}, reported COMPLETE, is hidden as interrupted"
                )
    for trial in record.trials.values():
        if trial.state != "COMPLETE":
            continue
        expected_value = (
            None
            if trial.params is None
            else objective_value(*(float.fromhex(v) for v in trial.params)).hex()
        )
        if trial.value != expected_value:
            problems.append(
                f"trial {trial.number} is stored COMPLETE with {trial.params} -> {trial.value}, "
                f"but the objective gives {expected_value}"
            )
    if reported == 0:
        problems.append("no trial was reported finished: nothing was checked")
    return problems


def check_no_point_proposed_twice(record: RunRecord) -> list[str]:
    """Assertion 3: points are unique across streams; only interrupted attempts are repeated.

    Also: every point a process drew is the one stored with its trial, and every interrupted
    trial whose objective ran is retried by its own stream, with the same point when the
    sampler's proposals depend on its state alone.
    """
    problems: list[str] = []
    holders: dict[Point, list[TrialFacts]] = {}
    for trial in record.trials.values():
        if trial.params is not None:
            holders.setdefault(trial.params, []).append(trial)
    for params, trials in holders.items():
        numbers = sorted(t.number for t in trials)
        owners = {record.stream_of.get(t.trial_id) for t in trials}
        if len(owners) > 1:
            problems.append(
                f"point {params} was proposed by streams {sorted(map(str, owners))}: "
                f"trials {numbers}"
            )
        kept = [t for t in trials if t.trial_id not in record.interrupted]
        if len(kept) > 1:
            problems.append(f"point {params} was kept in trials {sorted(t.number for t in kept)}")

    for p in record.processes:
        for e in p.events:
            if e["event"] == "drawn" and record.trials[e["trial_id"]].params != tuple(e["params"]):
                problems.append(
                    f"pid {p.pid} drew {e['params']} for trial {e['number']}, which holds "
                    f"{record.trials[e['trial_id']].params}"
                )

    by_number = record.by_number()
    retried: set[int] = set()
    for retry in record.trials.values():
        stream = record.stream_of.get(retry.trial_id)
        for number in retry.retry_history:
            attempt = by_number[number]
            retried.add(attempt.trial_id)
            if attempt.trial_id not in record.interrupted:
                problems.append(f"trial {retry.number} retries trial {number}, not interrupted")
            if record.stream_of.get(attempt.trial_id) != stream:
                problems.append(f"trial {retry.number} retries trial {number} of another stream")
            if (
                record.exact_retries
                and None not in (retry.params, attempt.params)
                and retry.params != attempt.params
            ):
                problems.append(
                    f"trial {retry.number} retries trial {number} with another point: "
                    f"{retry.params} != {attempt.params}"
                )
    for trial_id in record.started_by():
        if trial_id in record.interrupted and trial_id not in retried:
            problems.append(f"interrupted trial {record.trials[trial_id].number} was not retried")
    return problems


def check_streams_continued(record: RunRecord, reference: dict[str, list[Point]]) -> list[str]:
    """Assertion 4: each worker's kept points are those of its sampler run alone."""
    problems: list[str] = []
    for worker in WORKERS:
        actual, expected = record.kept_points(worker), reference[worker]
        for index, (a, e) in enumerate(zip(actual, expected, strict=False)):
            if a != e:
                problems.append(f"stream {worker} diverges at its point {index}: {a}, alone: {e}")
                break
        else:
            if len(actual) != len(expected):
                problems.append(f"stream {worker}: {len(actual)} points, alone {len(expected)}")
    return problems


def reference_points(schedule: Schedule, counts: dict[str, int]) -> dict[str, list[Point]]:
    """Each worker's sampler, as its processes build it, run alone and never interrupted.

    The points depend only on the sampler's generator, not on the storage: an in-memory study
    gives the same points as a database (the wrapper then keeps its checkpoints in memory too)
    and takes a millisecond a trial instead of a hundred on a SQLite file.
    """
    reference: dict[str, list[Point]] = {}
    for worker in WORKERS:
        config = worker_config(schedule, worker, "", Path("unused"), Path("unused"))
        study = optuna.create_study(sampler=worker_sampler(config))
        study.optimize(
            lambda trial: math.fsum(v * v for v in suggest_point(trial)), n_trials=counts[worker]
        )
        reference[worker] = [p for t in study.get_trials() if (p := point(t)) is not None]
    return reference


def restarts_mid_stream(record: RunRecord, worker: str) -> int:
    """How often the worker was killed after finishing trials and then finished more."""
    processes = [p for p in record.processes if p.worker == worker]
    finished = [bool(p.trial_ids("finished")) for p in processes]
    return sum(
        1 for i, p in enumerate(processes) if p.killed and finished[i] and any(finished[i + 1 :])
    )


def kills_inside_trials(record: RunRecord) -> int:
    """Kills that landed while the process's objective ran."""
    return sum(
        1
        for p in record.processes
        if p.killed and p.trial_ids("started") - p.trial_ids("finished")
    )


def summary(record: RunRecord) -> str:
    killed = [p for p in record.processes if p.killed]
    states: dict[str, int] = {}
    for trial in record.trials.values():
        states[trial.state] = states.get(trial.state, 0) + 1
    signals = {
        s: sum(p.signal == s for p in killed)
        for s in sorted({p.signal for p in killed if p.signal})
    }
    return (
        f"{len(killed)} kills {signals} ({kills_inside_trials(record)} inside a trial, "
        f"{sum(p.escalated for p in killed)} escalated to SIGKILL), "
        f"{len(record.processes)} processes, {len(record.trials)} trials {states}, "
        f"{len(record.interrupted)} interrupted ({interrupted_points(record)} with a point)"
    )


def interrupted_points(record: RunRecord) -> int:
    """Interrupted trials whose point was drawn, so that their retry had one to repeat."""
    return sum(record.trials[t].params is not None for t in record.interrupted)


# -- the checks are not blind --------------------------------------------------------------------


def _with_trial(record: RunRecord, trial: TrialFacts) -> RunRecord:
    return dataclasses.replace(record, trials={**record.trials, trial.trial_id: trial})


def assert_checks_can_fail(record: RunRecord, reference: dict[str, list[Point]]) -> None:
    """Change one fact of a passing record for each check, and require the check to fail."""
    live = next(p for p in record.processes if not p.killed and p.trial_ids("finished"))
    victim = record.trials[min(live.trial_ids("finished"))]
    marked = dataclasses.replace(
        record, interrupted={**record.interrupted, victim.trial_id: live.worker}
    )
    assert check_no_live_trial_interrupted(marked), "check 1 missed a live trial interrupted"

    assert victim.value is not None
    one_ulp = math.nextafter(float.fromhex(victim.value), math.inf).hex()
    changed = _with_trial(record, dataclasses.replace(victim, value=one_ulp))
    assert check_complete_trials_kept(changed), "check 2 missed a value one ulp off"

    by_stream = {
        w: [
            t for t in record.trials.values() if record.stream_of.get(t.trial_id) == w and t.params
        ]
        for w in WORKERS
    }
    copied = dataclasses.replace(by_stream[WORKERS[1]][-1], params=by_stream[WORKERS[0]][0].params)
    assert check_no_point_proposed_twice(_with_trial(record, copied)), (
        "check 3 missed a shared point"
    )

    if record.exact_retries:
        kept = [
            t
            for t in sorted(record.trials.values(), key=lambda t: t.number)
            if record.stream_of.get(t.trial_id) == WORKERS[2]
            and t.trial_id not in record.interrupted
            and t.params
        ]
        first, second = kept[-2], kept[-1]
        swapped = _with_trial(
            _with_trial(record, dataclasses.replace(first, params=second.params)),
            dataclasses.replace(second, params=first.params),
        )
        assert check_streams_continued(swapped, reference), "check 4 missed two points swapped"


# -- the tests -----------------------------------------------------------------------------------


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator[Callable[[Schedule, str], Fleet]]:
    fleets: list[Fleet] = []

    def make(schedule: Schedule, storage: str) -> Fleet:
        directory = tmp_path / schedule.name
        directory.mkdir()
        optuna.create_study(study_name=STUDY, storage=storage)
        fleet = Fleet(schedule, storage, directory)
        fleets.append(fleet)
        return fleet

    try:
        yield make
    finally:
        for fleet in fleets:
            fleet.cleanup()


def run_and_check(schedule: Schedule, fleet: Fleet, rng: random.Random) -> RunRecord:
    """Run the schedule with kills drawn from ``rng`` and assert 1 to 4; return the record."""
    run_fleet(fleet, rng)
    record = record_run(fleet)
    context = f"\n({summary(record)}; logs in {fleet.directory})"
    for check in (
        check_no_live_trial_interrupted,
        check_complete_trials_kept,
        check_no_point_proposed_twice,
    ):
        problems = check(record)
        assert not problems, "\n".join(problems[:20]) + context
    for worker in WORKERS:
        assert restarts_mid_stream(record, worker) >= 1, (
            f"{worker} never restarted mid-stream{context}"
        )
    assert interrupted_points(record) >= 1, f"no drawn point was interrupted{context}"
    if record.exact_retries:
        counts = {w: len(record.kept_points(w)) for w in WORKERS}
        reference = reference_points(schedule, counts)
        problems = check_streams_continued(record, reference)
        assert not problems, "\n".join(problems) + context
        # Seeded alike, the workers' streams must still differ from the first point on.
        firsts = [reference[w][0] for w in WORKERS]
        assert len(set(firsts)) == len(WORKERS)
        assert_checks_can_fail(record, reference)
    print(summary(record))
    return record


def test_four_workers_killed_and_restarted_at_random(
    postgres_url: str, fleet_factory: Callable[[Schedule, str], Fleet], kill_rng: random.Random
) -> None:
    run_and_check(DEFAULT, fleet_factory(DEFAULT, postgres_url), kill_rng)


def test_control_plain_seeded_workers_start_their_streams_over(
    postgres_url: str, fleet_factory: Callable[[Schedule, str], Fleet], kill_rng: random.Random
) -> None:
    fleet = fleet_factory(CONTROL, postgres_url)
    run_fleet(fleet, kill_rng)
    record = record_run(fleet)
    for worker in WORKERS:
        assert restarts_mid_stream(record, worker) >= 1, f"{worker}: the control proves nothing"
    counts = {w: len(record.kept_points(w)) for w in WORKERS}
    problems = check_streams_continued(record, reference_points(CONTROL, counts))
    # Every worker was killed mid-stream, and each restart began its generator again.
    assert len(problems) == len(WORKERS), problems
    assert check_no_point_proposed_twice(record), "the control repeated no point: check 3 is blind"


@pytest.mark.soak
@pytest.mark.parametrize("schedule", [SOAK_RANDOM, SOAK_TPE], ids=lambda s: s.name)
def test_soak_four_workers_many_kills(
    schedule: Schedule,
    postgres_url: str,
    fleet_factory: Callable[[Schedule, str], Fleet],
    kill_rng: random.Random,
) -> None:
    run_and_check(schedule, fleet_factory(schedule, postgres_url), kill_rng)
