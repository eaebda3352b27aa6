"""`reconciler ledger ...`: the ledger's listings for people and machines.

Owns: the options of history, generations, events, cost, orphans, report and rebuild, and
choosing the output (rich tables that fit 80 columns, `--json`, `--csv`). Must not:
compute costs or classify orphans (the ledger, `costs`, `orphans` and `accounting` do).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from reconciler import accounting, engine
from reconciler.cli.common import (
    F,
    desired_option,
    domain_errors,
    fail,
    json_option,
    open_ledger,
    refuse_libcloud_debug,
)
from reconciler.cli.root import cli
from reconciler.desired import parse_duration
from reconciler.ledger import Ledger
from reconciler.ledger.events import EVENT_KINDS
from reconciler.ops.rebuild import rebuild_ledger
from reconciler.planning.orphans import desired_services
from reconciler.present import render
from reconciler.present.report import build_report, tables
from reconciler.service.statelock import StateLock


@cli.group()
def ledger() -> None:
    """Query the ledger: history, generations, events, cost, orphans, report."""


def _filters(fn: F) -> F:
    fn = click.option("--env", help="Only this environment.")(fn)
    fn = click.option("--service", help="Only this service.")(fn)
    return fn


def _when(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    """An ISO-8601 date or time (UTC unless it says otherwise), or a duration ago (`7d`)."""
    if value is None:
        return None
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(value))
    except (ValueError, OverflowError):
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a time (2026-11-29, 2026-11-29T09:00) nor a duration (7d)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _since(fn: F) -> F:
    return click.option(
        "--since", callback=_when, help="From this time (ISO-8601) or this long ago (7d)."
    )(fn)


def _csv_option(fn: F) -> F:
    return click.option("--csv", "as_csv", is_flag=True, help="CSV with a header on stdout.")(fn)


def _print_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    writer = csv.DictWriter(sys.stdout, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


@contextmanager
def _reading(ctx: click.Context) -> Iterator[Ledger]:
    with open_ledger(ctx, check="none") as store, domain_errors():
        yield store


# ---------------------------------------------------------------- history and generations

HUMAN_SERVICES = 20  # services per human-readable history page
# Bounds of the paging options: past these SQLite's 64-bit OFFSET arithmetic overflows,
# and no ledger holds more.
MAX_LIMIT = 1_000_000
MAX_PAGE = 1_000_000

HISTORY_CSV = (
    "env", "service", "number", "state", "image", "size", "count", "commit",
    "commit_subject", "commit_signer", "created_at", "activated_at", "retired_at", "destroyed_at",
    "reason", "instances_created", "instances_live", "cost",
)  # fmt: skip


@ledger.command()
@_filters
@_since
@click.option(
    "--limit", type=click.IntRange(min=0, max=MAX_LIMIT), help="At most this many per service."
)
@click.option(
    "--page", type=click.IntRange(min=1, max=MAX_PAGE), default=1, help="Page (with --limit)."
)
@json_option
@_csv_option
@click.pass_context
def history(
    ctx: click.Context,
    env: str | None,
    service: str | None,
    since: datetime | None,
    limit: int | None,
    page: int,
    as_json: bool,
    as_csv: bool,
) -> None:
    """Per service, its generations in order: image, commit, lifetime, why it ended, cost.

    Pages count back from each service's newest generation: `--limit 20 --page 2`
    shows the 20 before the newest 20.
    """
    offset = (page - 1) * limit if limit is not None else 0
    human = not (as_json or as_csv)
    hidden = 0
    with _reading(ctx) as store:
        if human and service is None:
            # A terminal shows a page, not a fleet: at most HUMAN_SERVICES services' tables
            # (rendering thousands of rows takes seconds and nobody reads them).
            services = store.service_keys(env=env, since=since)
            hidden = max(0, len(services) - HUMAN_SERVICES)
            rows = [
                row
                for key_env, key_service in services[:HUMAN_SERVICES]
                for row in store.history_rows(
                    env=key_env, service=key_service, limit=limit, offset=offset, since=since
                )
            ]
        else:
            rows = store.history_rows(
                env=env, service=service, limit=limit, offset=offset, since=since
            )
    if as_json:
        render.print_json(rows)
    elif as_csv:
        _print_csv(rows, HISTORY_CSV)
    else:
        tables.print_history(Console(), rows)
        if limit is not None and len(rows) >= limit:
            click.echo(f"(older generations: --page {page + 1})", err=True)
        if hidden:
            click.echo(
                f"({hidden} more services not shown: narrow with --env/--service, "
                "or use --json/--csv for all)",
                err=True,
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
    with _reading(ctx) as store:
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


EVENT_COLUMNS = ("at", "run", "kind", "env", "service", "generation", "instance", "detail")


def _with_kinds(command: click.Command) -> click.Command:
    """The events command's help lists every kind with what it records."""
    lines = "\n".join(f"{kind}: {what}" for kind, what in EVENT_KINDS.items())
    command.help = f"{command.help or ''}\n\nKinds:\n\n\b\n{lines}"
    return command


@_with_kinds
@ledger.command()
@_filters
@_since
@click.option(
    "--kind",
    type=click.Choice(sorted(EVENT_KINDS)),
    metavar="KIND",
    help="Only events of this kind (the list is in the help above).",
)
@click.option("--limit", type=click.IntRange(min=0, max=MAX_LIMIT), default=200,
              show_default=True,
              help="The newest N events (0: all).")  # fmt: skip
@json_option
@_csv_option
@click.pass_context
def events(
    ctx: click.Context,
    env: str | None,
    service: str | None,
    since: datetime | None,
    kind: str | None,
    limit: int,
    as_json: bool,
    as_csv: bool,
) -> None:
    """What happened, oldest first (the kinds are listed below)."""
    with _reading(ctx) as store:
        rows = store.event_rows(
            kind=kind, env=env, service=service, since=since, limit=limit or None
        )
    if as_json:
        render.print_json(rows)
    elif as_csv:
        _print_csv([{**r, "detail": tables.compact_json(r["detail"])} for r in rows], EVENT_COLUMNS)
    else:
        tables.print_events(Console(), rows)


# ---------------------------------------------------------------- cost

COST_BY = ("env", "service", "generation", "day", "provider")


@ledger.command()
@_since
@click.option("--until", callback=_when, help="Up to this time (ISO-8601) or this long ago.")
@click.option("--by", type=click.Choice(COST_BY), default="service", show_default=True)
@json_option
@_csv_option
@click.pass_context
def cost(
    ctx: click.Context,
    since: datetime | None,
    until: datetime | None,
    by: str,
    as_json: bool,
    as_csv: bool,
) -> None:
    """What the instances cost: price per hour x billed time, grouped, with a total.

    Billing follows each provider profile (`per-second` with a minimum, or `per-hour`
    rounded up). The safety net line is what standby time and failed generations cost.
    """
    now = datetime.now(UTC)
    with _reading(ctx) as store:
        rows = store.cost_rows(by=by, since=since, until=until, now=now)
        net = store.safety_net_cost(since=since, until=until, now=now)
    document = tables.cost_document(rows, by=by, since=since, until=until, now=now, net=net)
    if as_json:
        render.print_json(document)
    elif as_csv:
        columns = [*tables.COST_KEYS[by], "instances", "billed_hours", "cost"]
        total = {columns[0]: "total", "cost": document["total"]}
        _print_csv([*document["rows"], total], columns)
    else:
        tables.print_cost(Console(), document)


# ---------------------------------------------------------------- orphans


@ledger.command()
@click.option("--live", is_flag=True, help="List the clouds now (needs --desired).")
@click.option(
    "--include-unowned",
    is_flag=True,
    help="Also instances without our owner tag (reported, never touched); lists live.",
)
@desired_option
@json_option
@click.pass_context
def orphans(
    ctx: click.Context, live: bool, include_unowned: bool, desired_dir: Path, as_json: bool
) -> None:
    """What runs (and bills) that nothing desires, what it cost so far, what to do.

    Without --live, the daemon's last recorded observation is judged (its time is shown).
    """
    now = datetime.now(UTC)
    live = live or include_unowned
    with _reading(ctx) as store:
        if live:
            refuse_libcloud_debug()
            desired = engine.read_desired(desired_dir)
            providers = engine.build_providers(desired)
            observations = accounting.live_observations(
                desired, providers, include_unowned=include_unowned, now=now
            )
            report = accounting.find_orphans(
                store,
                now=now,
                observations=observations,
                desired=desired_services(desired),
                include_unowned=include_unowned,
                live_volumes=accounting.live_volume_listing(desired, providers),
                volume_services={(s.env, s.name) for s in desired.services() if s.volume},
            )
        else:
            report = accounting.find_orphans(store, now=now)
    rows = [o.to_json() for o in report.orphans]
    if as_json:
        render.print_json(rows)
        return
    tables.print_orphans(Console(), rows, observed_at=report.observed_at, live=report.live)


# ---------------------------------------------------------------- report


@ledger.command()
@click.option("--html", "html_path", required=True,
              type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write the self-contained HTML report here.")  # fmt: skip
@click.option("--days", type=click.IntRange(min=1, max=366), default=30, show_default=True,
              help="How many days the timeline and the cost chart cover.")  # fmt: skip
@click.pass_context
def report(ctx: click.Context, html_path: Path, days: int) -> None:
    """One self-contained HTML page: timelines, cost per day, orphans, last runs."""
    now = datetime.now(UTC)
    with _reading(ctx) as store:
        page = build_report(store, now=now, days=days)
    try:
        html_path.write_text(page, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {html_path}: {exc}")
    click.echo(f"wrote {html_path}", err=True)


# ---------------------------------------------------------------- rebuild


@ledger.command()
@desired_option
@click.option("--yes", is_flag=True, help="Set an existing ledger aside (never deleted).")
@json_option
@click.pass_context
def rebuild(ctx: click.Context, desired_dir: Path, yes: bool, as_json: bool) -> None:
    """Rebuild generations and instances from the cloud's tags after losing the ledger.

    Runs, events and the cost history before the rebuild cannot be recovered.
    """
    refuse_libcloud_debug()
    state_dir = ctx.obj["state_dir"]
    with domain_errors(), StateLock(state_dir):
        desired = engine.read_desired(desired_dir)
        providers = engine.build_providers(desired)
        result = rebuild_ledger(state_dir, desired, providers, force=yes, now=datetime.now(UTC))
    click.echo(f"warning: {result.warning}", err=True)
    if result.backup is not None:
        click.echo(f"the previous ledger was moved to {result.backup}", err=True)
    if as_json:
        render.print_json(result.to_json())
        return
    render.print_rows(Console(), result.generations,
                      ("env", "service", "number", "state", "count", "fingerprint"),
                      title="Rebuilt generations")  # fmt: skip
    click.echo(f"Rebuilt {len(result.generations)} generations, {result.instances} instances.")
