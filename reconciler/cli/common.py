"""Shared pieces of the command line: exit codes, error translation, common options.

Owns: turning domain errors into messages and exit codes (0 ok, 1 error, 2 changes
pending, 3 refused by a guard). Must not: hold commands (see `commands`, `ledger`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console

from reconciler.desired import parse_duration
from reconciler.desired.durations import format_duration
from reconciler.errors import GuardRefused, InvalidDesiredState, ReconcilerError
from reconciler.ledger import Ledger
from reconciler.terminal import shown

EXIT_OK, EXIT_ERROR, EXIT_CHANGES, EXIT_REFUSED = 0, 1, 2, 3

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    err_console.print(f"[red]error:[/red] {shown(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


@contextmanager
def domain_errors() -> Iterator[None]:
    """Translate the package's errors to messages and exit codes, here and only here."""
    try:
        yield
    except InvalidDesiredState as exc:
        err_console.print("[red]invalid desired state:[/red]", highlight=False)
        for problem in exc.problems:
            err_console.print(f"  {shown(problem)}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_ERROR)
    except GuardRefused as exc:
        err_console.print("[red]refused by a guard; nothing was changed:[/red]")
        for reason in exc.reasons:
            err_console.print(f"  {shown(reason)}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_REFUSED)
    except ReconcilerError as exc:
        fail(str(exc))


def desired_option(fn: F) -> F:
    return click.option(
        "--desired",
        "desired_dir",
        default="desired-state",
        show_default=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Desired-state directory.",
    )(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")(fn)


def refuse_libcloud_debug() -> None:
    # With LIBCLOUD_DEBUG set, libcloud logs every request's headers: credentials included.
    if os.environ.get("LIBCLOUD_DEBUG"):
        fail("LIBCLOUD_DEBUG is set; it makes libcloud log credentials. Unset it and retry.")


def duration_between(minimum: float, maximum: float) -> Callable[..., float]:
    """A click callback: a duration string of `minimum` to `maximum` seconds."""

    def parse(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        if not minimum <= seconds <= maximum:
            raise click.BadParameter(
                f"{value!r} is out of range: from {format_duration(minimum)} "
                f"to {format_duration(maximum)}"
            )
        return seconds

    return parse


@contextmanager
def open_ledger(ctx: click.Context, *, check: str = "full") -> Iterator[Ledger]:
    """The ledger, integrity-checked before anything writes to it. Read-only listings
    pass `check="none"` (see `open_database`): on a large ledger the check would cost
    more than the answer, and reading a damaged page fails on its own."""
    with domain_errors():
        ledger = Ledger.open(ctx.obj["state_dir"], check=check)
    try:
        yield ledger
    finally:
        ledger.close()
