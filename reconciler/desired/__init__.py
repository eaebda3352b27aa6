"""The desired state: loading and validating the git-committed directory (DESIGN §2).

Owns: the public entry points `load_desired_state` and `parse_duration`.
Must not: perform any I/O besides reading the desired-state files, or import
click, structlog, libcloud or the ledger.

The loader (and pydantic with it) is imported when first used: `reconciler --version`
reads the source commit through `desired.gitinfo` and needs none of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reconciler.durations import parse_duration

if TYPE_CHECKING:
    from reconciler.desired.loader import load_desired_state

__all__ = ["load_desired_state", "parse_duration"]


def __getattr__(name: str) -> Any:
    if name == "load_desired_state":
        from reconciler.desired.loader import load_desired_state

        return load_desired_state
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
