"""Which commit a desired-state directory is at, if it is a git checkout.

Owns: read-only `git` queries. Must not: change a repository (the daemon's git source does).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def current_commit(path: str | Path) -> str | None:
    """The HEAD sha of the repository holding `path`, or None outside git."""
    try:
        done = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    sha = done.stdout.strip()
    return sha if done.returncode == 0 and len(sha) == 40 else None
