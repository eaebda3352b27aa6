"""What this build of reconciler is: its version and, where known, its source commit.

Owns: the answer `--version` prints and `reconciler_build_info` exports. The commit
comes from `RECONCILER_BUILD_COMMIT` (set by a packager), else from the package's
`BUILD_COMMIT` file (written before `pip install .`, see the README), else from the git
checkout the package runs from, else it is "unknown".
"""

from __future__ import annotations

import os
from functools import cache
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path

from reconciler.desired.gitinfo import source_commit


@cache
def version() -> str:
    try:
        return package_version("reconciler")
    except PackageNotFoundError:
        from reconciler import __version__

        return __version__


@cache
def commit() -> str:
    given = os.environ.get("RECONCILER_BUILD_COMMIT", "").strip()
    if given:
        return given[:40]
    stamped = Path(__file__).parent / "BUILD_COMMIT"  # written before `pip install .`
    try:
        text = stamped.read_text().strip()
    except OSError:
        text = ""
    if text:
        return text[:40]
    return source_commit(Path(__file__).parent) or "unknown"


def describe() -> str:
    """`reconciler 0.1.0 (commit 0123456789ab)`."""
    sha = commit()
    return f"reconciler {version()} (commit {sha[:12] if sha != 'unknown' else sha})"
