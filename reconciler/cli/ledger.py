"""`reconciler ledger ...`: the ledger's listings for people and machines."""

from __future__ import annotations

import click
from rich.console import Console

from reconciler import render
from reconciler.cli.common import F, domain_errors, json_option, open_ledger
from reconciler.cli.root import cli


@cli.group()
def ledger() -> None:
    """Query the ledger."""


def _filters(fn: F) -> F:
    fn = click.option("--env", help="Only this environment.")(fn)
    fn = click.option("--service", help="Only this service.")(fn)
    return fn


@ledger.command()
@_filters
@click.option("--limit", type=int, help="At most this many generations.")
@json_option
@click.pass_context
def history(
    ctx: click.Context, env: str | None, service: str | None, limit: int | None, as_json: bool
) -> None:
    """Per service, its generations in order: image, commit, lifetime, why it ended."""
    with open_ledger(ctx) as store, domain_errors():
        rows = store.history_rows(env=env, service=service, limit=limit)
    if as_json:
        render.print_json(rows)
    else:
        render.print_rows(
            Console(),
            render.compact_generation_rows(rows),
            render.COMPACT_COLUMNS,
            title="Generation history",
        )


@ledger.command()
@_filters
@click.option("--state", help="Only generations in this state (active, standby, ...).")
@json_option
@click.pass_context
def generations(
    ctx: click.Context, env: str | None, service: str | None, state: str | None, as_json: bool
) -> None:
    """Every generation with its state."""
    with open_ledger(ctx) as store, domain_errors():
        rows = store.generation_rows(env=env, service=service, state=state)
    if as_json:
        render.print_json(rows)
    else:
        render.print_rows(
            Console(),
            render.compact_generation_rows(rows),
            render.COMPACT_COLUMNS,
            title="Generations",
        )
