"""The ``optuna-checkpoint`` command against real SQLite studies.

The command runs in this process, through click's test runner (a new interpreter per call cost
more than the rest of the module); ``test_the_command_runs_as_a_real_process`` runs the installed
console script and ``python -m optuna_checkpoint.cli`` as real processes.
"""

from __future__ import annotations

import ast
import gc
import importlib
import importlib.metadata
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys

from click.testing import CliRunner
import optuna
from optuna.samplers import TPESampler
import pytest
import sqlalchemy as sa

import optuna_checkpoint
from optuna_checkpoint import CheckpointingSampler
from optuna_checkpoint.cli._main import VERBS
from optuna_checkpoint.cli._main import main
from optuna_checkpoint.stores._sql import checkpoints
from tests.checkpoint_rows import count_rows
from tests.in_process import run_command


pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

TRIALS = 10


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5.0, 5.0)
    k = trial.suggest_int("k", 0, 4)
    return x * x + k


def params_hex(study: optuna.Study) -> list[tuple[str, int]]:
    return [(t.params["x"].hex(), t.params["k"]) for t in study.trials]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the command in this process, with what a process would give: code, stdout, stderr."""
    # COLUMNS: wide enough that no cell is cut.
    return run_command(main, list(args), prog_name="optuna-checkpoint", env={"COLUMNS": "120"})


def cli_process(command: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` (the console script, or ``python -m ...``) as a real process."""
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "120"},
    )


def rows(table: str) -> list[list[str]]:
    """The body rows of the rich tables in ``table``, as lists of cells."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in table.splitlines()
        if line.startswith("│")
    ]


def open_study(url: str, name: str = "s") -> optuna.Study:
    return optuna.create_study(
        study_name=name,
        storage=url,
        load_if_exists=True,
        sampler=CheckpointingSampler(TPESampler(seed=5)),
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A database with a checkpointed study ``s`` of TRIALS trials and a plain study."""
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    study = open_study(url)
    study.optimize(objective, n_trials=TRIALS)
    del study  # a new process would start from here: a fresh sampler and study object
    optuna.create_study(study_name="plain", storage=url).optimize(objective, n_trials=2)
    return url


def test_status_tables(url: str) -> None:
    listing = cli("status", "--storage", url)
    assert listing.returncode == 0, listing.stderr
    listed = rows(listing.stdout)
    assert [row[:4] for row in listed] == [["s", "10", "1", "11"], ["plain", "2", "0", "0"]]
    assert listed[0][4].endswith(" KB") and listed[1][4] == "0 B"

    detail = cli("status", "--storage", url, "--study-name", "s")
    assert detail.returncode == 0, detail.stderr
    assert "Study 's': 10 trials" in detail.stdout
    ((stream, owner, _, first, count, _, newest),) = rows(detail.stdout)
    assert (stream, owner, first, count, newest) == ("main", "released", "0", "11", "9")
    assert "Resume: exact (bit-identical)" in detail.stdout


def test_status_json(url: str) -> None:
    result = cli("status", "--storage", url, "--study-name", "s", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["study_name"], report["trials"], report["resume_exact"]) == ("s", 10, True)
    (stream,) = report["streams"]
    assert stream["checkpoints"] == TRIALS + 1  # one per trial, and the initial one
    assert (stream["name"], stream["lease_alive"], stream["newest_trial_number"]) == (
        "main",
        False,
        TRIALS - 1,
    )
    assert stream["payload_bytes"] > 0
    assert (report["interrupted"], report["reasons"]) == ([], [])


def test_status_says_where_the_guarantee_starts_in_a_study_begun_without_it(url: str) -> None:
    # The fixture's study "plain" ran 2 trials without the wrapper; now it runs 3 with it.
    study = open_study(url, name="plain")
    study.optimize(objective, n_trials=3)
    del study
    gc.collect()
    detail = cli("status", "--storage", url, "--study-name", "plain")
    assert (
        "Trials 0 to 1 ran without optuna-checkpoint: the guarantee holds from trial 2 on, "
        "which is where a resume reproduces the run." in detail.stdout
    )
    assert (
        json.loads(cli("status", "--storage", url, "--study-name", "plain", "--json").stdout)[
            "checkpointed_from"
        ]
        == 2
    )
    # A study that began with the wrapper says nothing of the kind.
    assert "ran without" not in cli("status", "--storage", url, "--study-name", "s").stdout


def test_status_of_a_missing_study_exits_with_1(url: str) -> None:
    result = cli("status", "--storage", url, "--study-name", "nope", "--json")
    assert result.returncode == 1
    assert "no study named 'nope'; its studies are: 'plain', 's'" in result.stderr
    assert "no study named 'nope'" in json.loads(result.stdout)["error"]


# The user's script: a TPE study on SQLite, whose process SIGKILLs itself inside one trial's
# objective (argv: storage, the trial to die in or -1, how many trials to run).
SCRIPT_KILLED_IN_A_TRIAL = """
import os, signal, sys
import optuna
from optuna_checkpoint import CheckpointingSampler

def objective(trial):
    x = trial.suggest_float("x", -5.0, 5.0)
    if trial.number == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x

study = optuna.create_study(
    study_name="demo", storage=sys.argv[1], load_if_exists=True,
    sampler=CheckpointingSampler(optuna.samplers.TPESampler(seed=42)),
)
study.optimize(objective, n_trials=int(sys.argv[3]))
"""


def run_script(url: str, die_in: int, n_trials: int) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-c", SCRIPT_KILLED_IN_A_TRIAL, url, str(die_in), str(n_trials)]
    process = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    process.wait(timeout=120)
    return process


def test_status_after_a_kill_lists_the_trial_the_re_run_will_retry(tmp_path: Path) -> None:
    database = tmp_path / "demo.db"
    url = f"sqlite:///{database}"
    killed = run_script(url, die_in=7, n_trials=20)
    assert killed.returncode == -9

    before = database.read_bytes()
    status = cli("status", "--storage", url, "--study-name", "demo")
    assert status.returncode == 0, status.stderr
    assert database.read_bytes() == before  # status only reads
    assert "Trials a re-run will retry" in status.stdout
    assert "Interrupted trials" not in status.stdout  # nothing recorded yet
    (_, (trial, logical, stream, why)) = rows(status.stdout)
    assert (trial, logical, stream) == ("7", "7", "main")
    assert why == (
        f"its process died while the trial ran; its owner, pid {killed.pid} on this host, "
        "has exited"
    )

    # The re-run does retry it, at that logical trial: status then lists it as recorded.
    assert run_script(url, die_in=-1, n_trials=1).returncode == 0
    after = cli("status", "--storage", url, "--study-name", "demo", "--json")
    report = json.loads(after.stdout)
    assert report["to_retry"] == []
    assert [(i["number"], i["logical_number"], i["stream"]) for i in report["interrupted"]] == [
        (7, 7, "main")
    ]
    retry = optuna.load_study(study_name="demo", storage=url).trials[8]
    assert retry.system_attrs["failed_trial"] == 7


def test_status_does_not_take_a_live_worker_s_running_trial_for_interrupted(url: str) -> None:
    study = open_study(url)  # this process holds the stream's lease while the sampler lives
    study.ask().suggest_float("x", -5.0, 5.0)  # trial 10: RUNNING, and running
    result = cli("status", "--storage", url, "--study-name", "s", "--json")
    report = json.loads(result.stdout)
    assert report["streams"][0]["lease_alive"]
    assert (report["to_retry"], report["interrupted"]) == ([], [])


def test_usage_errors_exit_with_2(url: str) -> None:
    result = cli("prune", "--storage", url, "--study-name", "s", "--keep-last", "1")
    assert result.returncode == 2
    assert "keep_last must be at least 2" in result.stderr
    assert count_rows(url) == TRIALS + 1


def test_prune_needs_a_rule(url: str) -> None:
    # In this process (click's runner): a usage error is caught before anything is opened.
    result = CliRunner().invoke(main, ["prune", "--storage", url, "--study-name", "s"])
    assert result.exit_code == 2
    assert "give --keep-last, --keep-every, or both" in result.output


def test_prune_every_stream(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'workers.sqlite3'}"
    for worker in ("a", "b"):
        study = optuna.create_study(
            study_name="w",
            storage=url,
            load_if_exists=True,
            sampler=CheckpointingSampler(TPESampler(seed=5), worker_id=worker),
        )
        study.optimize(objective, n_trials=5)
        del study
    args = ["prune", "--storage", url, "--study-name", "w", "--keep-last", "2", "--json"]
    result = CliRunner().invoke(main, args)  # in this process: cheap, for a second case
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["streams"] == [
        {"name": "a", "checkpoints": 6, "deleted": 3},
        {"name": "b", "checkpoints": 6, "deleted": 3},
    ]
    assert count_rows(url) == 2 * 3


def test_prune_dry_run_then_prune_then_resume(url: str) -> None:
    dry = cli("prune", "--storage", url, "--study-name", "s", "--keep-last", "3", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "Would delete 7 checkpoints in all." in dry.stdout
    assert count_rows(url) == TRIALS + 1  # a dry run deletes nothing

    pruned = cli("prune", "--storage", url, "--study-name", "s", "--keep-last", "3", "--json")
    assert pruned.returncode == 0, pruned.stderr
    report = json.loads(pruned.stdout)
    assert (report["deleted"], report["dry_run"]) == (TRIALS - 3, False)
    assert report["streams"] == [{"name": "main", "checkpoints": TRIALS + 1, "deleted": 7}]
    assert count_rows(url) == 3 + 1

    resumed = open_study(url)
    resumed.optimize(objective, n_trials=5)
    plain = optuna.create_study(sampler=TPESampler(seed=5))
    plain.optimize(objective, n_trials=TRIALS + 5)
    assert params_hex(resumed) == params_hex(plain)


def test_verify_replays_the_study_and_exits_0(url: str) -> None:
    result = cli(
        "verify", "--storage", url, "--study-name", "s", "--sampler", "TPESampler(seed=5)"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == (
        f"verified: {TRIALS + 1} checkpoints intact, {TRIALS} trials replayed bit for bit\n"
    )

    as_json = cli("verify", "--storage", url, "--study-name", "s", "--json")
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 0 and report["ok"] and report["checkpoints_checked"] == TRIALS + 1


def test_verify_reports_a_divergence_and_a_tampered_checkpoint_with_exit_1(url: str) -> None:
    diverging = cli(
        "verify",
        "--storage",
        url,
        "--study-name",
        "s",
        "--sampler",
        "TPESampler(seed=5, n_startup_trials=3)",
    )
    assert diverging.returncode == 1, diverging.stdout + diverging.stderr
    assert "(n_startup_trials: recorded 10, given 3)" in diverging.stdout.splitlines()[0]
    assert "diverged at trial 3, parameter 'x'" in diverging.stdout

    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                checkpoints.update()
                .where(checkpoints.c.logical_number == 4)
                .values(checksum="sha256:" + "A" * 43)
            )
    finally:
        engine.dispose()
    tampered = cli("verify", "--storage", url, "--study-name", "s", "--json")
    report = json.loads(tampered.stdout)
    assert tampered.returncode == 1 and not report["ok"]
    assert [(p["kind"], p["trial_number"]) for p in report["problems"]] == [("corrupt", 4)]


def test_verify_with_a_sampler_that_is_not_one_is_a_usage_error(url: str) -> None:
    result = cli("verify", "--storage", url, "--study-name", "s", "--sampler", "[1, 2]")
    assert result.returncode == 2 and "not an Optuna sampler" in result.stderr


def test_a_sampler_can_be_named_by_import_path_or_expression() -> None:
    from optuna_checkpoint.cli._common import load_sampler

    assert type(load_sampler("optuna.samplers:RandomSampler")) is optuna.samplers.RandomSampler
    assert type(load_sampler("optuna.samplers.TPESampler(seed=1)")) is TPESampler
    assert type(load_sampler("GridSampler({'x': [0, 1]})")) is optuna.samplers.GridSampler


def test_rewind_then_continue_repeats_the_original(url: str) -> None:
    result = cli(
        "rewind", "--storage", url, "--study-name", "s", "--to-trial", "4",
        "--sampler", "TPESampler(seed=5)", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report == {
        "source_study": "s",
        "at_trial": 4,
        "study_name": "s@4",
        "trials_copied": 5,
        "stream": "main",
    }
    rewound = optuna.load_study(
        study_name="s@4", storage=url, sampler=CheckpointingSampler(TPESampler(seed=5))
    )
    rewound.optimize(objective, n_trials=TRIALS - 5)
    original = optuna.load_study(study_name="s", storage=url)
    assert params_hex(rewound) == params_hex(original)

    again = cli(
        "fork", "--storage", url, "--study-name", "s", "--at-trial", "4",
        "--sampler", "TPESampler(seed=5)", "--to-study-name", "s@4",
    )  # fmt: skip
    assert again.returncode == 1 and "already exists" in again.stderr


def test_fork_creates_a_new_sqlite_file_for_the_destination(url: str, tmp_path: Path) -> None:
    new = tmp_path / "new.db"
    result = cli(
        "fork", "--storage", url, "--study-name", "s", "--at-trial", "4",
        "--sampler", "TPESampler(seed=5)", "--to-study-name", "f", "--to-storage", f"sqlite:///{new}",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    forked = optuna.load_study(study_name="f", storage=f"sqlite:///{new}")
    assert len(forked.trials) == 5

    # Reading commands still refuse a file that is not there rather than create it empty.
    missing = tmp_path / "missing.db"
    read = cli("status", "--storage", f"sqlite:///{missing}")
    assert read.returncode == 2 and "there is no SQLite database" in read.stderr
    assert not missing.exists()


def test_fork_at_a_pruned_trial_names_the_nearest_checkpoints_on_each_side(url: str) -> None:
    pruned = cli(
        "prune", "--storage", url, "--study-name", "s", "--keep-every", "5", "--keep-last", "2"
    )  # kept: trials 0 and 5, and the newest two, 8 and 9
    assert pruned.returncode == 0, pruned.stderr

    def fork_at(trial: int) -> str:
        result = cli(
            "fork", "--storage", url, "--study-name", "s", "--at-trial", str(trial),
            "--sampler", "TPESampler(seed=5)", "--to-study-name", f"f{trial}",
        )  # fmt: skip
        assert result.returncode == 1, result.stdout + result.stderr
        return " ".join(result.stderr.split())

    assert "the nearest trials that have one are trial 0 before it and trial 5 after it" in (
        fork_at(3)
    )
    assert "the nearest trials that have one are trial 5 before it and trial 8 after it" in (
        fork_at(7)
    )


def test_fork_reports_the_trial_it_forked_at_in_both_numberings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'interrupted.sqlite3'}"
    study = open_study(url)
    study.optimize(objective, n_trials=3)
    study.ask()  # trial 3, left RUNNING as by a killed process
    del study
    gc.collect()
    open_study(url).optimize(objective, n_trials=5)  # trial 4 retries it: logical trial 3

    result = cli(
        "fork", "--storage", url, "--study-name", "s", "--at-trial", "6",
        "--sampler", "TPESampler(seed=5)", "--to-study-name", "f",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "Created study 'f' from study 's' up to its trial 6 (logical trial 5): its 6 logical "
        "trials 0 to 5, numbered 0 to 5 in the new study, and the sampler's state after them.",
        f"Continue it with study_name='f', storage={url!r} and CheckpointingSampler(<the same "
        "sampler>): it proposes what 's' proposed after its trial 6.",
    ]


# -- output that is not a terminal: tables as wide as their cells --------------------------

LONG_STUDY = "resnet-50-baseline-on-imagenet-with-mixup-cutmix-and-label-smoothing-sweep-2024"
LONG_WORKERS = ("gpu-node-17.a100-partition.cluster.example.org", "gpu-node-18.a100-partition.x")


def piped(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the command with stdout captured, as in a pipe; COLUMNS as a terminal of 80 gives."""
    return run_command(main, list(args), prog_name="optuna-checkpoint", env={"COLUMNS": "80"})


def test_piped_tables_keep_each_row_on_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'long.sqlite3'}"
    for worker in LONG_WORKERS:
        study = optuna.create_study(
            study_name=LONG_STUDY,
            storage=url,
            load_if_exists=True,
            sampler=CheckpointingSampler(TPESampler(seed=5), worker_id=worker),
        )
        study.optimize(objective, n_trials=3)
        del study

    listing = piped("status", "--storage", url)
    assert listing.returncode == 0, listing.stderr
    assert [row[0] for row in rows(listing.stdout)] == [LONG_STUDY]

    detail = piped("status", "--storage", url, "--study-name", LONG_STUDY)
    assert detail.returncode == 0, detail.stderr
    assert [row[:2] for row in rows(detail.stdout)] == [[w, "released"] for w in LONG_WORKERS]
    (reason,) = [line for line in detail.stdout.splitlines() if "checkpoint streams (" in line]
    assert reason.strip().startswith("- 2 checkpoint streams")
    assert reason.endswith("has no single trajectory to reproduce")

    pruned = piped("prune", "--storage", url, "--study-name", LONG_STUDY, "--keep-last", "2")
    assert pruned.returncode == 0, pruned.stderr
    assert [row[0] for row in rows(pruned.stdout)] == list(LONG_WORKERS)

    forked = piped(
        "fork", "--storage", url, "--study-name", LONG_STUDY, "--at-trial", "5",
        "--sampler", "TPESampler(seed=5)", "--to-study-name", LONG_STUDY + "-fork",
    )  # fmt: skip
    assert forked.returncode == 0, forked.stdout + forked.stderr
    (created,) = [line for line in forked.stdout.splitlines() if line.startswith("Created")]
    assert f"Created study {LONG_STUDY + '-fork'!r} from study {LONG_STUDY!r} up to" in created
    assert created.endswith("and the sampler's state after them.")


# -- the package's layout: one registry of verbs, and no import cycle ----------------------

CLI_PACKAGE = "optuna_checkpoint.cli"
VERB_MODULES = {"_status", "_prune", "_verify", "_fork", "_transfer", "_rekey"}


def imported_modules(path: Path) -> set[str]:
    """The modules a file imports at any depth, by full name (``from a import b``: a and a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name} has a relative import"
            assert node.module is not None
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


def package_directory(package: str) -> Path:
    return Path(str(importlib.import_module(package).__file__)).parent


def package_imports(package: str) -> dict[str, set[str]]:
    """For each module of ``package``: the names of the package's modules it imports."""
    directory = package_directory(package)
    modules = {path.stem for path in directory.glob("*.py")}
    graph = {}
    for path in directory.glob("*.py"):
        imported = imported_modules(path)
        assert package not in imported, f"{path.name} imports the package {package} itself"
        graph[path.stem] = {m for m in modules if f"{package}.{m}" in imported}
    return graph


def test_the_cli_package_runs_no_code_and_imports_in_one_direction() -> None:
    graph = package_imports(CLI_PACKAGE)
    init = ast.parse((package_directory(CLI_PACKAGE) / "__init__.py").read_text())
    assert [type(node) for node in init.body] == [ast.Expr]  # the docstring, nothing else
    assert graph["__main__"] == {"_main"}
    assert graph["_main"] == VERB_MODULES
    for verb in VERB_MODULES:
        assert graph[verb] <= {"_common", "_render"}, verb
    assert graph["_common"] == graph["_render"] == set()
    assert set(graph) == {"__init__", "__main__", "_main", "_common", "_render", *VERB_MODULES}


def test_every_verb_is_registered_once_and_the_version_is_the_package_s() -> None:
    verbs = ["export", "fork", "import", "prune", "rekey", "rewind", "status", "verify"]
    assert sorted(main.commands) == verbs
    assert sorted(command.name or "" for command in VERBS) == verbs
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"optuna-checkpoint, version {optuna_checkpoint.__version__}\n"
    # pyproject.toml reads the version from the same place.
    assert importlib.metadata.version("optuna-checkpoint") == optuna_checkpoint.__version__


def test_python_m_runs_the_command() -> None:
    result = cli_process([sys.executable, "-m", "optuna_checkpoint.cli"], "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: optuna-checkpoint [OPTIONS] COMMAND")


def test_the_command_runs_as_a_real_process(url: str) -> None:
    # The console script pip installed (beside this interpreter): a report, and a problem.
    beside = Path(sys.executable).with_name("optuna-checkpoint")
    script = str(beside) if beside.exists() else shutil.which("optuna-checkpoint")
    assert script, "the optuna-checkpoint console script is not installed"
    result = cli_process([script], "status", "--storage", url, "--study-name", "s", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["study_name"], report["trials"], report["resume_exact"]) == ("s", 10, True)
    missing = cli_process([script], "status", "--storage", url, "--study-name", "nope")
    assert missing.returncode == 1 and "nope" in missing.stderr
