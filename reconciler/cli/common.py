"""Shared pieces of the command line: exit codes, error translation, common options.

Owns: turning domain errors into messages and exit codes (0 ok, 1 error, 2 changes
pending, 3 refused by a guard). Must not: hold commands (see `commands`, `ledger`).
"""

from __future__ import annotations

import getpass
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console

from reconciler.cli.exitcodes import EXIT_CHANGES, EXIT_ERROR, EXIT_OK, EXIT_REFUSED
from reconciler.desired import parse_duration
from reconciler.durations import format_duration
from reconciler.errors import (
    GuardRefused,
    InvalidDesiredState,
    PromotionRefused,
    ReconcilerError,
    StateLocked,
)
from reconciler.ledger import Ledger
from reconciler.present.terminal import shown
from reconciler.service.statelock import StateLock

__all__ = ["EXIT_CHANGES", "EXIT_ERROR", "EXIT_OK", "EXIT_REFUSED"]

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
    except PromotionRefused as exc:
        err_console.print("[red]refused; no commit was written:[/red]")
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


def act_or_request(
    ctx: click.Context,
    kind: str,
    env: str,
    service: str | None,
    *,
    wait: float,
    act: Callable[[Ledger], str],
) -> None:
    """Run an operator command here when the state directory is free; when a daemon
    holds it, record the command as a request, which the daemon acts on between
    operations, and print its answer. Nothing is left behind to surprise anyone: a
    request not taken within `wait` is withdrawn."""
    try:
        lock = StateLock(ctx.obj["state_dir"]).acquire()
    except StateLocked as exc:
        holder = exc.holder
    else:
        try:
            with domain_errors(), open_ledger(ctx) as ledger:
                click.echo(act(ledger))
        finally:
            lock.release()
        return
    with open_ledger(ctx) as ledger, domain_errors():
        request = ledger.add_request(
            kind=kind, env=env, service=service, requested_by=who_is_asking(), at=datetime.now(UTC)
        )
        err_console.print(
            f"the state directory is held by a running reconciler (pid {holder}): request "
            f"{request} recorded; it acts on it between operations",
            highlight=False, soft_wrap=True,
        )  # fmt: skip
        row = _await_answer(ledger, request, wait)
        within = format_duration(wait)
        if row is None:
            fail(
                f"request {request} was not taken within {within} and was withdrawn; nothing "
                "was changed (is the holder an `apply`? retry after it)"
            )
        if row["state"] == "taken":
            fail(
                f"request {request} is being acted on but was not answered within {within}; "
                "`reconciler status` shows its answer"
            )
    if row["state"] != "done":
        fail(f"request {request} {row['state']}: {row['answer']}")
    click.echo(row["answer"])


def _await_answer(ledger: Ledger, request: int, wait: float) -> dict[str, Any] | None:
    """The request's row once answered (or still taken at the deadline); None when
    nobody took it in time, in which case it is withdrawn."""
    deadline = time.monotonic() + wait
    while True:
        row = ledger.request_row(request)
        if row is not None and row["state"] not in ("pending", "taken"):
            return row
        if time.monotonic() >= deadline:
            why = "not taken in time by the process holding the state directory"
            if ledger.cancel_request(request, why=why, at=datetime.now(UTC)):
                return None
            return ledger.request_row(request)
        time.sleep(0.1)


def who_is_asking() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"{user} (pid {os.getpid()})"


def _desired_for_completion(ctx: click.Context) -> Any:
    from reconciler import engine

    directory = ctx.params.get("desired_dir") or Path("desired-state")
    try:
        return engine.read_desired(directory)
    # A completion never fails the shell: no suggestions instead.
    except Exception as exc:
        if os.environ.get("RECONCILER_DEBUG_COMPLETION"):
            print(f"completion: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def complete_env(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion: the environments of the desired state (`--desired` or
    ./desired-state)."""
    desired = _desired_for_completion(ctx)
    if desired is None:
        return []
    return sorted(e.name for e in desired.environments if e.name.startswith(incomplete))


def complete_service(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion: the services of the environment given before it."""
    desired = _desired_for_completion(ctx)
    env = ctx.params.get("env")
    if desired is None:
        return []
    return sorted(
        s.name for s in desired.services() if s.env == env and s.name.startswith(incomplete)
    )
