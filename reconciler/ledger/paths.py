"""Where the ledger lives on disk, and creating that place with safe permissions.

Owns: the default state directory (DESIGN §5), the ledger file name, and creating the
directory (0700) and the file (0600) before SQLite touches them. Must not: open the
database or import sqlite-utils; the store does that once the file is in place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

LEDGER_FILENAME = "ledger.sqlite"

_DIR_MODE = 0o700
_FILE_MODE = 0o600


def default_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The state directory: systemd's, else the operator's override, else the XDG default."""
    systemd = environ.get("STATE_DIRECTORY", "")
    if systemd:
        # systemd joins several StateDirectory= entries with ':'; the first is ours.
        first = systemd.split(":", 1)[0]
        if first:
            return Path(first)
    override = environ.get("RECONCILER_STATE_DIR", "")
    if override:
        return Path(override).expanduser()
    home = environ.get("HOME")
    base = Path(home) if home else Path.home()
    return base / ".local" / "state" / "reconciler"


def ensure_ledger_file(state_dir: Path) -> Path:
    """Create the state directory and an empty ledger file if missing; return the file path.

    The ledger records what runs where and what it costs, so it is private to the
    daemon's user. Existing directories and files keep their mode: systemd (or the
    operator) owns those decisions once the paths exist.
    """
    if not state_dir.is_dir():
        state_dir.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask; state it exactly.
        state_dir.chmod(_DIR_MODE)
    path = state_dir / LEDGER_FILENAME
    try:
        # O_EXCL: only the process that creates the file sets its mode, and an
        # existing ledger is never truncated.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    except FileExistsError:
        return path
    try:
        # SQLite gives the -wal and -shm files the main file's mode, so this
        # one chmod covers all three.
        os.fchmod(fd, _FILE_MODE)
    finally:
        os.close(fd)
    return path
