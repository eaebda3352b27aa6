"""Instance cost in SQL: the billing rules of `reconciler.costs`, evaluated by SQLite.

Owns: the SQL that prices instance rows (so a million rows are summed without
leaving SQLite) and the cost listings built on it: by env, service, generation or
day, and the "safety net" (standby time and failed generations). Must not: write,
take locks or open transactions; `Ledger` calls these under its lock. Tests compare
these figures with `reconciler.costs.instance_cost` for the same rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlite_utils import Database

# Far past / far future in epoch seconds: an open window end.
_OPEN = 1e15
_UNIX_EPOCH_JD = 2440587.5


def _epoch(column: str) -> str:
    return f"(julianday({column}) - {_UNIX_EPOCH_JD}) * 86400.0"


def _ceil(expr: str) -> str:
    # ceil() needs SQLite's optional math functions; this works on every build (x >= 0).
    return f"(CAST({expr} AS INTEGER) + (({expr}) > CAST({expr} AS INTEGER)))"


# One row per instance: its start, its billed end and its price. `created_s` and
# `ended_s` are kept by the store; the julianday fallbacks cover rows written by
# other means (a rebuild, an operator's sqlite3).
_PRICED = f"""
    SELECT i.id, i.provider, i.env, i.service, i.generation, i.state,
           COALESCE(i.price_per_hour, 0.0) AS price,
           start_s,
           start_s + CASE
               WHEN COALESCE(b.billing, 'per-second') = 'per-hour'
               THEN max(1, {_ceil("life_s / 3600.0")}) * 3600.0
               ELSE max(life_s, COALESCE(b.billing_minimum, 60.0))
           END AS billed_end_s
    FROM (
        SELECT i.*, start_s,
               max(0.0, round(COALESCE(i.ended_s, {_epoch("i.destroyed_at")}, :now)
                              - start_s, 3)) AS life_s
        FROM (SELECT i.*, COALESCE(i.created_s, {_epoch("i.created_at")}) AS start_s
              FROM instances i) i
    ) i
    LEFT JOIN provider_billing b ON b.provider = i.provider
"""


def _window_cost(low: str = ":since", high: str = ":until") -> str:
    """Price x the part of [start, billed end) inside [low, high), in currency."""
    return f"p.price * max(0.0, min(p.billed_end_s, {high}) - max(p.start_s, {low})) / 3600.0"


def _window_hours(low: str = ":since", high: str = ":until") -> str:
    return f"max(0.0, min(p.billed_end_s, {high}) - max(p.start_s, {low})) / 3600.0"


def _params(now: datetime, since: datetime | None, until: datetime | None) -> dict[str, float]:
    return {
        "now": now.timestamp(),
        "since": since.timestamp() if since is not None else -_OPEN,
        "until": until.timestamp() if until is not None else _OPEN,
    }


GROUPS = {
    "env": ("p.env",),
    "service": ("p.env", "p.service"),
    "generation": ("p.env", "p.service", "p.generation"),
    "provider": ("p.provider",),
}


def cost_rows(
    db: Database, *, by: str, now: datetime, since: datetime | None, until: datetime | None
) -> list[dict[str, Any]]:
    """Cost per group inside the window, largest first for people, keyed for machines."""
    params = _params(now, since, until)
    if by == "day":
        return _cost_by_day(db, params)
    try:
        columns = GROUPS[by]
    except KeyError:
        raise ValueError(f"unknown cost grouping {by!r}; expected {[*GROUPS, 'day']}") from None
    keys = ", ".join(columns)
    extra = ""
    join = ""
    if by == "generation":
        # The generation's state says what the money bought: serving, standing by, failing.
        extra = ", g.state AS state"
        join = (
            "LEFT JOIN generations g ON g.env = p.env AND g.service = p.service "
            "AND g.number = p.generation"
        )
    sql = f"""
        SELECT {keys}{extra},
               count(*) AS instances,
               round(sum({_window_hours()}), 4) AS billed_hours,
               sum({_window_cost()}) AS cost
        FROM ({_PRICED}) p {join}
        WHERE p.billed_end_s > :since AND p.start_s < :until
        GROUP BY {keys}
        ORDER BY {keys}
    """
    return list(db.query(sql, params))


def _cost_by_day(db: Database, params: dict[str, float]) -> list[dict[str, Any]]:
    # Days (UTC) from the first billed second inside the window to the last.
    sql = f"""
        WITH RECURSIVE
        priced AS (
            SELECT * FROM ({_PRICED}) p
            WHERE p.billed_end_s > :since AND p.start_s < :until
        ),
        bounds AS (
            SELECT CAST(max(min(start_s), :since) / 86400 AS INTEGER) * 86400.0 AS first_s,
                   min(max(billed_end_s), :until) AS last_s
            FROM priced
        ),
        days(day_s) AS (
            SELECT first_s FROM bounds WHERE first_s IS NOT NULL
            UNION ALL
            SELECT day_s + 86400.0 FROM days, bounds WHERE day_s + 86400.0 < last_s
        )
        SELECT date(d.day_s, 'unixepoch') AS day, p.env, p.service,
               count(*) AS instances,
               round(sum({_window_hours("max(d.day_s, :since)", "min(d.day_s + 86400.0, :until)")}),
                     4) AS billed_hours,
               sum({_window_cost("max(d.day_s, :since)", "min(d.day_s + 86400.0, :until)")})
                   AS cost
        FROM days d JOIN priced p
          ON p.start_s < d.day_s + 86400.0 AND p.billed_end_s > d.day_s
        GROUP BY d.day_s, p.env, p.service
        HAVING cost > 0 OR billed_hours > 0
        ORDER BY d.day_s, p.env, p.service
    """
    return list(db.query(sql, params))


def safety_net(
    db: Database, *, now: datetime, since: datetime | None, until: datetime | None
) -> dict[str, float]:
    """What standby time (after a generation was superseded) and failed generations cost."""
    params = _params(now, since, until)
    retired = _epoch("g.retired_at")
    sql = f"""
        SELECT
          sum(CASE WHEN failed THEN 0.0 ELSE {_window_cost(f"max(:since, {retired})")} END)
              AS standby,
          sum(CASE WHEN failed THEN {_window_cost()} ELSE 0.0 END) AS failed
        FROM ({_PRICED}) p
        JOIN (SELECT *, (state = 'failed' OR COALESCE(reason, '') LIKE 'failed%') AS failed
              FROM generations) g
          ON g.env = p.env AND g.service = p.service AND g.number = p.generation
        WHERE g.retired_at IS NOT NULL
    """
    row = next(iter(db.query(sql, params)), {})
    return {"standby": row.get("standby") or 0.0, "failed": row.get("failed") or 0.0}


def generation_costs_sql() -> str:
    """A correlated subquery: the whole billed cost of generation `g` so far (param :now)."""
    return f"""
        (SELECT sum(p.price * (p.billed_end_s - p.start_s) / 3600.0)
         FROM ({_PRICED} WHERE i.env = g.env AND i.service = g.service
                           AND i.generation = g.number) p)
    """
