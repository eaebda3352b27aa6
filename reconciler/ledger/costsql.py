"""Instance cost in SQL: the billing rules of `reconciler.planning.costs`, evaluated by SQLite.

Owns: the SQL that prices instance rows and the cost listings built on it: by env,
service, generation or day, and the "safety net" (standby time and failed
generations). A finished instance's cost never changes, so `cost_rollup` holds it per
generation, kept current by triggers (see `rollup_triggers`); only instances still
running are priced at query time. Windowed listings read just the instances whose
billed time can reach the window (the `instances_ended` index). Must not: write, take
locks or open transactions (`Ledger` calls these under its lock). Tests compare these
figures with `reconciler.planning.costs.instance_cost` for the same rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlite_utils import Database

# Far past / far future in epoch seconds: an open window end.
_OPEN = 1e15
# How far billing can carry an instance past its end: a started hour, or the per-second
# minimum. Windows widen their index range by the larger of this and the minimums stored.
_HOUR = 3600.0


def _ceil(expr: str) -> str:
    # ceil() needs SQLite's optional math functions; this works on every build (x >= 0).
    return f"(CAST({expr} AS INTEGER) + (({expr}) > CAST({expr} AS INTEGER)))"


def _priced(where: str, *, end: str = "i.ended_s") -> str:
    """One row per instance matching `where` (over alias `i`): start, billed end, price.

    `end` is the lifetime's end: `i.ended_s` for finished instances, or
    `COALESCE(i.ended_s, :now)` to price running ones up to now.
    """
    return f"""
        SELECT i.id, i.provider, i.env, i.service, i.generation,
               COALESCE(i.price_per_hour, 0.0) AS price,
               i.start_s,
               i.start_s + CASE
                   WHEN COALESCE(b.billing, 'per-second') = 'per-hour'
                   THEN max(1, {_ceil("i.life_s / 3600.0")}) * 3600.0
                   ELSE max(i.life_s, COALESCE(b.billing_minimum, 60.0))
               END AS billed_end_s
        FROM (
            SELECT i.id, i.provider, i.env, i.service, i.generation, i.price_per_hour,
                   i.created_s AS start_s,
                   max(0.0, round({end} - i.created_s, 3)) AS life_s
            FROM instances i
            WHERE {where}
        ) i
        LEFT JOIN provider_billing b ON b.provider = i.provider
    """


_RUNNING = _priced("i.ended_s IS NULL", end=":now")


def _window_cost(low: str = ":since", high: str = ":until") -> str:
    """Price x the part of [start, billed end) inside [low, high), in currency."""
    return f"p.price * max(0.0, min(p.billed_end_s, {high}) - max(p.start_s, {low})) / 3600.0"


def _window_hours(low: str = ":since", high: str = ":until") -> str:
    return f"max(0.0, min(p.billed_end_s, {high}) - max(p.start_s, {low})) / 3600.0"


def _in_window() -> str:
    """Every instance whose billed time can reach [:since, :until), by index range."""
    ended = _priced("i.ended_s > :since - :reach AND i.created_s < :until")
    running = _priced("i.ended_s IS NULL AND i.created_s < :until", end=":now")
    return f"SELECT * FROM ({ended}) UNION ALL SELECT * FROM ({running})"


# ------------------------------------------------------------------ the rollup


def _rollup_select(where: str) -> str:
    """Finished instances matching `where`, summed per generation (and provider: one
    generation has one, but nothing here relies on it), with the part of their cost
    after their generation was retired (standby)."""
    return f"""
        SELECT p.env, p.service, p.generation, p.provider,
               count(*), sum(p.billed_end_s - p.start_s),
               sum(p.price * (p.billed_end_s - p.start_s) / 3600.0),
               sum(CASE WHEN g.retired_s IS NULL THEN 0.0
                        ELSE p.price * max(0.0, p.billed_end_s - max(p.start_s, g.retired_s))
                             / 3600.0 END)
        FROM ({_priced(f"i.ended_s IS NOT NULL AND {where}")}) p
        LEFT JOIN (SELECT env, service, number,
                          (julianday(retired_at) - 2440587.5) * 86400.0 AS retired_s
                   FROM generations) g
          ON g.env = p.env AND g.service = p.service AND g.number = p.generation
        GROUP BY p.env, p.service, p.generation, p.provider
    """


_ROLLUP_COLUMNS = "env, service, generation, provider, instances, billed_s, cost, standby_cost"


def _refresh(env: str, service: str, generation: str) -> str:
    """Statements that recompute one generation's rollup row from its instances."""
    key = f"env = {env} AND service = {service} AND generation = {generation}"
    where = f"i.env = {env} AND i.service = {service} AND i.generation = {generation}"
    return (
        f"DELETE FROM cost_rollup WHERE {key};\n"
        f"INSERT INTO cost_rollup ({_ROLLUP_COLUMNS}) {_rollup_select(where)};"
    )


def fill_rollup_sql() -> str:
    """Fill an empty rollup from every finished instance (the migration runs this)."""
    return f"INSERT INTO cost_rollup ({_ROLLUP_COLUMNS}) {_rollup_select('1')}"


def rollup_triggers() -> list[str]:
    """Triggers that keep `cost_rollup` equal to what its instances cost.

    Any writer (the store, a rebuild, an operator's sqlite3) keeps it right. An instance
    write recomputes its generation's row (a handful of instances); a billing change
    recomputes its provider's rows; a generation's retirement moves its standby share.
    """
    new = _refresh("NEW.env", "NEW.service", "NEW.generation")
    old = _refresh("OLD.env", "OLD.service", "OLD.generation")
    watched = "created_s, ended_s, price_per_hour, env, service, generation, provider"
    provider_rows = (
        "DELETE FROM cost_rollup WHERE provider = NEW.provider;\n"
        f"INSERT INTO cost_rollup ({_ROLLUP_COLUMNS}) "
        + _rollup_select("i.provider = NEW.provider")
        + ";"
    )
    return [
        f"CREATE TRIGGER cost_rollup_instance_insert AFTER INSERT ON instances "
        f"WHEN NEW.ended_s IS NOT NULL BEGIN {new} END",
        f"CREATE TRIGGER cost_rollup_instance_update AFTER UPDATE OF {watched} ON instances "
        f"WHEN OLD.ended_s IS NOT NULL OR NEW.ended_s IS NOT NULL BEGIN {old} {new} END",
        f"CREATE TRIGGER cost_rollup_instance_delete AFTER DELETE ON instances "
        f"WHEN OLD.ended_s IS NOT NULL BEGIN {old} END",
        "CREATE TRIGGER cost_rollup_generation_retired AFTER UPDATE OF retired_at ON generations "
        "WHEN OLD.retired_at IS NOT NEW.retired_at BEGIN "
        + _refresh("NEW.env", "NEW.service", "NEW.number")
        + " END",
        f"CREATE TRIGGER cost_rollup_billing_insert AFTER INSERT ON provider_billing "
        f"BEGIN {provider_rows} END",
        "CREATE TRIGGER cost_rollup_billing_update AFTER UPDATE ON provider_billing "
        "WHEN OLD.billing IS NOT NEW.billing OR OLD.billing_minimum IS NOT NEW.billing_minimum "
        f"BEGIN {provider_rows} END",
    ]


# ------------------------------------------------------------------ listings


def _params(
    db: Database, now: datetime, since: datetime | None, until: datetime | None
) -> dict[str, float]:
    minimums = next(iter(db.query("SELECT max(billing_minimum) AS m FROM provider_billing")))
    return {
        "now": now.timestamp(),
        "since": since.timestamp() if since is not None else -_OPEN,
        "until": until.timestamp() if until is not None else _OPEN,
        "reach": max(_HOUR, 60.0, minimums["m"] or 0.0),
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
    """Cost per group inside the window, keyed and ordered by the group's columns."""
    params = _params(db, now, since, until)
    if by == "day":
        return _cost_by_day(db, params)
    try:
        columns = GROUPS[by]
    except KeyError:
        raise ValueError(f"unknown cost grouping {by!r}; expected {[*GROUPS, 'day']}") from None
    if since is None and until is None:
        per_generation = _whole_life_by_generation()
    else:
        per_generation = f"""
            SELECT p.env, p.service, p.generation, p.provider, count(*) AS instances,
                   sum({_window_hours()}) AS hours, sum({_window_cost()}) AS cost
            FROM ({_in_window()}) p
            WHERE p.billed_end_s > :since AND p.start_s < :until
            GROUP BY p.env, p.service, p.generation, p.provider
        """
    keys = ", ".join(columns)
    extra = join = ""
    if by == "generation":
        # The generation's state says what the money bought: serving, standing by, failing.
        extra = ", g.state AS state"
        join = (
            "LEFT JOIN generations g ON g.env = p.env AND g.service = p.service "
            "AND g.number = p.generation"
        )
    sql = f"""
        SELECT {keys}{extra},
               sum(p.instances) AS instances,
               round(sum(p.hours), 4) AS billed_hours,
               sum(p.cost) AS cost
        FROM ({per_generation}) p {join}
        GROUP BY {keys}
        ORDER BY {keys}
    """
    return list(db.query(sql, params))


def _whole_life_by_generation() -> str:
    """Per generation: finished instances from the rollup plus running ones priced now."""
    return f"""
        SELECT env, service, generation, provider, sum(instances) AS instances,
               sum(hours) AS hours, sum(cost) AS cost
        FROM (
            SELECT env, service, generation, provider, instances, billed_s / 3600.0 AS hours,
                   cost
            FROM cost_rollup WHERE instances > 0
            UNION ALL
            SELECT p.env, p.service, p.generation, p.provider, 1,
                   (p.billed_end_s - p.start_s) / 3600.0,
                   p.price * (p.billed_end_s - p.start_s) / 3600.0
            FROM ({_RUNNING}) p
        )
        GROUP BY env, service, generation, provider
    """


def _cost_by_day(db: Database, params: dict[str, float]) -> list[dict[str, Any]]:
    """Cost per UTC day and service, in time linear in the instances, not instances x days.

    Each instance's billed time inside the window [s, e) touches days d0..d1. Its first
    and last day get their partial seconds directly; the whole days between get the
    same amount each, so that is written as a difference (+ at d0 + 1, - at d1) and a
    running sum spreads it. Instances per day are a difference too (+1 at d0, -1 at
    d1 + 1). A year of a million instances is then a few grouped scans, not a join of
    every instance with every day.
    """
    day = 86400.0
    sql = f"""
        WITH RECURSIVE
        clipped AS (
            SELECT p.env, p.service, p.price,
                   max(p.start_s, :since) AS s, min(p.billed_end_s, :until) AS e
            FROM ({_in_window()}) p
            WHERE p.billed_end_s > :since AND p.start_s < :until
        ),
        spans AS (
            SELECT env, service, price, s, e,
                   CAST(s / {day} AS INTEGER) AS d0,
                   {_ceil(f"e / {day}")} - 1 AS d1
            FROM clipped WHERE e > s
        ),
        marks(env, service, d, seconds, cost, full_seconds, full_cost, starts) AS (
            -- the first day's part (the whole span when it fits in one day)
            SELECT env, service, d0, min(e, (d0 + 1) * {day}) - s,
                   price * (min(e, (d0 + 1) * {day}) - s), 0.0, 0.0, 1
            FROM spans
            UNION ALL  -- the last day's part
            SELECT env, service, d1, e - d1 * {day}, price * (e - d1 * {day}), 0.0, 0.0, 0
            FROM spans WHERE d1 > d0
            UNION ALL  -- whole days between: start adding the day's worth...
            SELECT env, service, d0 + 1, 0.0, 0.0, {day}, price * {day}, 0
            FROM spans WHERE d1 > d0
            UNION ALL  -- ...and stop at the last day
            SELECT env, service, d1, 0.0, 0.0, -{day}, -price * {day}, 0
            FROM spans WHERE d1 > d0
            UNION ALL  -- no longer running after its last day
            SELECT env, service, d1 + 1, 0.0, 0.0, 0.0, 0.0, -1
            FROM spans
        ),
        per_day AS (
            SELECT env, service, d, sum(seconds) AS seconds, sum(cost) AS cost,
                   sum(full_seconds) AS full_seconds, sum(full_cost) AS full_cost,
                   sum(starts) AS starts
            FROM marks GROUP BY env, service, d
        ),
        bounds AS (
            SELECT env, service, min(d) AS first_d, max(d) AS last_d FROM per_day
            GROUP BY env, service
        ),
        days(env, service, d, last_d) AS (
            SELECT env, service, first_d, last_d FROM bounds
            UNION ALL
            SELECT env, service, d + 1, last_d FROM days WHERE d < last_d
        ),
        running AS (
            SELECT days.env, days.service, days.d,
                   COALESCE(m.seconds, 0.0) + sum(COALESCE(m.full_seconds, 0.0)) OVER w
                       AS seconds,
                   COALESCE(m.cost, 0.0) + sum(COALESCE(m.full_cost, 0.0)) OVER w AS cost,
                   sum(COALESCE(m.starts, 0)) OVER w AS instances
            FROM days
            LEFT JOIN per_day m ON m.env = days.env AND m.service = days.service AND m.d = days.d
            WINDOW w AS (PARTITION BY days.env, days.service ORDER BY days.d)
        )
        SELECT date(d * {day}, 'unixepoch') AS day, env, service, instances,
               round(seconds / 3600.0, 4) AS billed_hours, cost / 3600.0 AS cost
        FROM running
        WHERE instances > 0  -- (a day inside a span always holds some of its seconds)
        ORDER BY d, env, service
    """
    return list(db.query(sql, params))


# model.generation_failed, in SQL.
_FAILED = "(g.state = 'failed' OR COALESCE(g.reason, '') LIKE 'failed%')"
_RETIRED = "(julianday(g.retired_at) - 2440587.5) * 86400.0"


def safety_net(
    db: Database, *, now: datetime, since: datetime | None, until: datetime | None
) -> dict[str, float]:
    """What standby time (after a generation was superseded) and failed generations cost."""
    params = _params(db, now, since, until)
    running_or_windowed = _RUNNING if since is None and until is None else _in_window()
    # Instances priced here: running ones, or (with a window) every one reaching it.
    priced = f"""
        SELECT sum(CASE WHEN {_FAILED} THEN 0.0
                        ELSE {_window_cost(f"max(:since, {_RETIRED})")} END) AS standby,
               sum(CASE WHEN {_FAILED} THEN {_window_cost()} ELSE 0.0 END) AS failed
        FROM ({running_or_windowed}) p
        JOIN generations g
          ON g.env = p.env AND g.service = p.service AND g.number = p.generation
        WHERE g.retired_at IS NOT NULL
    """
    row = next(iter(db.query(priced, params)), {})
    standby, failed = row.get("standby") or 0.0, row.get("failed") or 0.0
    if since is None and until is None:
        # Finished instances: their shares are in the rollup already.
        finished = next(
            iter(
                db.query(f"""
                SELECT sum(CASE WHEN {_FAILED} THEN 0.0 ELSE r.standby_cost END) AS standby,
                       sum(CASE WHEN {_FAILED} THEN r.cost ELSE 0.0 END) AS failed
                FROM cost_rollup r
                JOIN generations g
                  ON g.env = r.env AND g.service = r.service AND g.number = r.generation
                WHERE g.retired_at IS NOT NULL
            """)
            ),
            {},
        )
        standby += finished.get("standby") or 0.0
        failed += finished.get("failed") or 0.0
    return {"standby": standby, "failed": failed}


def generation_costs(
    db: Database, keys: list[tuple[str, str, int]], *, now: float
) -> dict[tuple[str, str, int], float]:
    """The whole billed cost so far of each generation (env, service, number) in `keys`."""
    costs: dict[tuple[str, str, int], float] = {}
    for start in range(0, len(keys), 300):  # 3 parameters each, below the old 999 limit
        chunk = keys[start : start + 300]
        params: dict[str, Any] = {"now": now}
        for n, (env, service, number) in enumerate(chunk):
            params.update({f"e{n}": env, f"s{n}": service, f"g{n}": number})
        values = ", ".join(f"(:e{n}, :s{n}, :g{n})" for n in range(len(chunk)))
        wanted = f"(i.env, i.service, i.generation) IN (VALUES {values})"
        running = _priced(f"i.ended_s IS NULL AND {wanted}", end=":now")
        sql = f"""
            SELECT env, service, generation, sum(cost) AS cost FROM (
                SELECT env, service, generation, cost FROM cost_rollup i WHERE {wanted}
                UNION ALL
                SELECT p.env, p.service, p.generation,
                       p.price * (p.billed_end_s - p.start_s) / 3600.0
                FROM ({running}) p
            )
            GROUP BY env, service, generation
        """
        for row in db.query(sql, params):
            costs[(row["env"], row["service"], row["generation"])] = row["cost"] or 0.0
    return costs
