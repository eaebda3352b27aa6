"""The desired state: loading and validating the git-committed directory (DESIGN §2).

Owns: the public entry points `load_desired_state` and `parse_duration`.
Must not: perform any I/O besides reading the desired-state files, or import
click, structlog, libcloud or the ledger.
"""

from reconciler.desired.loader import load_desired_state
from reconciler.durations import parse_duration

__all__ = ["load_desired_state", "parse_duration"]
