"""The spec fingerprint: what identifies a generation's launch configuration.

Owns: the canonical form of everything whose change needs new instances (DESIGN §3).
Must not: include `count` (scaling stays inside a generation) or anything secret.
"""

from __future__ import annotations

import hashlib
import json


def compute_fingerprint(
    *,
    provider: str,
    driver: str,
    region: str | None,
    image: str,
    size: str,
    user_data: str | None,
    launch_options: dict[str, str] | None = None,
) -> str:
    """Return a short, stable hash of the launch configuration."""
    canonical = json.dumps(
        {
            "provider": provider,
            "driver": driver,
            "region": region,
            "image": image,
            "size": size,
            # The contents are hashed, never stored: user data may hold secrets.
            "user_data": hashlib.sha256((user_data or "").encode()).hexdigest(),
            "launch_options": dict(sorted((launch_options or {}).items())),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
