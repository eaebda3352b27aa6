"""The `Ledger`: one SQLite file recording runs, generations, instances, operations, events.

Owns: the lock that lets the apply step's worker threads share the one connection,
one `BEGIN IMMEDIATE` transaction per write so each call is durable when it returns,
checking the values callers pass in, and translating sqlite3 errors into `LedgerError`
(opening the file and its settings live in `connection`). Must not: decide anything
(the planner does), call a cloud, hold secrets, or let sqlite-utils types escape.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from reconciler.errors import LedgerError
from reconciler.fencing import OPEN, Fence
from reconciler.ledger import codec, costsql, queries
from reconciler.ledger.connection import advice, open_database, transaction
from reconciler.ledger.events import EVENT_KINDS
from reconciler.model import GenerationRecord, GenerationState, LedgerView

RUN_RESULTS = frozenset({"ok", "changes", "failed", "refused", "no-op", "interrupted", "skipped"})
# "stopped" is accepted beside DESIGN's four so an observed InstanceState can be recorded as is.
INSTANCE_STATES = frozenset({"pending", "running", "stopped", "destroyed", "gone"})
OPERATION_OUTCOMES = frozenset({"issued", "done", "failed"})
REQUEST_KINDS = frozenset({"rollback", "release", "retry", "unfreeze", "switch", "abort"})
REQUEST_ANSWERS = frozenset({"done", "refused", "failed"})
SNAPSHOTS_KEPT = 5  # observations kept per provider: enough to compare, never a history

# Which timestamp column a generation state change stamps.
_GENERATION_STAMP = {
    GenerationState.ACTIVE: "activated_at",
    GenerationState.STANDBY: "retired_at",
    GenerationState.FAILED: "retired_at",
    GenerationState.DESTROYED: "destroyed_at",
}


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _insert_transition(
    db: Database,
    env: str,
    service: str,
    number: int,
    before: GenerationState | None,
    after: GenerationState,
    at: datetime,
    reason: str | None,
) -> None:
    """The event row of one generation state change, in the caller's transaction."""
    detail: dict[str, Any] = {"from": before.value if before else None, "to": after.value}
    if reason is not None:
        detail["reason"] = reason
    _insert_event(db, "generation_state", at, env=env, service=service, generation=number,
                  detail=detail)  # fmt: skip


def _insert_event(
    db: Database,
    kind: str,
    at: datetime,
    *,
    run: int | None = None,
    env: str | None = None,
    service: str | None = None,
    generation: int | None = None,
    instance: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """One event row, in the caller's transaction; only kinds of the catalogue."""
    _require(kind, EVENT_KINDS, "event kind")
    db.table("events").insert(
        {
            "at": codec.encode_time(at), "run": run, "kind": kind, "env": env,
            "service": service, "generation": generation, "instance": instance,
            "detail": codec.encode_json(detail),
        }
    )  # fmt: skip


def _require(value: str, allowed: Collection[str], what: str) -> str:
    # A typo here is a bug in the caller, not a ledger failure: ValueError, not LedgerError.
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(allowed)}")
    return value


class Ledger:
    """Thread-safe access to the ledger file. Obtain one with `Ledger.open`."""

    def __init__(self, path: Path, db: Database, *, clock: Callable[[], datetime]) -> None:
        self.path = path
        self._db: Database | None = db
        self._clock = clock
        self._lock = threading.Lock()
        # The transaction a thread's `batch()` holds open: its writes join it.
        self._batched = threading.local()
        # Checked before every write: under `--coordination`, the leader's lease
        # (a follower, or a leader past its deadline, writes nothing).
        self.fence: Fence = OPEN

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def open(
        cls, state_dir: Path, *, clock: Callable[[], datetime] = _utcnow, check: str = "full"
    ) -> Ledger:
        """Open (creating if needed) `state_dir/ledger.sqlite` and bring its schema up to date.

        `clock` stamps the run start and finish times (the other writes are given theirs).
        A file that fails its integrity `check` ("full" or "quick") raises `LedgerError`.
        """
        path, db = open_database(state_dir, check=check)
        return cls(path, db, clock=clock)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    # ------------------------------------------------------------ transactions

    def _open_db(self) -> Database:
        if self._db is None:
            raise LedgerError(f"ledger {self.path} is closed")
        return self._db

    @contextmanager
    def _transaction(self, what: str, *, write: bool) -> Iterator[Database]:
        """Hold the lock and one transaction for the block; commit it before returning.

        Reads use a transaction too, so a multi-query read (the view) sees one snapshot.
        """
        if write:
            self.fence.check(f"ledger {what}")
        joined: Database | None = getattr(self._batched, "db", None)
        if joined is not None:
            yield joined  # part of this thread's batch: committed with it
            return
        with self._lock:
            db = self._open_db()
            try:
                with transaction(db.conn, write=write):
                    yield db
            except sqlite3.Error as exc:
                # A damaged page met while reading (listings open without a full check),
                # a full disk, a read-only file: each with what to do about it.
                hint = advice(exc, self.path)
                raise LedgerError(f"ledger {self.path}: {what} failed: {exc}; {hint}") from exc

    @contextmanager
    def batch(self, what: str) -> Iterator[None]:
        """Several writes of this thread as one transaction (one commit, one wait for the
        lock): for records made after a cloud call, never for an intent, which must be
        durable on its own before its call. Nothing slow may run inside."""
        if getattr(self._batched, "db", None) is not None:
            yield
            return
        with self._transaction(what, write=True) as db:
            self._batched.db = db
            try:
                yield
            finally:
                self._batched.db = None

    # ------------------------------------------------------------ runs

    def start_run(self, *, command: str, commit: str | None) -> int:
        row = {"started_at": codec.encode_time(self._clock()), "command": command, "commit": commit}
        with self._transaction("start_run", write=True) as db:
            run_id = db.table("runs").insert(row).last_pk
        if not isinstance(run_id, int):
            raise LedgerError(f"ledger {self.path}: start_run got no run id back")
        return run_id

    def finish_run(
        self,
        run_id: int,
        *,
        result: str,
        counts: Mapping[str, int],
        error: str | None = None,
        held: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        _require(result, RUN_RESULTS, "run result")
        params = [
            codec.encode_time(self._clock()), result, codec.encode_json(counts), error,
            None if held is None else codec.encode_json(list(held)),
        ]  # fmt: skip
        with self._transaction("finish_run", write=True) as db:
            db.execute(
                "UPDATE runs SET finished_at = ?, result = ?, counts = ?, error = ?, held = ?"
                " WHERE id = ?",
                [*params, run_id],
            )

    def last_applied_commit(self) -> str | None:
        """The commit of the newest run that acted on a desired state (rewind detection)."""
        with self._transaction("last_applied_commit", write=False) as db:
            return queries.last_applied_commit(db)

    # ------------------------------------------------------------ commits

    def record_commit(
        self,
        sha: str,
        *,
        author: str | None,
        subject: str | None,
        committed_at: str | None,
        valid: bool,
        at: datetime,
        errors: list[str] | None = None,
        signer: Mapping[str, str | None] | None = None,
    ) -> None:
        """Remember a commit the daemon looked at; seeing it again refreshes `seen_at`.
        `signer` (key_type, fingerprint, signer) when its signature was verified."""
        row: dict[str, Any] = {
            "sha": sha,
            "author": author,
            "subject": subject,
            "committed_at": committed_at,
            "seen_at": codec.encode_time(at),
            "valid": 1 if valid else 0,
            "errors": codec.encode_json({"problems": errors}) if errors else None,
        }
        if signer is not None:
            row["signer_type"] = signer.get("key_type")
            row["signer_fingerprint"] = signer.get("fingerprint")
            row["signer"] = signer.get("signer")
        with self._transaction("record_commit", write=True) as db:
            db.table("commits").upsert(row, pk="sha")

    def trust_commit(self, sha: str, *, by: str, at: datetime, reason: str | None) -> None:
        """An operator accepts `sha` (and what it descends from) without a trusted
        signature; recorded with who and when, as a row and an event."""
        with self._transaction("trust_commit", write=True) as db:
            db.table("trusted_commits").upsert(
                {"sha": sha, "by": by, "at": codec.encode_time(at), "reason": reason}, pk="sha"
            )
            _insert_event(db, "commit_trusted", at, detail={"commit": sha, "by": by,
                                                            "reason": reason})  # fmt: skip

    def trusted_commits(self) -> list[dict[str, Any]]:
        with self._transaction("trusted_commits", write=False) as db:
            return list(db.query("SELECT * FROM trusted_commits ORDER BY at"))

    def commit_row(self, sha: str) -> dict[str, Any] | None:
        with self._transaction("commit_row", write=False) as db:
            rows = list(db.query("SELECT * FROM commits WHERE sha = ?", [sha]))
        return rows[0] if rows else None

    def last_valid_commit(self) -> str | None:
        with self._transaction("last_valid_commit", write=False) as db:
            return queries.last_commit(db, valid=True)

    def commit_rows(self, *, limit: int | None = None) -> list[dict[str, Any]]:
        with self._transaction("commit_rows", write=False) as db:
            return queries.commit_rows(db, limit=limit)

    # ------------------------------------------------------------ generations

    def record_generation(
        self,
        *,
        env: str,
        service: str,
        number: int,
        provider: str,
        fingerprint: str,
        image: str,
        size: str,
        count: int,
        commit: str | None,
        state: GenerationState,
        at: datetime,
        reason: str | None = None,
    ) -> None:
        """Insert the generation stamped `at`; a generation already recorded is left as is."""
        state = GenerationState(state)
        row: dict[str, Any] = {
            "env": env,
            "service": service,
            "number": number,
            "provider": provider,
            "fingerprint": fingerprint,
            "image": image,
            "size": size,
            "count": count,
            "commit": commit,
            "state": state.value,
            "created_at": codec.encode_time(at),
            "reason": reason,
        }
        # Recording a generation straight into a later state (adopting one the
        # ledger lost) stamps that state's time too, so the row is self-consistent.
        stamp = _GENERATION_STAMP.get(state)
        if stamp is not None:
            row[stamp] = row["created_at"]
        row["state_since"] = row["created_at"]
        columns = ", ".join(f'"{name}"' for name in row)
        marks = ", ".join("?" for _ in row)
        sql = (
            f"INSERT INTO generations ({columns}) VALUES ({marks}) "
            "ON CONFLICT (env, service, number) DO NOTHING"
        )
        with self._transaction("record_generation", write=True) as db:
            if db.execute(sql, list(row.values())).rowcount:
                _insert_transition(db, env, service, number, None, state, at, reason)

    def set_generation_state(
        self,
        env: str,
        service: str,
        number: int,
        *,
        state: GenerationState,
        at: datetime,
        reason: str | None = None,
    ) -> None:
        """Move a generation to `state`. History is append-only: the change is an event
        row (`generation_state`, from and to), `state_since` says when the current state
        began, and a state's first time (`activated_at`, `retired_at`, `destroyed_at`) is
        stamped once and never rewritten. Unknown rows, and a move to the state the row
        is already in without a new reason: no-op."""
        state = GenerationState(state)
        stamp = _GENERATION_STAMP.get(state)
        with self._transaction("set_generation_state", write=True) as db:
            current = db.execute(
                "SELECT state, reason FROM generations"
                " WHERE env = ? AND service = ? AND number = ?",
                [env, service, number],
            ).fetchone()
            if current is None or (current[0] == state.value and reason in (None, current[1])):
                return
            assignments = ['"state" = ?', '"state_since" = ?']
            values: list[Any] = [state.value, codec.encode_time(at)]
            if stamp is not None:
                assignments.append(f'"{stamp}" = COALESCE("{stamp}", ?)')
                values.append(codec.encode_time(at))
            if reason is not None:
                assignments.append('"reason" = ?')
                values.append(reason)
            db.execute(
                f"UPDATE generations SET {', '.join(assignments)} "
                "WHERE env = ? AND service = ? AND number = ?",
                [*values, env, service, number],
            )
            previous = GenerationState(current[0])
            _insert_transition(db, env, service, number, previous, state, at, reason)

    def set_generation_fields(
        self,
        env: str,
        service: str,
        number: int,
        *,
        image_id: str | None = None,
        count: int | None = None,
    ) -> None:
        updates = {
            name: value
            for name, value in (("image_id", image_id), ("count", count))
            if value is not None
        }
        if updates:
            self._update_generation("set_generation_fields", env, service, number, updates)

    def _update_generation(
        self, what: str, env: str, service: str, number: int, updates: Mapping[str, Any]
    ) -> None:
        # Column names come from this module, never from callers.
        assignments = ", ".join(f'"{name}" = ?' for name in updates)
        sql = f"UPDATE generations SET {assignments} WHERE env = ? AND service = ? AND number = ?"
        with self._transaction(what, write=True) as db:
            db.execute(sql, [*updates.values(), env, service, number])

    # ------------------------------------------------------------ instances

    def record_instance(
        self,
        *,
        id: str,
        provider: str,
        env: str,
        service: str,
        generation: int,
        slot: int | None,
        name: str | None,
        image: str,
        size: str,
        price_per_hour: float | None,
        state: str,
        created_at: datetime,
        op: str | None,
    ) -> None:
        """Insert the instance, or overwrite what is known about it (keyed by node id)."""
        row = {
            "id": id,
            "provider": provider,
            "env": env,
            "service": service,
            "generation": generation,
            "slot": slot,
            "name": name,
            "image": image,
            "size": size,
            "price_per_hour": price_per_hour,
            "state": _require(str(state), INSTANCE_STATES, "instance state"),
            "created_at": codec.encode_time(created_at),
            "created_s": created_at.timestamp(),
            "op": op,
        }
        with self._transaction("record_instance", write=True) as db:
            known = db.execute("SELECT 1 FROM instances WHERE id = ?", [id]).fetchone()
            db.table("instances").upsert(row, pk="id")
            if known is None:
                _insert_event(db, "instance_created", created_at, env=env, service=service,
                              generation=generation, instance=id,
                              detail={"provider": provider, "image": image, "size": size,
                                      "state": row["state"]})  # fmt: skip

    def set_instance_state(
        self, instance_id: str, *, state: str, at: datetime, reason: str | None = None
    ) -> None:
        """Record an instance's new state; destroyed/gone also stamp `destroyed_at`.

        An instance the ledger never recorded is left unrecorded (no-op): the cloud can
        hold instances the ledger lost, and `ledger rebuild` is what restores them.
        """
        state = _require(str(state), INSTANCE_STATES, "instance state")
        updates: dict[str, Any] = {"state": state}
        if state in queries.ENDED_INSTANCE_STATES:
            updates["destroyed_at"] = codec.encode_time(at)
            updates["ended_s"] = at.timestamp()
            updates["reason"] = reason
        elif reason is not None:
            updates["reason"] = reason
        assignments = ", ".join(f'"{name}" = ?' for name in updates)
        ended = state in queries.ENDED_INSTANCE_STATES
        with self._transaction("set_instance_state", write=True) as db:
            # An instance ends once: its first end (time and reason) is history.
            current = db.execute(
                "SELECT env, service, generation, ended_s FROM instances WHERE id = ?",
                [instance_id],
            ).fetchone()
            if current is None or (ended and current[3] is not None):
                return
            db.execute(
                f"UPDATE instances SET {assignments} WHERE id = ?",
                [*updates.values(), instance_id],
            )
            if ended:
                kind = "instance_destroyed" if state == "destroyed" else "instance_gone"
                _insert_event(db, kind, at, env=current[0], service=current[1],
                              generation=current[2], instance=instance_id,
                              detail={"reason": reason})  # fmt: skip

    # ------------------------------------------------------------ operations

    def begin_operation(self, *, run: int, kind: str, target: str, at: datetime) -> str:
        """Record the intent to mutate the cloud; durable on return, so before the cloud call."""
        op_id = uuid.uuid4().hex
        row = {
            "id": op_id,
            "run": run,
            "kind": kind,
            "target": target,
            "state": "intent",
            "intent_at": codec.encode_time(at),
            "epoch": self.fence.epoch,
        }
        with self._transaction("begin_operation", write=True) as db:
            db.table("operations").insert(row)
        return op_id

    def mark_operation(
        self,
        op_id: str,
        *,
        state: str,
        at: datetime,
        instance_id: str | None = None,
        detail: str | None = None,
    ) -> None:
        state = _require(state, OPERATION_OUTCOMES, "operation state")
        stamp = "issued_at" if state == "issued" else "finished_at"
        updates: dict[str, Any] = {"state": state, stamp: codec.encode_time(at)}
        # Keep what an earlier mark recorded (e.g. the node id from "issued").
        if instance_id is not None:
            updates["instance_id"] = instance_id
        if detail is not None:
            updates["detail"] = detail
        assignments = ", ".join(f'"{name}" = ?' for name in updates)
        with self._transaction("mark_operation", write=True) as db:
            db.execute(
                f"UPDATE operations SET {assignments} WHERE id = ?", [*updates.values(), op_id]
            )

    def open_operations(self) -> list[dict[str, Any]]:
        """Operations whose outcome was never recorded: the cloud may have acted on them."""
        with self._transaction("open_operations", write=False) as db:
            return queries.open_operations(db)

    # ------------------------------------------------------------ events

    def record_event(
        self,
        *,
        kind: str,
        at: datetime,
        run: int | None = None,
        env: str | None = None,
        service: str | None = None,
        generation: int | None = None,
        instance: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        with self._transaction("record_event", write=True) as db:
            _insert_event(db, kind, at, run=run, env=env, service=service,
                          generation=generation, instance=instance, detail=detail)  # fmt: skip

    # ------------------------------------------------------------ reads

    def pragmas(self) -> dict[str, Any]:
        """This connection's durability settings, for `status` and for tests to check."""
        with self._transaction("pragmas", write=False) as db:
            conn = db.conn
            return {
                name: conn.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "synchronous", "busy_timeout")
            }

    def has_event(self, *, kind: str, instance: str) -> bool:
        """Whether an event of `kind` about `instance` was ever recorded."""
        with self._transaction("has_event", write=False) as db:
            rows = db.query(
                "SELECT 1 FROM events WHERE kind = ? AND instance = ? LIMIT 1", [kind, instance]
            )
            return any(True for _ in rows)

    def destroyed_instance_ids(self, *, since: datetime) -> frozenset[str]:
        """Instances recorded as destroyed (by us, or found gone) at or after `since`."""
        with self._transaction("destroyed_instance_ids", write=False) as db:
            rows = db.query("SELECT id FROM instances WHERE ended_s >= ?", [since.timestamp()])
            return frozenset(row["id"] for row in rows)

    def view(self) -> LedgerView:
        with self._transaction("view", write=False) as db:
            return queries.view(db)

    def generation_rows(
        self, *, env: str | None = None, service: str | None = None, state: str | None = None
    ) -> list[dict[str, Any]]:
        with self._transaction("generation_rows", write=False) as db:
            return queries.generation_rows(db, env=env, service=service, state=state)

    def service_keys(
        self, *, env: str | None = None, since: datetime | None = None
    ) -> list[tuple[str, str]]:
        """Every (env, service) with a recorded generation (created since `since`), sorted."""
        with self._transaction("service_keys", write=False) as db:
            return queries.service_keys(
                db, env=env, since=codec.encode_time(since) if since is not None else None
            )

    def history_rows(
        self,
        *,
        env: str | None = None,
        service: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        since: datetime | None = None,
        now: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Each service's generations oldest first, with their cost so far.

        `offset` skips each service's newest N and `limit` keeps the next N (pages, newest
        first); `since` keeps generations created at or after it.
        """
        with self._transaction("history_rows", write=False) as db:
            return queries.history_rows(
                db,
                env=env,
                service=service,
                limit=limit,
                offset=offset,
                since=codec.encode_time(since) if since is not None else None,
                now=now or self._clock(),
            )

    # ------------------------------------------------------------ operator requests

    def add_request(
        self, *, kind: str, env: str, service: str | None, requested_by: str, at: datetime
    ) -> int:
        """Record an operator's request for the process holding the state directory."""
        _require(kind, REQUEST_KINDS, "request kind")
        row = {"at": codec.encode_time(at), "kind": kind, "env": env, "service": service,
               "requested_by": requested_by, "state": "pending"}  # fmt: skip
        with self._transaction("add_request", write=True) as db:
            request_id = db.table("requests").insert(row).last_pk
        if not isinstance(request_id, int):
            raise LedgerError(f"ledger {self.path}: add_request got no id back")
        return request_id

    def claim_requests(self, *, at: datetime) -> list[dict[str, Any]]:
        """The pending requests, oldest first, marked taken in the same transaction so
        a request is acted on once (and a waiting command can no longer cancel it)."""
        with self._transaction("claim_requests", write=True) as db:
            rows = list(db.query("SELECT * FROM requests WHERE state = 'pending' ORDER BY id"))
            db.execute(
                "UPDATE requests SET state = 'taken', answered_at = ? WHERE state = 'pending'",
                [codec.encode_time(at)],
            )
        return rows

    def answer_request(self, request_id: int, *, state: str, answer: str, at: datetime) -> None:
        _require(state, REQUEST_ANSWERS, "request answer")
        with self._transaction("answer_request", write=True) as db:
            db.execute(
                "UPDATE requests SET state = ?, answer = ?, answered_at = ? WHERE id = ?",
                [state, answer, codec.encode_time(at), request_id],
            )

    def cancel_request(self, request_id: int, *, why: str, at: datetime) -> bool:
        """Withdraw a request nobody took yet; False when it was taken meanwhile."""
        with self._transaction("cancel_request", write=True) as db:
            cursor = db.execute(
                "UPDATE requests SET state = 'cancelled', answer = ?, answered_at = ?"
                " WHERE id = ? AND state = 'pending'",
                [why, codec.encode_time(at), request_id],
            )
            return bool(cursor.rowcount)

    def request_row(self, request_id: int) -> dict[str, Any] | None:
        with self._transaction("request_row", write=False) as db:
            rows = list(db.query("SELECT * FROM requests WHERE id = ?", [request_id]))
        return rows[0] if rows else None

    def request_rows(self, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Every operator request, oldest first (the newest `limit` when given)."""
        with self._transaction("request_rows", write=False) as db:
            rows = list(db.query("SELECT * FROM requests ORDER BY id DESC LIMIT ?", [limit or -1]))
        return rows[::-1]

    def pending_request_rows(self) -> list[dict[str, Any]]:
        with self._transaction("pending_request_rows", write=False) as db:
            return list(
                db.query("SELECT * FROM requests WHERE state IN ('pending', 'taken') ORDER BY id")
            )

    def pending_request_count(self) -> int:
        with self._transaction("pending_request_count", write=False) as db:
            row = db.execute("SELECT count(*) FROM requests WHERE state = 'pending'").fetchone()
        return int(row[0])

    def last_run_with_holds(self) -> dict[str, Any] | None:
        """The newest finished pass that recorded which services it found held."""
        with self._transaction("last_run_with_holds", write=False) as db:
            rows = list(db.query(
                "SELECT id, finished_at, held FROM runs WHERE held IS NOT NULL"
                " ORDER BY id DESC LIMIT 1"
            ))  # fmt: skip
        for row in rows:
            row["held"] = codec.decode_json(row["held"])
        return rows[0] if rows else None

    def failed_run_rows(self, *, since: datetime, limit: int) -> list[dict[str, Any]]:
        """Runs since `since` that failed, were refused or were interrupted, newest first."""
        with self._transaction("failed_run_rows", write=False) as db:
            rows = list(db.query(
                "SELECT * FROM runs WHERE result IN ('failed', 'refused', 'interrupted')"
                " AND started_at >= ? ORDER BY id DESC LIMIT ?",
                [codec.encode_time(since), limit],
            ))  # fmt: skip
        for row in rows:
            row["counts"] = codec.decode_json(row["counts"]) or {}
        return rows

    def run_rows(self, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Runs newest first, `counts` decoded."""
        with self._transaction("run_rows", write=False) as db:
            return queries.run_rows(db, limit=limit)

    def instance_rows(
        self,
        *,
        env: str | None = None,
        service: str | None = None,
        generation: int | None = None,
        live_only: bool = False,
    ) -> list[dict[str, Any]]:
        with self._transaction("instance_rows", write=False) as db:
            return queries.instance_rows(
                db, env=env, service=service, generation=generation, live_only=live_only
            )

    def event_rows(
        self,
        *,
        kind: str | None = None,
        limit: int | None = None,
        env: str | None = None,
        service: str | None = None,
        since: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Events oldest first, `detail` decoded; `limit` keeps the newest N."""
        with self._transaction("event_rows", write=False) as db:
            return queries.event_rows(
                db,
                kind=kind,
                limit=limit,
                env=env,
                service=service,
                since=codec.encode_time(since) if since is not None else None,
            )

    def generations_for(self, keys: Iterable[tuple[str, str, int]]) -> tuple[GenerationRecord, ...]:
        """The recorded generations among these (env, service, number) keys."""
        with self._transaction("generations_for", write=False) as db:
            return queries.generations_for(db, sorted(set(keys)))

    def instance_rows_by_id(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The ledger's rows for these node ids (destroyed ones too), keyed by id."""
        with self._transaction("instance_rows_by_id", write=False) as db:
            return queries.instance_rows_by_id(db, list(ids))

    # ------------------------------------------------------------ costs

    def cost_rows(
        self,
        *,
        by: str,
        since: datetime | None = None,
        until: datetime | None = None,
        now: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Cost per env, service, generation or day within [since, until) (DESIGN §5)."""
        with self._transaction("cost_rows", write=False) as db:
            return costsql.cost_rows(db, by=by, now=now or self._clock(), since=since, until=until)

    def safety_net_cost(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        now: datetime | None = None,
    ) -> dict[str, float]:
        """What standby time and failed generations cost within the window."""
        with self._transaction("safety_net_cost", write=False) as db:
            return costsql.safety_net(db, now=now or self._clock(), since=since, until=until)

    # ------------------------------------------------------------ observations

    def record_observation(
        self,
        *,
        run: int | None,
        at: datetime,
        commit: str | None,
        documents: Mapping[str, Mapping[str, Any]],
        billing: Mapping[str, tuple[str, float]],
        keep: int = SNAPSHOTS_KEPT,
    ) -> None:
        """Store one pass's observation: one row per provider, and each profile's billing.

        One transaction of O(providers) rows, whatever the fleet size; only the newest
        `keep` observations per provider are kept.
        """
        stamp = codec.encode_time(at)
        with self._transaction("record_observation", write=True) as db:
            for provider, document in sorted(documents.items()):
                db.table("snapshots").insert(
                    {
                        "at": stamp,
                        "run": run,
                        "provider": provider,
                        "commit": commit,
                        "document": codec.encode_json(document),
                    }
                )
                db.execute(
                    "DELETE FROM snapshots WHERE provider = ? AND id NOT IN "
                    "(SELECT id FROM snapshots WHERE provider = ? ORDER BY id DESC LIMIT ?)",
                    [provider, provider, keep],
                )
            for provider, (mode, minimum) in sorted(billing.items()):
                db.table("provider_billing").upsert(
                    {
                        "provider": provider,
                        "billing": mode,
                        "billing_minimum": minimum,
                        "updated_at": stamp,
                    },
                    pk="provider",
                )

    def latest_observation(self) -> list[dict[str, Any]]:
        """The newest pass's observation rows (one per provider), `document` decoded."""
        with self._transaction("latest_observation", write=False) as db:
            return queries.latest_snapshots(db)

    def provider_billing(self) -> dict[str, tuple[str, float]]:
        """Each provider profile's billing (mode, minimum seconds) as the last pass saw it."""
        with self._transaction("provider_billing", write=False) as db:
            return {
                row["provider"]: (row["billing"], row["billing_minimum"])
                for row in db.query("SELECT * FROM provider_billing")
            }
