"""The ledger's listings as rich tables for an 80-column terminal, and their JSON shapes.

Owns: how history, events, cost and orphans look on a terminal, and the cost
document `ledger cost --json` prints. Must not: query the ledger or compute costs
(rows arrive computed), or print anything but the tables it is given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from reconciler.planning.orphans import ADVICE
from reconciler.present.formatting import human_time, money
from reconciler.present.terminal import shown

COST_KEYS: dict[str, tuple[str, ...]] = {
    "env": ("env",),
    "service": ("env", "service"),
    "generation": ("env", "service", "generation", "state"),
    "day": ("day", "env", "service"),
    "provider": ("provider",),
}


def short_time(text: str | None) -> str:
    """A stored ISO-8601 time as people read it (`formatting.human_time`)."""
    return human_time(text)


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m" if minutes else f"{seconds}s"


def compact_json(value: Any) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _table(title: str | None = None) -> Table:
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        expand=False,
        padding=(0, 1, 0, 0),
        pad_edge=False,
    )


# ---------------------------------------------------------------- history


def print_history(console: Console, rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        console.print("(no generations recorded)")
        return
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["env"], row["service"]), []).append(row)
    for (env, service), members in groups.items():
        table = _table(f"[bold]{shown(env)}/{shown(service)}[/bold]")
        table.add_column("g", justify="right", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("image", no_wrap=True, overflow="ellipsis", max_width=14)
        table.add_column("commit", overflow="fold", max_width=16)
        table.add_column("when", no_wrap=True)
        table.add_column("why ended", overflow="fold", max_width=11)
        table.add_column("cost", justify="right", no_wrap=True)
        for row in members:
            commit = (row.get("commit") or "")[:8]
            subject = row.get("commit_subject") or ""
            stamps = [
                (mark, row.get(column))
                for mark, column in (
                    ("c", "created_at"),
                    ("a", "activated_at"),
                    ("s", "retired_at"),
                    ("d", "destroyed_at"),
                )
                if row.get(column)
            ]
            table.add_row(
                str(row["number"]),
                row["state"],
                shown(row.get("image") or "-"),
                shown(f"{commit} {subject}".strip() or "-"),
                "\n".join(f"{mark} {short_time(value)}" for mark, value in stamps),
                shown(row.get("reason") or "-"),
                money(row.get("cost")),
            )
        console.print(table)
    console.print("when: c created, a active, s standby (or failed), d destroyed", style="dim")


# ---------------------------------------------------------------- events


def print_events(console: Console, rows: Sequence[Mapping[str, Any]]) -> None:
    table = _table("Events")
    table.add_column("at", no_wrap=True)
    table.add_column("kind", no_wrap=True, overflow="ellipsis", max_width=20)
    table.add_column("target", overflow="fold", max_width=26)
    table.add_column("detail", overflow="fold", min_width=10)
    for row in rows:
        target = "/".join(str(row[k]) for k in ("env", "service") if row.get(k))
        if row.get("generation") is not None:
            target += f" g{row['generation']}"
        if row.get("instance"):
            target += f" {row['instance']}"
        detail = compact_json(row.get("detail"))
        table.add_row(
            short_time(row["at"]),
            shown(row["kind"]),
            shown(target.strip() or "-"),
            shown(detail[:200] or "-"),
        )
    console.print(table)
    if not rows:
        console.print("(no events recorded)")


# ---------------------------------------------------------------- cost


def cost_document(
    rows: Sequence[Mapping[str, Any]],
    *,
    by: str,
    since: datetime | None,
    until: datetime | None,
    now: datetime,
    net: Mapping[str, float],
) -> dict[str, Any]:
    """`ledger cost --json`: the rows, their total (the sum of the rows), the safety net."""
    clean = [{**row, "cost": round(row["cost"] or 0.0, 6)} for row in rows]
    return {
        "by": by,
        "since": since,
        "until": until,
        "at": now,
        "rows": clean,
        "total": round(sum(row["cost"] for row in clean), 6),
        "safety_net": {name: round(value, 6) for name, value in net.items()},
    }


def print_cost(console: Console, document: Mapping[str, Any]) -> None:
    keys = COST_KEYS[document["by"]]
    window = " ".join(
        f"{label} {document[k]:%Y-%m-%d %H:%M}"
        for label, k in (("since", "since"), ("until", "until"))
        if document[k] is not None
    )
    table = _table(f"Cost by {document['by']}" + (f" ({window})" if window else ""))
    for key in keys:
        table.add_column(key, no_wrap=True, overflow="ellipsis", max_width=20)
    table.add_column("instances", justify="right", no_wrap=True)
    table.add_column("hours", justify="right", no_wrap=True)
    table.add_column("cost", justify="right", no_wrap=True)
    for row in document["rows"]:
        cells = ["-" if row.get(k) is None else shown(str(row[k])) for k in keys]
        table.add_row(*cells, str(row["instances"]), f"{row['billed_hours']:,.1f}",
                      money(row["cost"]))  # fmt: skip
    table.add_section()
    table.add_row("[bold]total[/bold]", *([""] * (len(keys) + 1)),
                  f"[bold]{money(document['total'])}[/bold]")  # fmt: skip
    console.print(table)
    net = document["safety_net"]
    console.print(
        f"Safety net: standby time {money(net.get('standby'))}, "
        f"failed generations {money(net.get('failed'))}"
    )


# ---------------------------------------------------------------- orphans


def print_orphans(
    console: Console,
    rows: Sequence[Mapping[str, Any]],
    *,
    observed_at: datetime | None,
    live: bool,
) -> None:
    if live:
        console.print("Orphans, judged on a live listing of the clouds")
    elif observed_at is None:
        console.print(
            "No observation recorded yet: run `reconciler apply` (or the daemon), "
            "or use --live --desired DIR"
        )
    else:
        console.print(
            f"Orphans, judged on the last pass's observation at {observed_at:%Y-%m-%d %H:%M} UTC"
        )
    if not rows:
        console.print("No orphans.")
        return
    table = _table()
    table.add_column("kind", no_wrap=True)
    table.add_column("instance", no_wrap=True, overflow="ellipsis", max_width=22)
    table.add_column("where", overflow="fold", max_width=22)
    table.add_column("age", justify="right", no_wrap=True)
    table.add_column("cost", justify="right", no_wrap=True)
    for row in rows:
        where = "/".join(str(row[k]) for k in ("env", "service") if row.get(k))
        if row.get("generation") is not None:
            where += f" g{row['generation']}"
        if not where:
            where = row.get("state") or "-"
        table.add_row(
            row["kind"],
            shown(row.get("instance") or "-"),
            shown(where),
            age(row.get("age_seconds")),
            money(row.get("cost")),
        )
    console.print(table)
    total = sum(row.get("cost") or 0.0 for row in rows)
    console.print(f"Cost so far: {money(total)}")
    monthly = sum(row.get("monthly_cost") or 0.0 for row in rows)
    if monthly:
        console.print(f"Volumes and snapshots: {money(monthly)} a month while they are kept")
    console.print("What to do:")
    for kind in dict.fromkeys(row["kind"] for row in rows):
        console.print(shown(f"  {kind}: {ADVICE[kind]}"), soft_wrap=False)
