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
