"""The ledger's tables and indexes, as an ordered list of sqlite-utils migrations.

Owns: the schema of DESIGN §5 and its evolution. Each migration is applied once per
database and recorded in `_sqlite_migrations`; add a new function to change the
schema, never edit one that has shipped. Must not: hold data access code (see
`store` and `queries`) or decide transactions (the store wraps `apply_migrations`
in one `BEGIN IMMEDIATE` so two daemons opening the same file do not race).
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from reconciler.ledger import costsql

migrations = Migrations("reconciler.ledger")

# Times are ISO-8601 UTC text (sortable as text); JSON columns are TEXT.


@migrations(name="0001_initial")
def _initial(db: Database) -> None:
    db.table("runs").create(
        {
            "id": int,
            "started_at": str,
            "finished_at": str,
            "command": str,
            "commit": str,
            "result": str,
            "counts": str,  # JSON object: action kind -> number
            "error": str,
        },
        pk="id",
        not_null=["started_at", "command"],
    )
    db.table("generations").create(
        {
            "id": int,
            "env": str,
            "service": str,
            "number": int,
            "provider": str,
            "fingerprint": str,
            "image": str,
            "image_id": str,  # what the cloud resolved `image` to at launch
            "size": str,
            "count": int,
            "commit": str,
            "state": str,
            "created_at": str,
            "activated_at": str,
            "retired_at": str,
            "destroyed_at": str,
            "reason": str,
        },
        pk="id",
        not_null=[
            "env",
            "service",
            "number",
            "provider",
            "fingerprint",
            "image",
            "size",
            "count",
            "state",
            "created_at",
        ],
    )
    # Generation numbers are never reused per (env, service): the unique index is
    # what makes record_generation idempotent.
    db.table("generations").create_index(
        ["env", "service", "number"], index_name="generations_env_service_number", unique=True
    )
    db.table("generations").create_index(
        ["env", "service", "state"], index_name="generations_env_service_state"
    )
    db.table("instances").create(
        {
            "id": str,  # the provider's node id
            "provider": str,
            "env": str,
            "service": str,
            "generation": int,
            "slot": int,
            "name": str,
            "image": str,
            "size": str,
            "price_per_hour": float,
            "state": str,
            "created_at": str,
            "destroyed_at": str,
            "reason": str,
            "op": str,  # the operation that launched it (also its reconciler:op tag)
        },
        pk="id",
        not_null=[
            "provider",
            "env",
            "service",
            "generation",
            "image",
            "size",
            "state",
            "created_at",
        ],
    )
    db.table("instances").create_index(
        ["env", "service", "generation"], index_name="instances_env_service_generation"
    )
    db.table("instances").create_index(["state"], index_name="instances_state")
    db.table("operations").create(
        {
            "id": str,  # uuid4 hex; also the reconciler:op tag on what it launches
            "run": int,
            "kind": str,
            "target": str,
            "state": str,  # intent, issued, done, failed
            "instance_id": str,
            "detail": str,
            "intent_at": str,
            "issued_at": str,
            "finished_at": str,
        },
        pk="id",
        not_null=["run", "kind", "target", "state", "intent_at"],
    )
    db.table("operations").create_index(["state"], index_name="operations_state")
    db.table("events").create(
        {
            "id": int,
            "at": str,
            "run": int,
            "kind": str,
            "env": str,
            "service": str,
            "generation": int,
            "instance": str,
            "detail": str,  # JSON object
        },
        pk="id",
        not_null=["at", "kind"],
    )
    db.table("events").create_index(["at"], index_name="events_at")
    db.table("events").create_index(["kind"], index_name="events_kind")


@migrations(name="0002_commits")
def _commits(db: Database) -> None:
    # Every desired-state commit the daemon looked at: who wrote it, what it says, and
    # whether it was valid. History shows author and subject; the daemon heals against
    # the newest valid commit after a restart.
    db.table("commits").create(
        {
            "sha": str,
            "author": str,
            "subject": str,
            "committed_at": str,
            "seen_at": str,
            "valid": int,
            "errors": str,  # JSON list of problems for an invalid commit
        },
        pk="sha",
        not_null=["seen_at", "valid"],
    )
    db.table("commits").create_index(["valid", "seen_at"], index_name="commits_valid_seen")


@migrations(name="0003_costs_snapshots")
def _costs_snapshots(db: Database) -> None:
    # Epoch seconds beside the ISO text: summing a million lifetimes must not parse a
    # million timestamps (julianday() on every row costs most of a second).
    instances = db.table("instances")
    instances.add_column("created_s", float)
    instances.add_column("ended_s", float)
    db.execute(
        "UPDATE instances SET created_s = (julianday(created_at) - 2440587.5) * 86400.0, "
        "ended_s = (julianday(destroyed_at) - 2440587.5) * 86400.0"
    )
    # Covering index for `ledger cost --by env|service|generation`: the aggregate reads
    # the index alone, never the wider table rows.
    instances.create_index(
        ["env", "service", "generation", "provider", "price_per_hour", "created_s", "ended_s"],
        index_name="instances_cost",
    )
    # How each provider profile bills, as the last pass saw it (one row per profile).
    db.table("provider_billing").create(
        {"provider": str, "billing": str, "billing_minimum": float, "updated_at": str},
        pk="provider",
        not_null=["billing", "billing_minimum", "updated_at"],
    )
    # The newest observations, one row per provider per pass (JSON documents), so
    # `ledger orphans` can answer without listing the clouds. Only a few are kept.
    db.table("snapshots").create(
        {
            "id": int,
            "at": str,
            "run": int,
            "provider": str,
            "commit": str,
            "document": str,  # JSON: instances, desired services, size prices
        },
        pk="id",
        not_null=["at", "provider", "document"],
    )
    db.table("snapshots").create_index(["provider", "id"], index_name="snapshots_provider_id")
    # Event listings filtered by service and time.
    db.table("events").create_index(["env", "service", "at"], index_name="events_env_service_at")


@migrations(name="0004_cost_rollup")
def _cost_rollup(db: Database) -> None:
    # A finished instance's cost never changes: keep it summed per generation, so
    # `ledger cost` and history read one row per generation instead of pricing a
    # million instances. Triggers keep it current whoever writes (see costsql).
    db.execute(
        "CREATE TABLE cost_rollup ("
        " env TEXT NOT NULL, service TEXT NOT NULL, generation INTEGER NOT NULL,"
        " provider TEXT NOT NULL, instances INTEGER NOT NULL, billed_s REAL NOT NULL,"
        " cost REAL NOT NULL, standby_cost REAL NOT NULL,"
        " PRIMARY KEY (env, service, generation, provider))"
    )
    db.execute("CREATE INDEX cost_rollup_provider ON cost_rollup (provider)")
    db.execute(costsql.fill_rollup_sql())
    for trigger in costsql.rollup_triggers():
        db.execute(trigger)
    instances = db.table("instances")
    # Windows (`--since 30d`, the report's days) read only what can reach them: finished
    # instances by end time (covering, so rows are never visited) and running ones.
    instances.create_index(
        ["ended_s", "created_s", "env", "service", "generation", "provider", "price_per_hour"],
        index_name="instances_ended",
    )
    db.execute(
        "CREATE INDEX instances_running ON instances "
        "(env, service, generation, provider, price_per_hour, created_s) WHERE ended_s IS NULL"
    )
    # Superseded by the rollup and the two indexes above.
    db.execute("DROP INDEX IF EXISTS instances_cost")


@migrations(name="0005_append_only_history")
def _append_only_history(db: Database) -> None:
    # A generation's first activation and retirement are history and are never
    # rewritten again; `state_since` is when its current state began (what the
    # keep_previous timer counts from). Every change of state is an event row.
    db.execute("ALTER TABLE generations ADD COLUMN state_since TEXT")
    db.execute(
        "UPDATE generations SET state_since = CASE state"
        " WHEN 'destroyed' THEN COALESCE(destroyed_at, retired_at, activated_at, created_at)"
        " WHEN 'standby' THEN COALESCE(retired_at, activated_at, created_at)"
        " WHEN 'failed' THEN COALESCE(retired_at, created_at)"
        " WHEN 'active' THEN COALESCE(activated_at, created_at)"
        " ELSE created_at END"
    )
    db.table("events").create_index(
        ["kind", "env", "service", "generation"], index_name="events_kind_generation"
    )
    # JSON list: the services a pass found held (pinned, failed, frozen, down), with
    # why and since when, so `status` shows what the last pass saw.
    db.execute("ALTER TABLE runs ADD COLUMN held TEXT")
    # A request an operator made while the daemon held the state directory: recorded
    # here, acted on by the daemon between operations, answered in the same row.
    db.table("requests").create(
        {
            "id": int,
            "at": str,
            "kind": str,
            "env": str,
            "service": str,
            "requested_by": str,
            "state": str,  # pending, done, refused, failed
            "answered_at": str,
            "answer": str,
        },
        pk="id",
        not_null=["at", "kind", "env", "state"],
    )
    db.table("requests").create_index(["state", "id"], index_name="requests_pending")


def migrations_pending(db: Database) -> bool:
    """Whether opening this file will change its schema (read-only to find out)."""
    return bool(migrations.pending(db))


@migrations(name="0006_leader_epoch")
def _leader_epoch(db: Database) -> None:
    # With two daemons on a lease (`--coordination`), the epoch of the leader that
    # wrote each intent, so a new leader can tell whose operation it is resolving.
    db.execute("ALTER TABLE operations ADD COLUMN epoch INTEGER")


@migrations(name="0007_commit_signatures")
def _commit_signatures(db: Database) -> None:
    # With --verify-commits: who signed each commit (key type, fingerprint, git's
    # signer name), and the commits an operator accepted by hand (`reconciler trust`).
    db.execute("ALTER TABLE commits ADD COLUMN signer_type TEXT")
    db.execute("ALTER TABLE commits ADD COLUMN signer_fingerprint TEXT")
    db.execute("ALTER TABLE commits ADD COLUMN signer TEXT")
    db.table("trusted_commits").create(
        {"sha": str, "by": str, "at": str, "reason": str}, pk="sha", not_null=["by", "at"]
    )


def apply_migrations(db: Database) -> None:
    """Bring the schema up to date; the caller owns the surrounding transaction."""
    migrations.apply(db)


def known_migrations() -> list[str]:
    """The migrations this version knows, oldest first."""
    return [migration.name for migration in migrations._migrations]


def unknown_migrations(db: Database) -> list[str]:
    """Migrations recorded in the file that this version does not know: a newer
    reconciler wrote it, and this one would misread (or damage) its schema."""
    table = migrations.migrations_table
    if not db[table].exists():
        return []
    rows = db.execute(
        f"SELECT name FROM [{table}] WHERE migration_set = ? ORDER BY rowid", [migrations.name]
    ).fetchall()
    known = set(known_migrations())
    return [str(name) for (name,) in rows if name not in known]
