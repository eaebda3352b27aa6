"""What a commit may make this host read, and where it may send credentials.

The desired state comes from git: anyone who can push a commit writes it. So the
commit names credentials only by reference, and the host (the daemon's environment,
e.g. /etc/reconciler/reconciler.env) bounds what those references may reach:

- `RECONCILER_ALLOWED_ENDPOINTS`: origins (`https://host[:port]`, separated by spaces or
  commas) a provider profile's `endpoint` or `auth_url` may name. Loopback is always
  allowed (the sandbox); without an `endpoint` a driver talks to its cloud's public API.
  Anything else is refused before any credential is read.
- `RECONCILER_CREDENTIAL_DIRS`: directories (separated by `:`) an absolute `file:`
  reference may be under, besides `$CREDENTIALS_DIRECTORY` (systemd's LoadCredential=,
  where a bare name is looked up). Anything else is refused, symlinks resolved first.
- `env:` references read the process's own environment, which the host alone sets.

Owns: those two checks. Must not: read a credential (credentials.py does, after).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from reconciler.errors import ConfigurationError

ENDPOINTS_VARIABLE = "RECONCILER_ALLOWED_ENDPOINTS"
CREDENTIAL_DIRS_VARIABLE = "RECONCILER_CREDENTIAL_DIRS"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url.strip())
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(url: str, *, where: str, environ: Mapping[str, str] = os.environ) -> None:
    """Refuse `url` unless it is loopback or an origin the host allows; `where` names the
    setting (`providers.aws-east.endpoint`) for the message."""
    try:
        scheme, host, port = _origin(url)
    except ValueError:
        raise ConfigurationError(f"{where} is not a usable URL") from None
    if _is_loopback(host):
        return
    allowed = environ.get(ENDPOINTS_VARIABLE, "").replace(",", " ").split()
    for entry in allowed:
        try:
            a_scheme, a_host, a_port = _origin(entry)
        except ValueError:
            continue
        if (a_scheme, a_host) == (scheme, host) and a_port in (None, port):
            return
    raise ConfigurationError(
        f"{where} points at {scheme}://{host}{f':{port}' if port else ''}, which this host "
        f"does not allow credentials to be sent to: add that origin to {ENDPOINTS_VARIABLE} "
        "in the daemon's environment if it is intended"
    )


def check_credential_file(path: str, *, environ: Mapping[str, str] = os.environ) -> str:
    """`path` resolved, if it lies in a directory the host allows credentials to be read
    from; else ConfigurationError (nothing is opened)."""
    real = os.path.realpath(path)
    roots = [environ.get("CREDENTIALS_DIRECTORY", "")]
    roots += environ.get(CREDENTIAL_DIRS_VARIABLE, "").split(":")
    for root in filter(None, roots):
        real_root = os.path.realpath(root)
        if os.path.commonpath([real_root, real]) == real_root:
            return real
    raise ConfigurationError(
        f"credential file {path} is outside the directories this host allows credentials "
        f"to be read from ($CREDENTIALS_DIRECTORY, {CREDENTIAL_DIRS_VARIABLE}); add its "
        "directory there if it is intended"
    )
