"""Credentials out of text: URL userinfo and secret-looking query parameters.

Owns: `redact_urls`, applied where text that may hold a URL leaves the process (the
log processor runs it over every logged string, git's errors pass through it before
they become messages, and so before they reach the ledger, `status` or systemd).
Must not: need to know where a URL came from; it rewrites any URL it can see.
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"
# scheme://user:password@host or scheme://token@host: everything between // and @.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s'\"<>]+@")
# ?token=...&X-Amz-Signature=...: the value of a parameter whose name says secret.
_SECRET_QUERY = re.compile(
    r"(?i)([?&;](?:[a-z0-9_.-]*(?:token|secret|password|passwd|signature|sig|key|"
    r"credential|auth)[a-z0-9_.-]*)=)[^&;#\s'\"<>]*"
)


def redact_urls(text: str) -> str:
    """`text` with every URL's userinfo and secret query values replaced."""
    if "://" not in text and "=" not in text:
        return text
    return _SECRET_QUERY.sub(rf"\1{REDACTED}", _USERINFO.sub(rf"\1{REDACTED}@", text))


def excerpt(text: str | bytes, *, limit: int = 300) -> str:
    """What an operator needs from a probe's output: its last `limit` characters on
    one line (the end of stderr says why), URL credentials redacted."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = "..." + flat[-limit:]
    return redact_urls(flat)
