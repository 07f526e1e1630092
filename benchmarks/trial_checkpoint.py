"""What does trial_checkpoint cost to save and load, against torch.save to local disk?

Method: for each state size in --sizes (1 KB, 1 MB and 100 MB of float64 weights by default),
the state ``{"step": k, "weights": <array>}`` is saved and loaded through the public API in each
backend, interleaved round by round (--repeats rounds, each backend once per round, in rotating
order):

* ``database``: ``trial_checkpoint(trial).save(state)`` into the study's SQLite file (a state
  over the 8 MiB bound is refused, shown as "refused");
* ``artifacts``: ``trial_checkpoint(trial, artifact_store=FileSystemArtifactStore(dir))``, the
  weights in the artifact store and a sealed reference in the database;
* ``torch.save``: ``torch.save`` / ``torch.load`` of the same dict (weights as a tensor) to a
  file in the same directory, the baseline (``numpy.save`` / ``numpy.load`` when PyTorch is not
  installed; the table says which).

A save is timed inside a running trial (its second save: the first also looks up the trial's
logical trial once); it is durable, an SQLite commit waiting for the disk, where ``torch.save``
leaves the file to the page cache. A load is the first ``load()`` of a retry: the trial
that saved is abandoned as a killed process would leave it, a fresh sampler resumes the study
(not timed) and the retry's ``load()`` is timed, decoding and seal (and digest) checks included.
The loaded weights are compared with the saved ones. Reported: the median of each backend, and
its ratio to the baseline's median in the same run. Files live in a temporary directory on the
same disk (--dir).

Run from the repository root, in the project's virtualenv:

    python benchmarks/trial_checkpoint.py            # 1 KB, 1 MB, 100 MB; 5 rounds
    python benchmarks/trial_checkpoint.py --quick    # 1 KB and 1 MB, 2 rounds
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path
import statistics
import tempfile
import time
from typing import Any

import numpy as np

from _common import quiet


BACKENDS = ("database", "artifacts", "baseline")


def _study(url: str) -> Any:
    import optuna

    from optuna_checkpoint import CheckpointingSampler

    return optuna.create_study(
        study_name="bench",
        storage=url,
        load_if_exists=True,
        sampler=CheckpointingSampler(optuna.samplers.RandomSampler(seed=0)),
    )


def _checkpoint(trial: Any, store: Any) -> Any:
    from optuna_checkpoint import trial_checkpoint

    return trial_checkpoint(trial, artifact_store=store)


def time_checkpoint(workdir: Path, state: dict[str, Any], in_store: bool) -> tuple[float, float]:
    """Seconds to save ``state`` in a trial and to load it in the retry; NaN if refused."""
    from optuna.artifacts import FileSystemArtifactStore

    from optuna_checkpoint import CheckpointError

    run = Path(tempfile.mkdtemp(dir=workdir))
    (run / "artifacts").mkdir()
    store = FileSystemArtifactStore(run / "artifacts") if in_store else None
    url = f"sqlite:///{run / 'study.db'}"
    study = _study(url)
    trial = study.ask()
    ckpt = _checkpoint(trial, store)
    try:
        ckpt.save(state)  # the attempt's first save also looks up its logical trial
    except CheckpointError:
        return float("nan"), float("nan")
    start = time.perf_counter()
    ckpt.save(state)
    saved = time.perf_counter() - start
    del study, trial, ckpt
    gc.collect()  # the attempt's sampler is gone, as a killed process's would be
    retry = _study(url).ask()
    ckpt = _checkpoint(retry, store)
    start = time.perf_counter()
    loaded = ckpt.load()
    took = time.perf_counter() - start
    assert np.array_equal(loaded["weights"], state["weights"]), "the state did not come back"
    return saved, took


def time_baseline(workdir: Path, state: dict[str, Any]) -> tuple[float, float]:
    """Seconds for torch.save and torch.load of the state (numpy's if torch is missing)."""
    path = Path(tempfile.mkdtemp(dir=workdir)) / "state.pt"
    try:
        import torch
    except ImportError:
        start = time.perf_counter()
        np.save(path.with_suffix(".npy"), state["weights"])
        saved = time.perf_counter() - start
        start = time.perf_counter()
        weights = np.load(path.with_suffix(".npy"))
        took = time.perf_counter() - start
    else:
        tensor_state = {"step": state["step"], "weights": torch.from_numpy(state["weights"])}
        start = time.perf_counter()
        torch.save(tensor_state, path)
        saved = time.perf_counter() - start
        start = time.perf_counter()
        weights = torch.load(path)["weights"].numpy()
        took = time.perf_counter() - start
    assert np.array_equal(weights, state["weights"])
    return saved, took


def _baseline_name() -> str:
    try:
        import torch  # noqa: F401
    except ImportError:
        return "numpy.save"
    return "torch.save"


def _size(text: str) -> int:
    units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
    for unit, factor in units.items():
        if text.upper().endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def _ms(seconds: float) -> str:
    return "refused" if seconds != seconds else f"{seconds * 1000:,.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.partition("\n")[0],
        epilog=__doc__.partition("\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", nargs="+", default=None, help="1KB 1MB 100MB by default")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (5)")
    parser.add_argument("--dir", default=None, help="where the files go (a temporary directory)")
    parser.add_argument("--quick", action="store_true", help="1KB and 1MB, 2 rounds")
    args = parser.parse_args()
    sizes = args.sizes or (["1KB", "1MB"] if args.quick else ["1KB", "1MB", "100MB"])
    repeats = args.repeats or (2 if args.quick else 5)
    quiet()
    baseline = _baseline_name()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        workdir = Path(tmp)
        for size in sizes:
            n = max(1, _size(size) // 8)
            state = {"step": 7, "weights": np.random.default_rng(0).standard_normal(n)}
            times: dict[str, list[tuple[float, float]]] = {b: [] for b in BACKENDS}
            for round_ in range(repeats):
                order = BACKENDS[round_ % 3 :] + BACKENDS[: round_ % 3]
                for backend in order:
                    if backend == "baseline":
                        times[backend].append(time_baseline(workdir, state))
                    else:
                        in_store = backend == "artifacts"
                        times[backend].append(time_checkpoint(workdir, state, in_store))
            medians = {
                b: tuple(statistics.median(t[i] for t in times[b]) for i in (0, 1))
                for b in BACKENDS
            }
            base_save, base_load = medians["baseline"]
            for backend in BACKENDS:
                save, load = medians[backend]
                name = baseline if backend == "baseline" else backend
                rows.append(
                    f"| {size} | {name} | {_ms(save)} | {save / base_save:.2f} | "
                    f"{_ms(load)} | {load / base_load:.2f} |"
                )
            print(f"{size}: done", flush=True)
    print()
    print(f"Medians of {repeats} interleaved rounds; ratios against {baseline} in the same run.")
    print()
    print("| state | backend | save | save / baseline | load | load / baseline |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(row.replace("| nan |", "| — |"))


if __name__ == "__main__":
    main()
