"""The typer application and the one rule every command follows for bad input.

Commands live in their own modules under ``brgm_pyro.cli`` and register themselves with
``@app.command()``; ``brgm_pyro/cli/__init__.py`` imports them (one line per command module).

A :class:`~brgm_pyro.errors.BRGMError` raised anywhere below a command becomes one line on stderr
(``error: <message>``) and exit status 2, with no traceback. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

import typer

from brgm_pyro.errors import BRGMError

app = typer.Typer(
    name="brgm",
    help="Bayesian image reconstruction with deep generative priors (BRGM), in Pyro.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable)


def fail(message: str, code: int = 2) -> "typer.Exit":
    """Print ``error: message`` on one line to stderr and return the Exit to raise."""
    msg = " ".join(str(message).split())  # one line, whatever the message held
    print(f"error: {msg}", file=sys.stderr)
    return typer.Exit(code)


def user_errors(fn: F) -> F:
    """Decorator for command functions: BRGMError -> one line + exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BRGMError as e:
            raise fail(str(e)) from None

    return wrapper  # type: ignore[return-value]
