"""Opening the ledger file: durability settings, transactions, schema migration.

Owns: the one sqlite3 connection's settings (WAL, synchronous=FULL, 5 s busy timeout,
no driver-managed transactions), the integrity check that refuses a corrupt file, the
`BEGIN` / `COMMIT` / `ROLLBACK` discipline every caller uses, and translating open-time
sqlite3 errors into `LedgerError`. Must not: know the tables beyond asking `schema` to
migrate them, or take the `Ledger`'s lock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from sqlite_utils import Database

from reconciler.errors import LedgerError
from reconciler.ledger.paths import LEDGER_FILENAME, ensure_ledger_file
from reconciler.ledger.schema import (
    apply_migrations,
    known_migrations,
    migrations_pending,
    unknown_migrations,
)

BUSY_TIMEOUT_MS = 5000
RECOVERY = (
    "move the file aside and run `reconciler ledger rebuild` to rebuild the ledger "
    "from the instances' tags"
)
_GENERATIONS_CHECK = "PRAGMA quick_check(generations)"
_CHECKS = {
    "full": "PRAGMA integrity_check(10)",
    "quick": "PRAGMA quick_check(10)",
    "none": "",  # read-only listings: see open_database
}


@contextmanager
def transaction(conn: sqlite3.Connection, *, write: bool) -> Iterator[None]:
    """One explicit transaction, committed when the block ends, rolled back if it raises.

    Writes take the write lock up front (IMMEDIATE): a deferred transaction that
    upgrades to writing can fail with SQLITE_BUSY without waiting out the busy timeout.
    """
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            # The original error says what went wrong; a failing rollback (the
            # connection is already broken) would only hide it.
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def advice(error: BaseException, path: Path) -> str:
    """What to do about a failure of the ledger file: the truth for each kind. Moving
    the file aside throws history away, so it is advised only for a damaged file."""
    text = str(error).lower()
    if "full" in text or "no space" in text:
        return (
            f"the disk holding {path.parent} is full: free space there and retry (the "
            "ledger is intact: SQLite wrote nothing half-way)"
        )
    if "readonly" in text or "read-only" in text or "permission" in text or "access" in text:
        return (
            f"the ledger and its directory {path.parent} must be writable by this user "
            "(check the mount, the owner and the mode)"
        )
    if "locked" in text or "busy" in text:
        return "another process holds the ledger's write lock; retry when it is done"
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return RECOVERY
    return "check the file and its directory; if it is damaged: " + RECOVERY


def open_database(state_dir: Path, *, check: str = "full") -> tuple[Path, Database]:
    """Create or open `state_dir/ledger.sqlite`, checked, configured and migrated.

    `check` is "full" (PRAGMA integrity_check: every page and index), "quick"
    (quick_check: every page, not index contents) or "none", for read-only listings:
    the check guards against writing into a damaged file (which spreads the damage),
    and at a million instance rows even quick_check costs more than the listing itself.
    A listing that reads a damaged page still fails, with the recovery hint. "none"
    becomes "full" when the schema needs migrating, since that writes.
    """
    if check not in _CHECKS:
        raise ValueError(f"unknown ledger check {check!r}; expected one of {sorted(_CHECKS)}")
    try:
        path = ensure_ledger_file(state_dir)
    except OSError as exc:
        raise LedgerError(
            f"cannot create the ledger in {state_dir}: {exc.strerror or exc}; "
            f"{advice(exc, state_dir / LEDGER_FILENAME)}"
        ) from exc
    # isolation_level=None: the driver opens no transactions of its own, so the
    # explicit ones in `transaction` are the only ones there are.
    # check_same_thread=False: the apply step's workers share this connection; the
    # Ledger's lock serialises them.
    try:
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None
        )
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open ledger {path}: {exc}") from exc
    try:
        db = _configure(conn, path, check=check)
    except sqlite3.Error as exc:
        conn.close()
        raise LedgerError(f"cannot open ledger {path}: {exc}; {advice(exc, path)}") from exc
    except BaseException:
        conn.close()
        raise
    return path, db


def _configure(conn: sqlite3.Connection, path: Path, *, check: str) -> Database:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    # The first statement that reads the file: a file that is not a database fails here.
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        raise LedgerError(f"cannot open ledger {path}: journal mode stays {mode!r}, not WAL")
    newer = unknown_migrations(Database(conn, execute_plugins=False))
    if newer:
        raise LedgerError(
            f"ledger {path} was written by a newer reconciler: its schema has "
            f"{', '.join(newer)}, and this version knows only up to {known_migrations()[-1]}; "
            "upgrade reconciler to read it (the file was left as it is)"
        )
    if check == "none" and migrations_pending(Database(conn, execute_plugins=False)):
        check = "full"
    # Writing into a damaged file spreads the damage: refuse it, and say how to recover.
    # Even unchecked, the generations table is checked page by page (quick_check of one
    # table: milliseconds at 40,000 rows): every listing reads it, and a damaged page of
    # it can read as a table with no rows at all (`ledger history` saying "no
    # generations recorded", exit 0) instead of failing.
    found = [str(row[0]) for row in conn.execute(_CHECKS[check] or _GENERATIONS_CHECK)]
    if found != ["ok"]:
        detail = "; ".join(found[:3]) + (f" (and {len(found) - 3} more)" if len(found) > 3 else "")
        raise LedgerError(f"ledger {path} is corrupt ({detail}); {RECOVERY}")
    # FULL: an operation's intent must survive a power cut, as it precedes the cloud call.
    conn.execute("PRAGMA synchronous = FULL")
    # No sqlite-utils plugins: the daemon's connection is not an extension point.
    db = Database(conn, execute_plugins=False)
    # One IMMEDIATE transaction around all migrations: two daemons opening a fresh
    # file serialise here instead of both creating the tables.
    with transaction(conn, write=True):
        apply_migrations(db)
    return db
