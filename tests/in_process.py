"""Run a click command in this process and get back what a process would have given."""

from __future__ import annotations

from collections.abc import Mapping
import subprocess
import traceback

import click
from click.testing import CliRunner


def run_command(
    command: click.Command,
    args: list[str],
    *,
    prog_name: str,
    env: Mapping[str, str | None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Invoke ``command`` with ``args`` through click's test runner, as a process would run it.

    The exit code, stdout and stderr are the process's: click's own handling of usage errors and
    of its exceptions, and, for any other exception, exit code 1 and the traceback on stderr, as
    the interpreter prints it. ``env`` is set (a ``None`` value unset) for the call only.
    """
    result = CliRunner(env=env).invoke(command, args, prog_name=prog_name)
    stderr = result.stderr
    if result.exc_info is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return subprocess.CompletedProcess([prog_name, *args], result.exit_code, result.stdout, stderr)
