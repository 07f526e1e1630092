"""Who a worker is, and how its sampler's random streams are told apart from other workers'.

Every worker of a study writes its own checkpoint stream, named by its worker id. The id comes
from, in this order:

1. the ``worker_id=`` argument of ``CheckpointingSampler``;
2. the environment variable ``OPTUNA_CHECKPOINT_WORKER_ID``;
3. the rank a launcher gives each of several processes: ``RANK`` (torchrun), ``PMI_RANK`` or
   ``OMPI_COMM_WORLD_RANK`` (MPI), ``SLURM_PROCID`` (srun) — each only when the matching size
   variable says there is more than one process — or ``JOB_COMPLETION_INDEX`` (Kubernetes
   indexed jobs); the id is then ``rank-<n>``;
4. otherwise the first *free slot* of the study: ``main``, then ``worker-1``, ``worker-2``... A
   slot is free when no live process holds its lease, so a restarted worker takes the slot of
   the worker that died, and the same script started on four machines gets four slots.

An explicit id (1 to 3) is held by one process at a time: a second live process claiming it is
refused. A slot (4) is never refused; a busy slot is passed over.

The stream ``main`` runs the sampler exactly as constructed, so a single worker proposes what the
sampler alone would. Any other stream first re-seeds every random generator of the sampler from
``numpy.random.SeedSequence(entropy=<the generator's seeded state>, spawn_key=(<worker key>,
<generator index>))`` (:mod:`optuna_checkpoint.state._spawn`): distinct for every worker id,
and the same on every run, so seeded parallel workers neither repeat each other's points nor lose
reproducibility.
"""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Mapping
import os


MAIN_WORKER = "main"
WORKER_ID_ENV = "OPTUNA_CHECKPOINT_WORKER_ID"
MAX_WORKER_ID_LENGTH = 128

# (rank variable, size variable that must exceed 1, or None if the rank alone is unique).
_RANK_VARIABLES: tuple[tuple[str, str | None], ...] = (
    ("RANK", "WORLD_SIZE"),
    ("PMI_RANK", "PMI_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("SLURM_PROCID", "SLURM_NTASKS"),
    ("JOB_COMPLETION_INDEX", None),
)


def check_worker_id(worker_id: str) -> str:
    """Return ``worker_id`` if it can name a stream, else raise ``ValueError`` saying why."""
    if not isinstance(worker_id, str) or not worker_id.strip():
        raise ValueError(f"worker_id must be a non-empty string, got {worker_id!r}")
    if len(worker_id) > MAX_WORKER_ID_LENGTH or not worker_id.isprintable():
        raise ValueError(
            f"worker_id must be at most {MAX_WORKER_ID_LENGTH} printable characters, got "
            f"{worker_id!r}"
        )
    return worker_id


def worker_id_from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """Return the worker id the environment gives this process, or ``None`` (use a slot)."""
    env = os.environ if environ is None else environ
    explicit = env.get(WORKER_ID_ENV, "").strip()
    if explicit:
        return check_worker_id(explicit)
    for rank_variable, size_variable in _RANK_VARIABLES:
        rank = env.get(rank_variable, "").strip()
        if not rank.isdigit():
            continue
        if size_variable is not None:
            size = env.get(size_variable, "").strip()
            if not size.isdigit() or int(size) <= 1:
                continue
        return f"rank-{int(rank)}"
    return None


def slot_names() -> Iterator[str]:
    """The slots a worker without an id tries, in order."""
    yield MAIN_WORKER
    number = 1
    while True:
        yield f"worker-{number}"
        number += 1
