"""A profile's `endpoint:` URL read as libcloud's connections take it.

Owns: splitting an endpoint URL into host, port and scheme. Must not: import
libcloud — it is shared by every adapter's connection plumbing, and one adapter
must not import another to get it.
"""

from __future__ import annotations

from urllib.parse import urlparse


def parse_endpoint(endpoint: str) -> tuple[str, int, bool]:
    """(host, port, secure) of `endpoint`; the port defaults by scheme."""
    url = urlparse(endpoint)
    secure = url.scheme == "https"
    port = url.port or (443 if secure else 80)
    return url.hostname or "127.0.0.1", port, secure
