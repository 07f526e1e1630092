"""The ``optuna-checkpoint-demo`` command line: its options, and ``main``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import io
from pathlib import Path
import signal
import sys
import tempfile

from optuna_checkpoint.demo._run import DemoError
from optuna_checkpoint.demo._session import run_demo
from optuna_checkpoint.demo._worker import SAMPLER_CLASSES
from optuna_checkpoint.demo._worker import STEPS
from optuna_checkpoint.demo._worker import run_worker


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="optuna-checkpoint-demo",
        description=(
            "Kill an Optuna study with SIGKILL, SIGTERM and SIGINT (Ctrl-C), resume it each "
            "time, and compare its trials bit for bit with a run that was never interrupted, "
            "with and without CheckpointingSampler. Each trial trains a small numpy model for "
            f"{STEPS} steps and reports them to a MedianPruner; with CheckpointingSampler it "
            "saves its state after each step with trial_checkpoint, so that a trial cut off "
            "mid-training resumes at its last saved step. The demo counts the steps each run "
            "had to redo."
        ),
    )
    parser.add_argument(
        "--trials", type=int, default=12, help="finished (complete or pruned) trials per run (12)"
    )
    parser.add_argument(
        "--kills",
        type=int,
        default=3,
        help="kills planned per interrupted run; one due after the run finished is not sent (3)",
    )
    parser.add_argument(
        "--sampler", choices=list(SAMPLER_CLASSES), default="tpe", help="sampler (tpe)"
    )
    parser.add_argument("--seed", type=int, default=42, help="the sampler's seed (42)")
    parser.add_argument(
        "--dir", type=Path, help="keep the SQLite files here (default: a temporary directory)"
    )
    # The demo's own child processes: see optuna_checkpoint.demo._run.
    parser.add_argument("--worker", metavar="STORAGE", help=argparse.SUPPRESS)
    parser.add_argument("--unwrapped", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--step-log", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.trials < 1 or args.kills < 0:
        parser.error("--trials must be at least 1, and --kills at least 0")
    if args.worker is not None and args.step_log is None:
        parser.error("--worker needs --step-log (both are set by the demo for its workers)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the demo or, with the hidden ``--worker`` option, one of its workers.

    Args:
        argv: The arguments, without the program name; ``sys.argv[1:]`` if None.

    Returns:
        0 if the checkpointed run matched the uninterrupted run bit for bit and redid at most
        one training step per kill, 1 if not, 2 if the demo could not run, 130 if it was
        interrupted.
    """
    args = parse_args(argv)
    if args.worker is not None:
        return run_worker(
            args.worker, args.sampler, args.seed, args.trials, not args.unwrapped, args.step_log
        )
    if not hasattr(signal, "SIGKILL"):
        print(
            "optuna-checkpoint-demo kills processes with POSIX signals: run it on Linux or macOS."
        )
        return 2
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")  # for terminals that cannot show "≠" or "…"

    def demo(directory: Path) -> int:
        return run_demo(args.sampler, args.seed, args.trials, args.kills, directory)

    try:
        if args.dir is not None:
            args.dir.mkdir(parents=True, exist_ok=True)
            return demo(args.dir.resolve())
        with tempfile.TemporaryDirectory(prefix="optuna-checkpoint-demo-") as directory:
            return demo(Path(directory))
    except DemoError as e:
        print(f"\nThe demo could not run: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C reaches the worker too, and ends it
        print("\nInterrupted.", file=sys.stderr)
        return 130
