"""What the HTML report shows, read from the ledger into plain values.

Owns: choosing the window, the generations, the cost per day, the orphans and the
runs the report draws. Must not: format HTML (see `html`) or write anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from reconciler.accounting import find_orphans
from reconciler.ledger import Ledger

GENERATIONS_PER_SERVICE = 12
RUNS_SHOWN = 15
FAILED_RUNS_SHOWN = 50


@dataclass(frozen=True)
class ReportData:
    now: datetime
    start: datetime
    generations: list[dict[str, Any]]  # history rows overlapping the window
    cost_by_day: list[dict[str, Any]]  # day, env, service, cost
    total_cost: float
    orphans: list[dict[str, Any]]
    observed_at: datetime | None
    runs: list[dict[str, Any]]
    failed_runs: list[dict[str, Any]]  # failed, refused or interrupted, in the window


def _parse(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def gather_report(ledger: Ledger, *, now: datetime, days: int) -> ReportData:
    start = now - timedelta(days=days)
    history = ledger.history_rows(limit=GENERATIONS_PER_SERVICE, now=now)
    shown = []
    for row in history:
        ended = _parse(row.get("destroyed_at"))
        if ended is None or ended >= start:
            shown.append(row)
    # Open-ended like `ledger cost --since`: a started hour or a billing minimum is owed
    # in full once it starts, so the window must not cut it off at `now`.
    by_day = ledger.cost_rows(by="day", since=start, until=None, now=now)
    orphans = find_orphans(ledger, now=now)
    return ReportData(
        now=now,
        start=start,
        generations=shown,
        cost_by_day=by_day,
        total_cost=sum(row["cost"] or 0.0 for row in by_day),
        orphans=[o.to_json() for o in orphans.orphans],
        observed_at=orphans.observed_at,
        runs=ledger.run_rows(limit=RUNS_SHOWN),
        failed_runs=ledger.failed_run_rows(since=start, limit=FAILED_RUNS_SHOWN),
    )
