"""Replacing the ledger file with one built aside, so that no crash leaves half of one.

Owns: `swap_in`: a ledger built in its own directory (closed, whole) takes the place of
the state directory's ledger in one rename, the old file kept as a backup by a hard
link made first. Killed at any moment, the state directory holds either the old ledger,
whole, or the new one, whole. Also `clear_leftovers` for builds a kill interrupted.
Must not: build or read a ledger's content (the store does).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from pathlib import Path

from reconciler.ledger.paths import LEDGER_FILENAME

BUILD_PREFIX = ".rebuild-"


def build_directory(state_dir: Path) -> Path:
    """A fresh directory for a ledger built aside (earlier leftovers removed)."""
    clear_leftovers(state_dir)
    directory = state_dir / f"{BUILD_PREFIX}{os.getpid()}"
    directory.mkdir(mode=0o700, parents=True)
    return directory


def clear_leftovers(state_dir: Path) -> None:
    """Remove what builds that were killed left: they were never swapped in."""
    for leftover in state_dir.glob(f"{BUILD_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def swap_in(state_dir: Path, built_dir: Path, *, backup: Path | None) -> None:
    """Make `built_dir`'s ledger the state directory's, atomically; keep the old one at
    `backup` (a hard link, or a copy where links are not possible) when given."""
    path = state_dir / LEDGER_FILENAME
    built = built_dir / LEDGER_FILENAME
    _fold_wal(built)
    _fsync(built)
    if path.exists():
        # Everything the old ledger committed goes into its main file first: its -wal
        # must not be left beside the new file, which would read it as its own.
        _fold_wal(path)
        if backup is not None:
            try:
                os.link(path, backup)
            except OSError:
                shutil.copy2(path, backup)
            _fsync(backup)
    for suffix in ("-wal", "-shm"):
        # Left only by a file SQLite could not fold (a damaged one): kept with its backup.
        with contextlib.suppress(FileNotFoundError):
            side = path.with_name(path.name + suffix)
            if backup is not None:
                os.replace(side, backup.with_name(backup.name + suffix))
            else:
                os.unlink(side)
    os.replace(built, path)  # the one step that changes which ledger is there
    _fsync_directory(state_dir)
    shutil.rmtree(built_dir, ignore_errors=True)


def _fold_wal(path: Path) -> None:
    """Checkpoint the -wal into the main file and leave WAL mode (which removes -wal
    and -shm); a file that is no readable database is left as it is."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.DatabaseError:
        pass  # damaged: nothing to fold; it is kept as the backup, whatever it holds
    finally:
        conn.close()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
