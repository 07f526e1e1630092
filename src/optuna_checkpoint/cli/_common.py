"""What the verbs share: their options, opening the storage, building ``--sampler``, failing."""

from __future__ import annotations

from collections.abc import Callable
import importlib
import json
import re
from typing import IO
from typing import Any
from typing import TypeVar

import click
import optuna
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage

from optuna_checkpoint.tools._inspect import open_storage


F = TypeVar("F", bound=Callable[..., Any])

PROBLEM = 1
"""Exit code of a report that a problem stopped (click exits with 2 on usage errors)."""

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


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


def open_or_fail(
    location: str, *, as_json: bool, option: str = "--storage", create: bool = False
) -> BaseStorage:
    """Open a storage option: a bad argument is a usage error, an unreachable database a problem.

    Args:
        location: The option's value.
        as_json: Whether a problem is also reported as JSON.
        option: The option named in a usage error.
        create: Create a missing SQLite file (for a destination only; see ``open_storage``).
    """
    try:
        return open_storage(location, create=create)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=option) from e
    except Exception as e:  # the drivers' errors: no server, bad credentials, not a database
        raise Problem(
            f"cannot open the storage {location!r}: {type(e).__name__}: {e}", as_json=as_json
        ) from e


def emit_json(document: Any) -> None:
    """Print ``document`` as the one JSON document of the run."""
    click.echo(json.dumps(document, indent=2))


def load_sampler(spec: str) -> BaseSampler:
    """Build the sampler a ``--sampler`` option names.

    ``package.module:name`` imports ``name``, calling it without arguments if it is not a
    sampler already (a factory). Anything else is evaluated as a Python expression in which
    ``optuna`` and Optuna's samplers are defined, e.g. ``TPESampler(seed=42)``. Both run code
    you chose on your own command line, as ``python -c`` would.

    Raises:
        click.BadParameter: The spec does not give a sampler.
    """
    try:
        if _IMPORT_PATH.match(spec):
            module_name, _, attribute = spec.partition(":")
            found: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                found = getattr(found, part)
            built = found if isinstance(found, BaseSampler) else found()
        else:
            names = {name: getattr(optuna.samplers, name) for name in optuna.samplers.__all__}
            built = eval(spec, {"optuna": optuna, **names})  # the user's own command line
    except Exception as e:
        raise click.BadParameter(f"{type(e).__name__}: {e}", param_hint="--sampler") from e
    if not isinstance(built, BaseSampler):
        raise click.BadParameter(
            f"gives a {type(built).__name__}, not an Optuna sampler", param_hint="--sampler"
        )
    return built
