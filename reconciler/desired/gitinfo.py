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


def _git(path: str | Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(path), *args],
            capture_output=True, text=True, timeout=10, check=False,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def uncommitted_changes(path: str | Path) -> int | None:
    """How many files under `path` differ from its commit (untracked ones included),
    or None outside git: `plan` says so next to the commit it names."""
    out = _git(path, "status", "--porcelain", "--untracked-files=normal", "--", ".")
    return None if out is None else len([line for line in out.splitlines() if line.strip()])


def source_commit(package_dir: Path) -> str | None:
    """The commit of reconciler's own source when it runs from a git checkout of it
    (an editable install, the repository's virtual environment), else None."""
    top = _git(package_dir, "rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != package_dir.resolve().parent:
        return None
    return current_commit(package_dir)
