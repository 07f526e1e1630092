"""A PyTorch search that resumes exactly after a preemption, inside the interrupted trial too.

Each trial trains a small network for a few epochs. After every epoch it writes its training
state with ``torch.save`` (weights, optimizer, random generator) and hands the file to
``trial_checkpoint``, which keeps it in an Optuna artifact store with the epoch count. Kill the
script at any moment (``kill -9``, Ctrl-C, a preempted node) and run it again: the interrupted
trial continues from its last finished epoch, and the study goes on exactly as if it had never
stopped, down to the last bit of every loss.

    python docs/examples/pytorch_training.py --storage sqlite:///train.db --artifacts ./artifacts
"""

from __future__ import annotations

import argparse
from pathlib import Path
import tempfile

import optuna
from optuna.artifacts import FileSystemArtifactStore
import torch
from torch import nn

from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint import trial_checkpoint
from optuna_checkpoint import trial_seed


EPOCHS = 8
BATCH = 32


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed synthetic regression task: the same on every run."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=generator)
    w = torch.randn(8, 1, generator=generator)
    y = torch.tanh(x @ w).squeeze(1) + 0.05 * torch.randn(512, generator=generator)
    return x, y


def objective(trial: optuna.Trial, store: FileSystemArtifactStore, workdir: Path) -> float:
    """Train for EPOCHS epochs, from the last saved epoch if an attempt was cut off."""
    lr = trial.suggest_float("lr", 1e-3, 3e-1, log=True)
    hidden = trial.suggest_int("hidden", 4, 64, log=True)
    torch.manual_seed(trial_seed(trial, "init"))  # the same initial weights in every attempt
    model = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    ckpt = trial_checkpoint(trial, artifact_store=store)
    path = workdir / "last.pt"
    state = ckpt.load(path=path)  # None on a first attempt; else last.pt is put back
    start = 0
    if state is not None:
        saved = torch.load(path)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        start = state["epoch"]
        print(f"trial {trial.number} resumes at epoch {start} of {EPOCHS}", flush=True)
    else:
        torch.manual_seed(trial_seed(trial, "data"))  # the order of the batches

    x, y = make_data()
    loss = float("inf")
    for epoch in range(start, EPOCHS):
        order = torch.randperm(len(x))
        for i in range(0, len(x), BATCH):
            batch = order[i : i + BATCH]
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x[batch]).squeeze(1), y[batch]).backward()
            optimizer.step()
        with torch.no_grad():
            loss = nn.functional.mse_loss(model(x).squeeze(1), y).item()
        trial.report(loss, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
        training_state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
        }
        torch.save(training_state, path)
        ckpt.save({"epoch": epoch + 1}, path=path)
    return loss


def main() -> None:
    """Run the study until it has --trials finished trials, continuing it if it exists."""
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--storage", default="sqlite:///train.db")
    parser.add_argument("--artifacts", default="./artifacts")
    parser.add_argument("--trials", type=int, default=12, help="COMPLETE or PRUNED trials")
    args = parser.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # the same floating-point sums on every run
    Path(args.artifacts).mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(args.artifacts)
    study = optuna.create_study(
        study_name="pytorch-training",
        storage=args.storage,
        load_if_exists=True,
        sampler=CheckpointingSampler(optuna.samplers.TPESampler(seed=7, n_startup_trials=4)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
    )
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    with tempfile.TemporaryDirectory() as workdir:
        study.optimize(
            lambda trial: objective(trial, store, Path(workdir)),
            callbacks=[optuna.study.MaxTrialsCallback(args.trials, states=finished)],
        )


if __name__ == "__main__":
    main()
