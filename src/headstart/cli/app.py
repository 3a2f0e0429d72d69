"""The ``headstart`` Typer application and what its commands share: one-line user errors, the rich
console, and turning a model name or checkpoint into a network."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from headstart.errors import INTERRUPTED_EXIT_CODE, USER_ERROR_EXIT_CODE, HeadstartError

if TYPE_CHECKING:
    from headstart.heads import PoolingMode

app = typer.Typer(
    name="headstart",
    help="Pretraining strategies and transfer learning on PyTorch and timm.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
zoo_app = typer.Typer(help="Named pretrained networks (Keras-style aliases and timm names).", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


def _fail(message: str, code: int = USER_ERROR_EXIT_CODE) -> None:
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)


def _console():
    """A rich console on stdout; wide when piped so that tables do not wrap into columns of words."""
    from rich.console import Console

    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200)


def user_errors(command):
    """Turn user errors raised by ``command`` into one ``error:`` line and exit code 2."""

    @functools.wraps(command)
    def guarded(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except HeadstartError as exc:
            _fail(str(exc), code=getattr(exc, "exit_code", USER_ERROR_EXIT_CODE))
        except OSError as exc:  # missing file, permission denied, disk full
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(f"{where}{exc.strerror or exc}")
        except KeyboardInterrupt:
            _fail("interrupted", code=INTERRUPTED_EXIT_CODE)

    return guarded


def _pooling_mode(value: str) -> PoolingMode:
    """The ``--pooling`` option as a pooling mode; refused as :func:`headstart.zoo.load` refuses it."""
    match value:
        case "avg" | "max" | "flatten" | "none":
            return value
    from headstart.heads import POOLING_MODES

    raise HeadstartError(f"pooling={value!r}: expected one of {', '.join(POOLING_MODES)} (or None, as 'none')")


def _network_for(model: str, weights: str, checkpoint: Path | None):
    if checkpoint is not None:
        from headstart.checkpoint import load_network

        return load_network(checkpoint)
    from headstart.zoo import load

    return load(model, weights=weights)
