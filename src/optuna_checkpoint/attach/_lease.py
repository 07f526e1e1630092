"""Who owns a checkpoint stream, and when another process may take it over.

A stream is written by one process at a time. Its lease names the owner precisely enough to tell,
from the same host, whether that process still runs (pid *and* start time, since pids are reused,
plus the kernel boot id, since a reboot ends every process); from another host only the heartbeat
can tell, so there the lease must have expired for a grace period first.
"""

from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path
import socket
import threading
from typing import TYPE_CHECKING
import uuid
import weakref

from optuna_checkpoint.stores._base import CheckpointStore
from optuna_checkpoint.stores._base import Owner
from optuna_checkpoint.stores._sql import resolve_rdb_storage


if TYPE_CHECKING:
    from optuna.storages import BaseStorage


DEFAULT_HEARTBEAT_INTERVAL = 30.0
"""Seconds between lease refreshes, made by a daemon thread for as long as the sampler lives."""

DEFAULT_GRACE_PERIOD = 120.0
"""Seconds without a heartbeat after which a lease held from another host counts as expired."""


def lease_timing(
    storage: BaseStorage, grace_period: float | None, heartbeat_interval: float | None
) -> tuple[float, float]:
    """The lease's grace period and heartbeat interval: as given, else the storage's own."""
    # RDBStorage's public heartbeat settings (BaseHeartbeat), when Optuna's heartbeat is on.
    get_interval = getattr(storage, "get_heartbeat_interval", None)
    storage_interval = get_interval() if callable(get_interval) else None
    if storage_interval:
        rdb = resolve_rdb_storage(storage)
        storage_grace = getattr(rdb, "grace_period", None) or 2 * storage_interval
        if heartbeat_interval is None:
            heartbeat_interval = float(storage_interval)
        if grace_period is None:
            grace_period = float(storage_grace)
    return (
        DEFAULT_GRACE_PERIOD if grace_period is None else grace_period,
        DEFAULT_HEARTBEAT_INTERVAL if heartbeat_interval is None else heartbeat_interval,
    )


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start_time(pid: int) -> str | None:
    """Return a process's start time in clock ticks since boot, or ``None`` if it is gone.

    Returns ``""`` where the platform has no ``/proc`` but the pid exists.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return _pid_exists_fallback(pid)
    # The command name (field 2) may contain spaces and parentheses; fields resume after ")".
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None  # killed, only not yet reaped by its parent: it runs no more code
    return fields[19]  # field 22 of proc(5), "starttime"


def _pid_exists_fallback(pid: int) -> str | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return ""
    return ""


def current_owner() -> Owner:
    """Describe this process as a lease owner, with a fresh token."""
    pid = os.getpid()
    return Owner(
        token=uuid.uuid4().hex,
        host=socket.gethostname(),
        boot_id=_boot_id(),
        pid=pid,
        pid_start=process_start_time(pid) or "",
    )


@dataclass(frozen=True)
class LeaseVerdict:
    """Whether a stream may be taken over, and why."""

    may_take_over: bool
    reason: str


def judge_lease(
    owner: Owner | None, heartbeat_at: float, now: float, me: Owner, grace_period: float
) -> LeaseVerdict:
    """Decide whether ``me`` may take over a stream whose lease is held by ``owner``.

    Args:
        owner: The recorded owner, or ``None`` if the lease was released.
        heartbeat_at: When the owner last refreshed the lease (seconds since the epoch).
        now: The current time.
        me: The process asking.
        grace_period: How long a lease held from another host stays valid without a heartbeat.

    Returns:
        The verdict with a reason fit for an error message.
    """
    if owner is None:
        return LeaseVerdict(True, "the lease was released")
    if owner.host == me.host and owner.boot_id == me.boot_id:
        if owner.pid == me.pid and owner.pid_start == me.pid_start:
            # This process, through another CheckpointingSampler object: still a second writer.
            return LeaseVerdict(
                False, f"it is held by another sampler in this process (pid {me.pid})"
            )
        start = process_start_time(owner.pid)
        if start is None or (start and owner.pid_start and start != owner.pid_start):
            return LeaseVerdict(True, f"its owner, pid {owner.pid} on this host, has exited")
        return LeaseVerdict(False, f"it is held by live process {owner.pid} on this host")
    if owner.host == me.host and owner.boot_id and me.boot_id:
        return LeaseVerdict(True, "its owner ran before this host rebooted")
    silent = now - heartbeat_at
    if silent > grace_period:
        return LeaseVerdict(
            True, f"its owner on host {owner.host!r} has sent no heartbeat for {silent:.0f} s"
        )
    return LeaseVerdict(
        False,
        f"it is held by pid {owner.pid} on host {owner.host!r}, whose last heartbeat was "
        f"{silent:.0f} s ago (a lease expires after {grace_period:.0f} s without one)",
    )


class Heartbeat:
    """Refreshes a lease from a daemon thread while trials run, so long trials keep it."""

    def __init__(
        self, store: CheckpointStore, stream_id: int, token: str, interval: float
    ) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_beat,
            args=(weakref.ref(store), stream_id, token, interval, self._stop),
            name="optuna-checkpoint-heartbeat",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop refreshing."""
        self._stop.set()


def _beat(
    store_ref: weakref.ref[CheckpointStore],
    stream_id: int,
    token: str,
    interval: float,
    stop: threading.Event,
) -> None:
    import time

    while not stop.wait(interval):
        store = store_ref()
        if store is None:
            return
        try:
            if not store.heartbeat(stream_id, token, time.time()):
                return  # lost the lease; the next checkpoint reports it
        except Exception:
            continue
