"""The ledger's read side: listings for the CLI and the view the planner plans from.

Owns: the SELECT statements and the shape of the rows they return (dicts keyed by the
column names of DESIGN §5, times as their stored ISO-8601 text so the CLI can print
them as JSON unchanged, JSON columns decoded). Must not: write, open transactions or
take locks; the `Ledger` calls these under its lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlite_utils import Database

from reconciler.ledger import codec, costsql
from reconciler.model import GenerationRecord, LedgerView

# Instance states after which the instance no longer exists (or bills) in the cloud.
ENDED_INSTANCE_STATES = ("destroyed", "gone")
_ENDED_SQL = "({})".format(", ".join(f"'{state}'" for state in ENDED_INSTANCE_STATES))

_NO_LIMIT = -1  # SQLite's spelling of "no LIMIT"


def _where(filters: Mapping[str, object], *, alias: str = "") -> tuple[str, list[object]]:
    """`WHERE a = ? AND b = ?` for the filters that are not None."""
    given = {column: value for column, value in filters.items() if value is not None}
    if not given:
        return "", []
    qualifier = f"{alias}." if alias else ""
    clause = " AND ".join(f'{qualifier}"{column}" = ?' for column in given)
    return f"WHERE {clause}", list(given.values())


def _limit(limit: int | None) -> int:
    if limit is None:
        return _NO_LIMIT
    if limit < 0:
        raise ValueError(f"limit must be zero or positive, got {limit}")
    return limit


def view(db: Database) -> LedgerView:
    # Every generation, destroyed ones included: the planner must never reuse a number.
    generations = tuple(
        codec.generation_record(row)
        for row in db.query(
            "SELECT g.*, EXISTS (SELECT 1 FROM events e WHERE e.kind = 'retried'"
            " AND e.env = g.env AND e.service = g.service AND e.generation = g.number)"
            " AS retried FROM generations g ORDER BY g.env, g.service, g.number"
        )
    )
    instances = tuple(
        codec.instance_record(row)
        for row in db.query(
            f"SELECT * FROM instances WHERE state NOT IN {_ENDED_SQL} "
            "ORDER BY env, service, generation, slot, id"
        )
    )
    return LedgerView(generations=generations, instances=instances)


def generation_rows(
    db: Database, *, env: str | None, service: str | None, state: str | None
) -> list[dict[str, Any]]:
    where, params = _where({"env": env, "service": service, "state": state})
    sql = f"SELECT * FROM generations {where} ORDER BY env, service, number"
    return list(db.query(sql, params))


_HISTORY_COLUMNS = f"""
    g.env, g.service, g.number, g.state, g.image, g.size, g.count, g."commit",
    (SELECT c.author FROM commits c WHERE c.sha = g."commit") AS commit_author,
    (SELECT c.subject FROM commits c WHERE c.sha = g."commit") AS commit_subject,
    (SELECT c.signer_type || ' ' || c.signer_fingerprint FROM commits c
      WHERE c.sha = g."commit") AS commit_signer,
    g.created_at, g.activated_at, g.retired_at, g.destroyed_at, g.reason,
    (SELECT count(*) FROM instances i
      WHERE i.env = g.env AND i.service = g.service AND i.generation = g.number
    ) AS instances_created,
    (SELECT count(*) FROM instances i
      WHERE i.env = g.env AND i.service = g.service AND i.generation = g.number
        AND i.state NOT IN {_ENDED_SQL}
    ) AS instances_live
"""


def history_rows(
    db: Database,
    *,
    env: str | None,
    service: str | None,
    limit: int | None,
    offset: int = 0,
    since: str | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Each service's generations, oldest first, with their cost so far.

    Pages count from each service's newest generation: `offset` skips N, `limit` keeps N.
    """
    where, params = _where({"env": env, "service": service}, alias="g")
    if since is not None:
        where = f"{where} AND" if where else "WHERE"
        where += " g.created_at >= ?"
        params.append(since)
    if offset < 0:
        raise ValueError(f"offset must be zero or positive, got {offset}")
    # Ranks first, columns after: the per-row subqueries run for the page's rows only.
    sql = f"""
        SELECT {_HISTORY_COLUMNS}
        FROM (
            SELECT g.id,
                   row_number() OVER (
                       PARTITION BY g.env, g.service ORDER BY g.number DESC
                   ) AS newest_rank
            FROM generations g {where}
        ) r
        JOIN generations g ON g.id = r.id
        WHERE r.newest_rank > ? AND (? < 0 OR r.newest_rank <= ? + ?)
        ORDER BY g.env, g.service, g.number
    """
    bound = _limit(limit)
    rows = list(db.query(sql, [*params, offset, bound, offset, bound]))
    moment = (now or datetime.now(UTC)).timestamp()
    # Cost per page row, not in the window query: a page prices a page's generations only.
    keys = [(row["env"], row["service"], row["number"]) for row in rows]
    costs = costsql.generation_costs(db, keys, now=moment)
    for row, key in zip(rows, keys, strict=True):
        row["cost"] = round(costs.get(key, 0.0), 6)
    return rows


def service_keys(db: Database, *, env: str | None, since: str | None) -> list[tuple[str, str]]:
    where, params = _where({"env": env})
    if since is not None:
        where = f"{where} AND" if where else "WHERE"
        where += " created_at >= ?"
        params.append(since)
    sql = f"SELECT DISTINCT env, service FROM generations {where} ORDER BY env, service"
    return [(row["env"], row["service"]) for row in db.query(sql, params)]


def run_rows(db: Database, *, limit: int | None) -> list[dict[str, Any]]:
    rows = list(db.query("SELECT * FROM runs ORDER BY id DESC LIMIT ?", [_limit(limit)]))
    for row in rows:
        # An unfinished run has no counts yet; an empty dict keeps the shape uniform.
        row["counts"] = codec.decode_json(row["counts"]) or {}
        row["held"] = codec.decode_json(row.get("held"))
    return rows


def instance_rows(
    db: Database,
    *,
    env: str | None,
    service: str | None,
    generation: int | None,
    live_only: bool,
) -> list[dict[str, Any]]:
    where, params = _where({"env": env, "service": service, "generation": generation})
    if live_only:
        where = f"{where} AND" if where else "WHERE"
        where += f" state NOT IN {_ENDED_SQL}"
    sql = f"SELECT * FROM instances {where} ORDER BY env, service, generation, slot, id"
    return list(db.query(sql, params))


def event_rows(
    db: Database,
    *,
    kind: str | None,
    limit: int | None,
    env: str | None = None,
    service: str | None = None,
    since: str | None = None,
) -> list[dict[str, Any]]:
    """Events oldest first; `limit` keeps the newest N (a log's tail)."""
    where, params = _where({"kind": kind, "env": env, "service": service})
    if since is not None:
        where = f"{where} AND" if where else "WHERE"
        where += " at >= ?"
        params.append(since)
    sql = f"""
        SELECT * FROM (
            SELECT * FROM events {where} ORDER BY at DESC, id DESC LIMIT ?
        ) ORDER BY at, id
    """
    rows = list(db.query(sql, [*params, _limit(limit)]))
    for row in rows:
        row["detail"] = codec.decode_json(row["detail"])
    return rows


def instance_rows_by_id(db: Database, ids: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    # Chunks stay below SQLite's bound-parameter limit on old builds (999).
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        for row in db.query(f"SELECT * FROM instances WHERE id IN ({marks})", chunk):
            found[row["id"]] = row
    return found


def generations_for(db: Database, keys: list[tuple[str, str, int]]) -> tuple[GenerationRecord, ...]:
    """The generations with these (env, service, number) keys, for judging instances
    without loading every generation the ledger ever recorded."""
    found: list[GenerationRecord] = []
    for start in range(0, len(keys), 300):  # 3 parameters each, below the old 999 limit
        chunk = keys[start : start + 300]
        values = ", ".join("(?, ?, ?)" for _ in chunk)
        sql = (
            f"SELECT * FROM generations WHERE (env, service, number) IN (VALUES {values}) "
            "ORDER BY env, service, number"
        )
        found.extend(codec.generation_record(row) for row in db.query(sql, _flat(chunk)))
    return tuple(found)


def _flat(keys: list[tuple[str, str, int]]) -> list[Any]:
    return [part for key in keys for part in key]


def latest_snapshots(db: Database) -> list[dict[str, Any]]:
    """Each provider's newest observation row, `document` decoded."""
    sql = """
        SELECT s.* FROM snapshots s
        WHERE s.id = (SELECT max(id) FROM snapshots t WHERE t.provider = s.provider)
        ORDER BY s.provider
    """
    rows = list(db.query(sql))
    for row in rows:
        row["document"] = codec.decode_json(row["document"])
    return rows


def open_operations(db: Database) -> list[dict[str, Any]]:
    sql = "SELECT * FROM operations WHERE state IN ('intent', 'issued') ORDER BY intent_at, id"
    return list(db.query(sql))


def last_applied_commit(db: Database) -> str | None:
    sql = """
        SELECT "commit" FROM runs
        WHERE "commit" IS NOT NULL AND result IN ('ok', 'changes', 'no-op', 'failed', 'interrupted')
        ORDER BY id DESC LIMIT 1
    """
    rows = list(db.query(sql))
    return str(rows[0]["commit"]) if rows else None


def last_commit(db: Database, *, valid: bool) -> str | None:
    sql = "SELECT sha FROM commits WHERE valid = ? ORDER BY seen_at DESC LIMIT 1"
    rows = list(db.query(sql, [1 if valid else 0]))
    return str(rows[0]["sha"]) if rows else None


def commit_rows(db: Database, *, limit: int | None) -> list[dict[str, Any]]:
    rows = list(db.query("SELECT * FROM commits ORDER BY seen_at DESC LIMIT ?", [_limit(limit)]))
    for row in rows:
        row["valid"] = bool(row["valid"])
        row["errors"] = (codec.decode_json(row["errors"]) or {}).get("problems", [])
    return rows
