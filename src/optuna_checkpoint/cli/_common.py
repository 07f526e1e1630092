"""What every verb shares: the storage and ``--json`` options, opening the storage, failing."""

from __future__ import annotations

from collections.abc import Callable
import json
from typing import IO
from typing import Any
from typing import TypeVar

import click
from optuna.storages import BaseStorage

from optuna_checkpoint.tools._inspect import open_storage


F = TypeVar("F", bound=Callable[..., Any])

PROBLEM = 1
"""Exit code of a report that a problem stopped (click exits with 2 on usage errors)."""


class Problem(click.ClickException):
    """A problem that stops the report: exit code 1, and with ``--json`` a JSON document too."""

    exit_code = PROBLEM

    def __init__(self, message: str, *, as_json: bool = False) -> None:
        super().__init__(message)
        self.as_json = as_json

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the message on stderr; with ``--json``, also ``{"error": ...}`` on stdout."""
        if self.as_json:
            click.echo(json.dumps({"error": self.format_message()}))
        super().show(file)


def storage_option(f: F) -> F:
    """``--storage URL``: the study's storage."""
    return click.option(
        "--storage",
        required=True,
        metavar="URL",
        help="Database URL (as for optuna), or the path of a JournalFileBackend journal file.",
    )(f)


def json_option(f: F) -> F:
    """``--json``: print one JSON document instead of tables."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON document instead of tables."
    )(f)


def open_or_fail(location: str, *, as_json: bool) -> BaseStorage:
    """Open ``--storage``: a bad argument is a usage error, an unreachable database a problem."""
    try:
        return open_storage(location)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--storage") from e
    except Exception as e:  # the drivers' errors: no server, bad credentials, not a database
        raise Problem(
            f"cannot open the storage {location!r}: {type(e).__name__}: {e}", as_json=as_json
        ) from e


def emit_json(document: Any) -> None:
    """Print ``document`` as the one JSON document of the run."""
    click.echo(json.dumps(document, indent=2))
