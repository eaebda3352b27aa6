"""The ledger against real SQLite files in tmp_path: schema, durability settings, every
write and read of the public API, thread safety and WAL concurrency. No mocks."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from reconciler.errors import LedgerError
from reconciler.ledger import Ledger, default_state_dir
from reconciler.ledger.schema import known_migrations
from reconciler.model import GenerationRecord, GenerationState, InstanceRecord, LedgerView

T0 = datetime(2026, 11, 29, 9, 41, 2, 123456, tzinfo=UTC)
T0_TEXT = "2026-11-29T09:41:02.123456+00:00"

TABLES = {"runs", "generations", "instances", "operations", "events"}
INDEXES: dict[str, set[tuple[str, ...]]] = {
    "generations": {("env", "service", "number"), ("env", "service", "state")},
    "instances": {("env", "service", "generation"), ("state",)},
    "operations": {("state",)},
    "events": {("at",), ("kind",)},
}


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def iso(minutes: int) -> str:
    return at(minutes).isoformat(timespec="microseconds")


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state" / "reconciler"


@pytest.fixture
def ledger(state_dir: Path) -> Iterator[Ledger]:
    opened = Ledger.open(state_dir, clock=lambda: T0)
    yield opened
    opened.close()


def raw(state_dir: Path) -> sqlite3.Connection:
    """A second, plain connection: what another process (or an operator's sqlite3) sees."""
    conn = sqlite3.connect(state_dir / "ledger.sqlite", isolation_level=None, timeout=5)
    conn.row_factory = sqlite3.Row
    return conn


def record_generation(
    ledger: Ledger,
    number: int,
    *,
    state: GenerationState = GenerationState.CREATING,
    when: int = 0,
    env: str = "production",
    service: str = "web",
) -> None:
    ledger.record_generation(
        env=env,
        service=service,
        number=number,
        provider="aws-east",
        fingerprint=f"fp{number}",
        image=f"ami-{number}",
        size="t3.small",
        count=2,
        commit="c0ffee",
        state=state,
        at=at(when),
    )


def record_instance(
    ledger: Ledger, node_id: str, generation: int, *, slot: int = 0, state: str = "running"
) -> None:
    ledger.record_instance(
        id=node_id,
        provider="aws-east",
        env="production",
        service="web",
        generation=generation,
        slot=slot,
        name=f"production-web-g{generation}-{slot}",
        image=f"ami-{generation}",
        size="t3.small",
        price_per_hour=0.0208,
        state=state,
        created_at=at(generation),
        op=None,
    )


# ---------------------------------------------------------------- schema and file


def test_migrations_create_every_table_and_index_and_reapply_as_no_op(state_dir: Path) -> None:
    Ledger.open(state_dir).close()
    conn = raw(state_dir)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables >= TABLES
    for table, expected in INDEXES.items():
        found = {
            tuple(c["name"] for c in conn.execute(f"PRAGMA index_info('{index['name']}')"))
            for index in conn.execute(f"PRAGMA index_list('{table}')")
        }
        assert expected <= found, table
    unique = {tuple(i)[1:3] for i in conn.execute("PRAGMA index_list('generations')")}
    assert ("generations_env_service_number", 1) in unique
    applied = conn.execute("SELECT name FROM _sqlite_migrations").fetchall()
    schema = conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()

    with Ledger.open(state_dir) as again:
        again.record_event(kind="invalid_commit", at=T0)
    assert conn.execute("SELECT name FROM _sqlite_migrations").fetchall() == applied
    assert conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == schema
    conn.close()


def test_cost_rollup_migration_fills_from_an_existing_ledger(state_dir: Path) -> None:
    """A ledger written before the rollup existed (schema 0003) gets it filled on open,
    and whole-life costs from it equal pricing each instance row."""
    from sqlite_utils import Database

    from reconciler.ledger.schema import migrations

    state_dir.mkdir(mode=0o700, parents=True)
    conn = sqlite3.connect(state_dir / "ledger.sqlite", isolation_level=None)
    migrations.apply(Database(conn), stop_before="0004_cost_rollup")
    conn.executemany(
        "INSERT INTO instances (id, provider, env, service, generation, slot, image, size, "
        "price_per_hour, state, created_at, destroyed_at, created_s, ended_s) "
        "VALUES (?, 'cloud', 'production', ?, 1, 1, 'ami-1', 't3.micro', 0.5, ?, ?, ?, ?, ?)",
        [
            ("i-1", "web", "destroyed", "2026-03-01T12:00:00+00:00", "2026-03-01T14:00:00+00:00",
             T0.timestamp(), T0.timestamp() + 7200),
            ("i-2", "api", "destroyed", "2026-03-01T12:00:00+00:00", "2026-03-01T12:00:10+00:00",
             T0.timestamp(), T0.timestamp() + 10),
            ("i-3", "api", "running", "2026-03-01T12:00:00+00:00", None, T0.timestamp(), None),
        ],
    )  # fmt: skip
    conn.close()
    now = T0 + timedelta(hours=3)
    with Ledger.open(state_dir) as ledger:
        rows = {r["service"]: r["cost"] for r in ledger.cost_rows(by="service", now=now)}
    assert rows == pytest.approx({"web": 0.5 * 2, "api": 0.5 * 60 / 3600 + 0.5 * 3})
    rollup = raw(state_dir).execute("SELECT service, instances FROM cost_rollup ORDER BY 1")
    assert [tuple(r) for r in rollup] == [("api", 1), ("web", 1)]  # finished instances only


def test_new_state_dir_is_0700_and_ledger_file_0600(state_dir: Path, ledger: Ledger) -> None:
    ledger.record_event(kind="invalid_commit", at=T0)  # make sure the -wal file exists too
    assert ledger.path == state_dir / "ledger.sqlite"
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(ledger.path.stat().st_mode) == 0o600
    wal = state_dir / "ledger.sqlite-wal"
    assert stat.S_IMODE(wal.stat().st_mode) == 0o600


def test_existing_state_dir_keeps_its_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o750)
    Ledger.open(tmp_path).close()
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o750


def test_connection_uses_wal_full_sync_and_busy_timeout(state_dir: Path, ledger: Ledger) -> None:
    assert ledger.pragmas() == {"journal_mode": "wal", "synchronous": 2, "busy_timeout": 5000}
    conn = raw(state_dir)  # WAL is a property of the file, visible to every connection
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_garbage_file_raises_ledger_error_naming_the_file(state_dir: Path) -> None:
    state_dir.mkdir(parents=True)
    path = state_dir / "ledger.sqlite"
    path.write_bytes(os.urandom(64) + b"this is not a database" * 200)
    with pytest.raises(LedgerError, match=str(path)) as caught:
        Ledger.open(state_dir)
    assert "not a database" in str(caught.value)


def test_unusable_state_dir_raises_ledger_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LedgerError, match="cannot create the ledger"):
        Ledger.open(blocker / "state")


def test_closed_ledger_raises_ledger_error(ledger: Ledger) -> None:
    ledger.close()
    ledger.close()  # idempotent
    with pytest.raises(LedgerError, match="closed"):
        ledger.view()


# ---------------------------------------------------------------- default location


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"STATE_DIRECTORY": "/var/lib/reconciler", "RECONCILER_STATE_DIR": "/x"},
            "/var/lib/reconciler",
        ),
        ({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}, "/var/lib/a"),
        ({"STATE_DIRECTORY": "", "RECONCILER_STATE_DIR": "/srv/state"}, "/srv/state"),
        ({"RECONCILER_STATE_DIR": "/srv/state", "HOME": "/home/op"}, "/srv/state"),
        ({"HOME": "/home/op"}, "/home/op/.local/state/reconciler"),
    ],
)
def test_default_state_dir_precedence(environ: dict[str, str], expected: str) -> None:
    assert default_state_dir(environ) == Path(expected)


def test_default_state_dir_falls_back_to_the_users_home() -> None:
    assert default_state_dir({}) == Path.home() / ".local" / "state" / "reconciler"


# ---------------------------------------------------------------- runs


def test_run_lifecycle(ledger: Ledger) -> None:
    first = ledger.start_run(command="apply", commit="abc123")
    second = ledger.start_run(command="plan", commit=None)
    ledger.finish_run(first, result="changes", counts={"create": 2, "destroy": 1})
    ledger.finish_run(second, result="failed", counts={}, error="ObservationIncomplete: page 3")

    rows = ledger.run_rows()
    assert [r["id"] for r in rows] == [second, first]  # newest first
    done = rows[1]
    assert done["command"] == "apply"
    assert done["commit"] == "abc123"
    assert done["started_at"] == done["finished_at"] == T0_TEXT
    assert done["result"] == "changes"
    assert done["counts"] == {"create": 2, "destroy": 1}
    assert done["error"] is None
    assert rows[0]["error"] == "ObservationIncomplete: page 3"
    assert ledger.run_rows(limit=1) == rows[:1]


def test_unfinished_run_has_empty_counts(ledger: Ledger) -> None:
    ledger.start_run(command="daemon", commit=None)
    (row,) = ledger.run_rows()
    assert (row["finished_at"], row["result"], row["counts"]) == (None, None, {})


def test_unknown_run_result_is_a_caller_bug(ledger: Ledger) -> None:
    run = ledger.start_run(command="apply", commit=None)
    with pytest.raises(ValueError, match="run result"):
        ledger.finish_run(run, result="great", counts={})


# ---------------------------------------------------------------- generations


def test_generation_lifecycle_stamps_each_transition(ledger: Ledger) -> None:
    record_generation(ledger, 1, when=0)
    (row,) = ledger.generation_rows()
    assert row["state"] == "creating"
    assert row["created_at"] == iso(0)
    assert row["activated_at"] is row["retired_at"] is row["destroyed_at"] is None

    ledger.set_generation_state("production", "web", 1, state=GenerationState.ACTIVE, at=at(5))
    ledger.set_generation_state(
        "production", "web", 1, state=GenerationState.STANDBY, at=at(60), reason="spec-changed"
    )
    ledger.set_generation_state("production", "web", 1, state=GenerationState.DESTROYED, at=at(120))
    (row,) = ledger.generation_rows()
    assert row["state"] == "destroyed"
    assert (row["created_at"], row["activated_at"], row["retired_at"], row["destroyed_at"]) == (
        iso(0),
        iso(5),
        iso(60),
        iso(120),
    )
    assert row["reason"] == "spec-changed"  # kept when a later change gives none


def test_failed_generation_is_stamped_retired(ledger: Ledger) -> None:
    record_generation(ledger, 1)
    ledger.set_generation_state(
        "production", "web", 1, state=GenerationState.FAILED, at=at(9), reason="health gate"
    )
    (row,) = ledger.generation_rows(state="failed")
    assert (row["retired_at"], row["activated_at"], row["reason"]) == (iso(9), None, "health gate")


def test_record_generation_is_idempotent(ledger: Ledger) -> None:
    record_generation(ledger, 1, when=0)
    ledger.set_generation_state("production", "web", 1, state=GenerationState.ACTIVE, at=at(5))
    record_generation(ledger, 1, when=30)  # a retried apply must not reset the row
    (row,) = ledger.generation_rows()
    assert (row["state"], row["created_at"]) == ("active", iso(0))


def test_generation_recorded_active_is_stamped_active(ledger: Ledger) -> None:
    record_generation(ledger, 4, state=GenerationState.ACTIVE, when=3)
    (row,) = ledger.generation_rows()
    assert row["activated_at"] == row["created_at"] == iso(3)


def test_set_generation_fields_updates_only_what_is_given(ledger: Ledger) -> None:
    record_generation(ledger, 1)
    ledger.set_generation_fields("production", "web", 1, image_id="ami-resolved")
    ledger.set_generation_fields("production", "web", 1, count=5)
    ledger.set_generation_fields("production", "web", 1)
    (row,) = ledger.generation_rows()
    assert (row["image_id"], row["count"], row["image"]) == ("ami-resolved", 5, "ami-1")


def test_generation_rows_filter_and_order(ledger: Ledger) -> None:
    record_generation(ledger, 2, service="api")
    record_generation(ledger, 1, service="web")
    record_generation(ledger, 1, service="api", state=GenerationState.ACTIVE)
    record_generation(ledger, 1, env="staging")
    rows = ledger.generation_rows()
    assert [(r["env"], r["service"], r["number"]) for r in rows] == [
        ("production", "api", 1),
        ("production", "api", 2),
        ("production", "web", 1),
        ("staging", "web", 1),
    ]
    assert [r["number"] for r in ledger.generation_rows(service="api", state="active")] == [1]
    assert len(ledger.generation_rows(env="staging")) == 1


def test_naive_times_are_refused(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ledger.record_event(kind="invalid_commit", at=datetime(2026, 1, 1))


def test_times_are_stored_as_utc(ledger: Ledger) -> None:
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    ledger.record_event(kind="invalid_commit", at=plus_two)
    assert ledger.event_rows()[0]["at"] == T0_TEXT


# ---------------------------------------------------------------- instances and the view


def test_view_returns_typed_records(ledger: Ledger) -> None:
    record_generation(ledger, 1, when=0)
    record_generation(ledger, 2, when=10)
    ledger.set_generation_state("production", "web", 1, state=GenerationState.ACTIVE, at=at(1))
    ledger.set_generation_state("production", "web", 1, state=GenerationState.STANDBY, at=at(11))
    ledger.set_generation_state("production", "web", 2, state=GenerationState.ACTIVE, at=at(11))
    ledger.set_generation_state("production", "web", 1, state=GenerationState.DESTROYED, at=at(40))
    ledger.set_generation_fields("production", "web", 2, image_id="ami-0f00")
    record_instance(ledger, "i-old", 1, slot=0)
    record_instance(ledger, "i-gone", 2, slot=0)
    record_instance(ledger, "i-new", 2, slot=1, state="pending")
    ledger.set_instance_state("i-old", state="destroyed", at=at(40), reason="standby-expired")
    ledger.set_instance_state("i-gone", state="gone", at=at(41))

    view = ledger.view()
    assert isinstance(view, LedgerView)
    # Destroyed generations stay in the view: their numbers must never be reused.
    assert view.generations == (
        GenerationRecord(
            env="production",
            service="web",
            number=1,
            fingerprint="fp1",
            image="ami-1",
            size="t3.small",
            count=2,
            state=GenerationState.DESTROYED,
            created_at=at(0),
            activated_at=at(1),
            retired_at=at(11),
            state_since=at(40),
        ),
        GenerationRecord(
            env="production",
            service="web",
            number=2,
            fingerprint="fp2",
            image="ami-2",
            size="t3.small",
            count=2,
            state=GenerationState.ACTIVE,
            created_at=at(10),
            activated_at=at(11),
            image_id="ami-0f00",
            state_since=at(11),
        ),
    )
    assert view.generations[0].created_at is not None
    assert view.generations[0].created_at.tzinfo is not None
    assert view.instances == (
        InstanceRecord(
            id="i-new",
            provider="aws-east",
            env="production",
            service="web",
            generation=2,
            slot=1,
            state="pending",
            created_at=at(2),
        ),
    )


def test_instance_upsert_and_end_states(ledger: Ledger) -> None:
    record_instance(ledger, "i-1", 1, state="pending")
    record_instance(ledger, "i-1", 1, state="running")  # upsert: one row, latest facts
    ledger.set_instance_state("i-1", state="destroyed", at=at(30), reason="surplus")
    (row,) = ledger.instance_rows()
    assert (row["state"], row["destroyed_at"], row["reason"]) == ("destroyed", iso(30), "surplus")
    assert row["price_per_hour"] == pytest.approx(0.0208)
    assert row["name"] == "production-web-g1-0"
    assert ledger.instance_rows(live_only=True) == []


def test_set_instance_state_of_unrecorded_instance_is_a_no_op(ledger: Ledger) -> None:
    ledger.set_instance_state("i-unknown", state="destroyed", at=T0)
    assert ledger.instance_rows() == []


def test_unknown_instance_state_is_a_caller_bug(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="instance state"):
        record_instance(ledger, "i-1", 1, state="terminated")


def test_instance_rows_filters(ledger: Ledger) -> None:
    record_instance(ledger, "i-a", 1, slot=0)
    record_instance(ledger, "i-b", 2, slot=1)
    record_instance(ledger, "i-c", 2, slot=0)
    ledger.set_instance_state("i-b", state="gone", at=T0)
    assert [r["id"] for r in ledger.instance_rows(generation=2)] == ["i-c", "i-b"]
    assert [r["id"] for r in ledger.instance_rows(generation=2, live_only=True)] == ["i-c"]
    assert [r["id"] for r in ledger.instance_rows(env="production", live_only=True)] == [
        "i-a",
        "i-c",
    ]
    assert ledger.instance_rows(service="api") == []


def test_history_rows_count_created_and_live_instances(ledger: Ledger) -> None:
    for number in (1, 2, 3):
        record_generation(ledger, number, when=number)
    record_generation(ledger, 1, service="api")
    record_instance(ledger, "i-1", 1)
    record_instance(ledger, "i-2", 2, slot=0)
    record_instance(ledger, "i-3", 2, slot=1)
    ledger.set_instance_state("i-1", state="destroyed", at=T0)
    ledger.set_instance_state("i-2", state="destroyed", at=T0)

    rows = ledger.history_rows(service="web")
    assert [(r["number"], r["instances_created"], r["instances_live"]) for r in rows] == [
        (1, 1, 0),
        (2, 2, 1),
        (3, 0, 0),
    ]
    assert set(rows[0]) == {
        "env", "service", "number", "state", "image", "size", "count", "commit",
        "commit_author", "commit_subject", "commit_signer",
        "created_at", "activated_at", "retired_at", "destroyed_at", "reason",
        "instances_created", "instances_live", "cost",
    }  # fmt: skip
    # limit keeps each service's newest generations, still oldest first.
    limited = ledger.history_rows(limit=2)
    assert [(r["service"], r["number"]) for r in limited] == [("api", 1), ("web", 2), ("web", 3)]
    assert ledger.history_rows(env="staging") == []


# ---------------------------------------------------------------- operations and events


def test_operation_intent_issued_done(ledger: Ledger) -> None:
    run = ledger.start_run(command="apply", commit=None)
    create = ledger.begin_operation(run=run, kind="create", target="production/web g2 #0", at=at(0))
    destroy = ledger.begin_operation(run=run, kind="destroy", target="i-old", at=at(1))
    assert len(create) == 32 and create != destroy

    # The intent is durable the moment begin_operation returns: another connection sees it.
    conn = raw(ledger.path.parent)
    assert conn.execute("SELECT state FROM operations WHERE id = ?", [create]).fetchone()[0] == (
        "intent"
    )
    conn.close()
    assert [op["id"] for op in ledger.open_operations()] == [create, destroy]

    ledger.mark_operation(create, state="issued", at=at(2), instance_id="i-new")
    ledger.mark_operation(destroy, state="failed", at=at(3), detail="UnauthorizedOperation")
    (still_open,) = ledger.open_operations()
    assert still_open["id"] == create
    assert (still_open["state"], still_open["issued_at"]) == ("issued", iso(2))

    ledger.mark_operation(create, state="done", at=at(4))
    assert ledger.open_operations() == []
    conn = raw(ledger.path.parent)
    done = dict(conn.execute("SELECT * FROM operations WHERE id = ?", [create]).fetchone())
    failed = dict(conn.execute("SELECT * FROM operations WHERE id = ?", [destroy]).fetchone())
    conn.close()
    assert done["run"] == run
    assert (done["intent_at"], done["issued_at"], done["finished_at"]) == (iso(0), iso(2), iso(4))
    assert done["instance_id"] == "i-new"  # kept from the "issued" mark
    assert (failed["state"], failed["finished_at"], failed["detail"]) == (
        "failed",
        iso(3),
        "UnauthorizedOperation",
    )


def test_unknown_operation_state_is_a_caller_bug(ledger: Ledger) -> None:
    op = ledger.begin_operation(run=1, kind="create", target="x", at=T0)
    with pytest.raises(ValueError, match="operation state"):
        ledger.mark_operation(op, state="intent", at=T0)


def test_events_round_trip_and_limit_keeps_the_tail(ledger: Ledger) -> None:
    ledger.record_event(
        kind="generation_activated",
        at=at(1),
        run=7,
        env="production",
        service="web",
        generation=2,
        detail={"previous": 1, "state": GenerationState.ACTIVE, "since": at(0)},
    )
    ledger.record_event(kind="instance_destroyed", at=at(2), instance="i-1")
    ledger.record_event(kind="instance_destroyed", at=at(3), instance="i-2")

    first, *_ = ledger.event_rows()
    assert first["detail"] == {"previous": 1, "state": "active", "since": iso(0)}
    assert (first["run"], first["env"], first["service"], first["generation"]) == (
        7,
        "production",
        "web",
        2,
    )
    assert [e["instance"] for e in ledger.event_rows(kind="instance_destroyed")] == ["i-1", "i-2"]
    assert [e["at"] for e in ledger.event_rows(limit=2)] == [iso(2), iso(3)]
    assert ledger.event_rows(kind="instance_destroyed")[0]["detail"] is None


# ---------------------------------------------------------------- concurrency


def test_concurrent_writers_all_land(ledger: Ledger) -> None:
    threads, per_thread = 8, 200
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def write(worker: int) -> None:
        try:
            start.wait()
            for n in range(per_thread):
                ledger.record_event(
                    kind="invalid_commit", at=T0, generation=worker, detail={"n": n}
                )
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    workers = [threading.Thread(target=write, args=(w,)) for w in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert errors == []
    rows = ledger.event_rows(kind="invalid_commit")
    assert len(rows) == threads * per_thread
    for w in range(threads):
        mine = sorted(r["detail"]["n"] for r in rows if r["generation"] == w)
        assert mine == list(range(per_thread))


def test_second_ledger_reads_while_the_first_writes(state_dir: Path, ledger: Ledger) -> None:
    ledger.record_event(kind="invalid_commit", at=T0)
    reader = Ledger.open(state_dir)

    # A reader holding a snapshot does not block a writer in WAL mode (with a rollback
    # journal, this commit would wait out the 5 s busy timeout and fail).
    snapshot = raw(state_dir)
    snapshot.execute("BEGIN")
    assert snapshot.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    began = time.monotonic()
    ledger.record_event(kind="history_rewritten", at=T0)
    assert time.monotonic() - began < 1.0
    assert snapshot.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    snapshot.execute("COMMIT")
    snapshot.close()

    # And a writer in the middle of its transaction does not block the second Ledger.
    writer = raw(state_dir)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO events (at, kind) VALUES (?, 'uncommitted')", [T0_TEXT])
    began = time.monotonic()
    assert [e["kind"] for e in reader.event_rows()] == ["invalid_commit", "history_rewritten"]
    assert time.monotonic() - began < 1.0
    writer.execute("COMMIT")
    writer.close()
    assert [e["kind"] for e in reader.event_rows()][-1] == "uncommitted"

    # Both Ledgers at once from threads: the reader keeps reading while the writer writes.
    done = threading.Event()
    seen: list[int] = []

    def keep_reading() -> None:
        while not done.is_set():
            seen.append(len(reader.event_rows(kind="operations_recovered")))

    thread = threading.Thread(target=keep_reading)
    thread.start()
    for _ in range(100):
        ledger.record_event(kind="operations_recovered", at=T0)
    done.set()
    thread.join(timeout=10)
    reader.close()
    assert seen == sorted(seen) and seen
    assert len(ledger.event_rows(kind="operations_recovered")) == 100


def test_commits_are_remembered_with_validity_and_joined_into_history(ledger: Ledger) -> None:
    good, bad = "a" * 40, "b" * 40
    ledger.record_commit(
        good,
        author="Ada <ada@example.org>",
        subject="web v2",
        committed_at=iso(0),
        valid=True,
        at=at(1),
    )
    ledger.record_commit(
        bad,
        author="Bob <bob@example.org>",
        subject="typo",
        committed_at=iso(2),
        valid=False,
        at=at(3),
        errors=["environments/prod.yaml:3: services.web.cuont: unknown key"],
    )
    assert ledger.last_valid_commit() == good
    rows = ledger.commit_rows()
    assert [(r["sha"], r["valid"]) for r in rows] == [(bad, False), (good, True)]
    assert rows[1]["errors"] == []
    assert rows[0]["errors"] == ["environments/prod.yaml:3: services.web.cuont: unknown key"]

    # Seeing a commit again refreshes it rather than adding a row.
    ledger.record_commit(
        good,
        author="Ada <ada@example.org>",
        subject="web v2",
        committed_at=iso(0),
        valid=True,
        at=at(5),
    )
    assert [r["sha"] for r in ledger.commit_rows()] == [good, bad]

    ledger.record_generation(
        env="prod",
        service="web",
        number=1,
        provider="aws",
        fingerprint="f" * 16,
        image="ami-1",
        size="t3.micro",
        count=1,
        commit=good,
        state=GenerationState.CREATING,
        at=at(6),
    )
    row = ledger.history_rows()[0]
    assert (row["commit_author"], row["commit_subject"]) == ("Ada <ada@example.org>", "web v2")


def test_last_applied_commit_skips_refused_runs(ledger: Ledger) -> None:
    assert ledger.last_applied_commit() is None
    first = ledger.start_run(command="daemon", commit="c" * 40)
    ledger.finish_run(first, result="changes", counts={})
    refused = ledger.start_run(command="daemon", commit="d" * 40)
    ledger.finish_run(refused, result="refused", counts={})
    assert ledger.last_applied_commit() == "c" * 40


def test_corrupt_ledger_is_refused_naming_the_file_and_the_rebuild_command(
    state_dir: Path,
) -> None:
    with Ledger.open(state_dir) as ledger:
        for n in range(200):
            ledger.record_event(kind="invalid_commit", at=T0, detail={"n": n, "pad": "x" * 200})
    conn = raw(state_dir)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (root,) = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'events_kind'"
    ).fetchone()
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    # Scribble over the index's root page: the file still opens, but is inconsistent.
    with open(state_dir / "ledger.sqlite", "r+b") as handle:
        handle.seek((root - 1) * page_size + 8)
        handle.write(b"\xff" * 64)
    with pytest.raises(LedgerError) as caught:
        Ledger.open(state_dir)
    message = str(caught.value)
    assert str(state_dir / "ledger.sqlite") in message
    assert "reconciler ledger rebuild" in message


def test_listing_a_damaged_ledger_without_the_open_check_still_refuses(
    state_dir: Path,
) -> None:
    """Read-only listings skip the whole-file check; a damaged page they read still
    fails with the file and the recovery command named, never with wrong rows."""
    with Ledger.open(state_dir) as ledger:
        for n in range(200):
            ledger.record_event(kind="invalid_commit", at=T0, detail={"n": n, "pad": "x" * 200})
    conn = raw(state_dir)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'events'").fetchone()
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    with open(state_dir / "ledger.sqlite", "r+b") as handle:
        handle.seek((root - 1) * page_size)
        handle.write(b"\xff" * 64)
    with Ledger.open(state_dir, check="none") as ledger, pytest.raises(LedgerError) as caught:
        ledger.event_rows()
    message = str(caught.value)
    assert str(state_dir / "ledger.sqlite") in message
    assert "reconciler ledger rebuild" in message


def test_a_listing_that_would_migrate_the_file_checks_it_whole_first(state_dir: Path) -> None:
    """Opening without the check is for reading; a pending migration writes, so the
    whole-file check runs and a damaged file is refused before anything is written."""
    from sqlite_utils import Database

    from reconciler.ledger.schema import migrations

    state_dir.mkdir(mode=0o700, parents=True)
    conn = sqlite3.connect(state_dir / "ledger.sqlite", isolation_level=None)
    migrations.apply(Database(conn), stop_before="0004_cost_rollup")
    for _ in range(200):
        conn.execute(
            "INSERT INTO events (at, kind, detail) VALUES (?, 'filler', ?)", [T0_TEXT, "x" * 200]
        )
    (root,) = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'events_kind'"
    ).fetchone()
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    with open(state_dir / "ledger.sqlite", "r+b") as handle:
        handle.seek((root - 1) * page_size + 8)
        handle.write(b"\xff" * 64)
    with pytest.raises(LedgerError, match="is corrupt"):
        Ledger.open(state_dir, check="none")
    applied = raw(state_dir).execute("SELECT name FROM _sqlite_migrations").fetchall()
    assert "0004_cost_rollup" not in {row[0] for row in applied}, "nothing was migrated"


@pytest.mark.parametrize("command", [("status",), ("ledger", "history"), ("ledger", "cost")])
def test_a_ledger_written_by_a_newer_version_is_refused_and_left_alone(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    import sqlite3
    import subprocess
    import sys

    with Ledger.open(tmp_path / "state"):
        pass
    path = tmp_path / "state" / "ledger.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
            "VALUES ('reconciler.ledger', '0099_from_the_future', '2030-01-01')"
        )

    def schema() -> list[tuple[str, ...]]:
        with sqlite3.connect(path) as conn:
            return [
                *conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name"),
                *conn.execute("SELECT migration_set, name, applied_at FROM _sqlite_migrations"),
            ]

    before = schema()

    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "--state-dir", str(tmp_path / "state"), *command],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "written by a newer reconciler" in done.stderr
    newest = known_migrations()[-1]  # what this version knows, named in the refusal
    assert "0099_from_the_future" in done.stderr and newest in done.stderr
    assert schema() == before


def test_a_generations_page_that_reads_as_empty_fails_the_listings(state_dir: Path) -> None:
    """A damaged root page whose cell count reads 0 makes the table look empty: the
    listings (which skip the whole-file check) must fail, not show "no generations"."""
    import subprocess
    import sys

    with Ledger.open(state_dir) as ledger:
        for n in range(5):
            ledger.record_generation(
                env="prod", service=f"s{n}", number=1, provider="p", fingerprint="f" * 16,
                image="ami-1", size="t3.micro", count=1, commit=None,
                state=GenerationState.ACTIVE, at=T0,
            )  # fmt: skip
    conn = raw(state_dir)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (root,) = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'generations'"
    ).fetchone()
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    with open(state_dir / "ledger.sqlite", "r+b") as handle:
        handle.seek((root - 1) * page_size + 3)
        handle.write(b"\x00\x00")  # the page's number of cells

    for command in (("ledger", "history"), ("ledger", "history", "--json"), ("status",)):
        done = subprocess.run(
            [sys.executable, "-m", "reconciler", "--state-dir", str(state_dir), *command],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 1, (command, done.stdout)
        assert str(state_dir / "ledger.sqlite") in done.stderr
        assert "reconciler ledger rebuild" in done.stderr


def test_migrating_to_append_only_history_dates_each_current_state(state_dir: Path) -> None:
    """A ledger from before `state_since` gets it from the stamp of its current state,
    so a standby's keep_previous timer still counts from its retirement."""
    from sqlite_utils import Database

    from reconciler.ledger.schema import migrations

    state_dir.mkdir(mode=0o700, parents=True)
    conn = sqlite3.connect(state_dir / "ledger.sqlite", isolation_level=None)
    migrations.apply(Database(conn), stop_before="0005_append_only_history")
    for number, state, stamps in (
        (1, "standby", (at(0), at(1), at(9), None)),
        (2, "active", (at(8), at(9), None, None)),
        (3, "destroyed", (at(2), None, at(3), at(4))),
    ):
        conn.execute(
            "INSERT INTO generations (env, service, number, provider, fingerprint, image, "
            "size, count, state, created_at, activated_at, retired_at, destroyed_at) "
            "VALUES ('production', 'web', ?, 'aws', 'fp', 'ami-1', 't3.small', 1, ?, ?, ?, ?, ?)",
            [number, state, *[codec_time(t) for t in stamps]],
        )
    conn.close()
    with Ledger.open(state_dir) as ledger:
        since = {g.number: g.state_since for g in ledger.view().generations}
    assert since == {1: at(9), 2: at(9), 3: at(4)}


def codec_time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
