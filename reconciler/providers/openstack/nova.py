"""Nova's and Keystone's rules, as the OpenStack adapter needs them; no libcloud here.

Owns: Nova's status -> InstanceState mapping, Nova's limits on server metadata and
user data, reading a listing's next link, the auth URL as libcloud wants it, the
names requests are reported under, and the adapter's throttling error (with the
wait Nova asked for; `OutcomeUnknown` is shared, in `calls`). Must not:
import libcloud (only openstack and openstack_connection may) or perform I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from reconciler.errors import ConfigurationError
from reconciler.model import InstanceState

# Nova's own statuses (server "status"), mapped to what planning cares about.
# ERROR is a server that failed to build or to change: it holds quota and serves
# nothing, so it reads as stopped (the planner replaces it; a boot wait fails fast).
# Statuses this table does not know read as pending: alive, never destroyed on a
# guess. UNKNOWN (a server of a cell the API cannot reach) never gets here: the
# adapter treats a listing holding one as incomplete.
_STATES = {
    "BUILD": InstanceState.PENDING,
    "REBUILD": InstanceState.PENDING,
    "REBOOT": InstanceState.PENDING,
    "HARD_REBOOT": InstanceState.PENDING,
    "RESIZE": InstanceState.PENDING,
    "REVERT_RESIZE": InstanceState.PENDING,
    "ACTIVE": InstanceState.RUNNING,
    "MIGRATING": InstanceState.RUNNING,
    "VERIFY_RESIZE": InstanceState.RUNNING,
    "PASSWORD": InstanceState.RUNNING,
    "SHUTOFF": InstanceState.STOPPED,
    "SUSPENDED": InstanceState.STOPPED,
    "PAUSED": InstanceState.STOPPED,
    "RESCUE": InstanceState.STOPPED,
    "SHELVED": InstanceState.STOPPED,
    "SHELVED_OFFLOADED": InstanceState.STOPPED,
    "ERROR": InstanceState.STOPPED,
    "SOFT_DELETED": InstanceState.GONE,
    "DELETED": InstanceState.GONE,
}

# Nova's request schema for server metadata (nova/api/validation/parameter_types.py):
# keys match this pattern, values are strings of at most 255 characters; our tag keys
# ("reconciler:owner", "Name", ...) fit, so tags are stored under their own names.
_METADATA_KEY = re.compile(r"^[a-zA-Z0-9-_:. ]{1,255}$")
METADATA_VALUE_MAX = 255
USER_DATA_MAX = 65535  # Nova's limit, in bytes of base64
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

Listener = Callable[[str], None]  # hears the name of every request sent


def nova_state(status: str, task_state: str | None) -> InstanceState:
    # A deleted server keeps its last status while Nova tears it down.
    if task_state == "deleting":
        return InstanceState.GONE
    return _STATES.get(status.upper(), InstanceState.PENDING)


def is_uuid(text: str) -> bool:
    return bool(_UUID.match(text))


def metadata_problem(tags: Mapping[str, str]) -> str | None:
    """Why Nova would refuse `tags` as server metadata (None: it will take them)."""
    for key, value in tags.items():
        if not _METADATA_KEY.match(key):
            return f"metadata key {key!r} is not allowed by Nova"
        if len(value) > METADATA_VALUE_MAX:
            return f"metadata {key!r} is longer than Nova's {METADATA_VALUE_MAX} characters"
    return None


def normalized_auth_url(auth_url: str) -> str:
    """Keystone's base URL as libcloud wants it: it appends /v3/auth/tokens itself, so a
    URL written the usual way (https://keystone:5000/v3) loses its version suffix."""
    parts = urlsplit(auth_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError("auth_url must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError("auth_url must not embed credentials")
    url = auth_url.rstrip("/")
    return url[: -len("/v3")] if url.endswith("/v3") else url


def next_page(links: Any) -> dict[str, str] | None:
    """The query of a listing's rel=next link (None on the last page). Only the query
    is used: Nova builds the link from its own idea of its host, which behind a proxy
    is often not the URL this client reaches it at."""
    if not links:
        return None
    hrefs = [link["href"] for link in links if link.get("rel") == "next"]
    if not hrefs:
        return None
    return {k: v[0] for k, v in parse_qs(urlsplit(hrefs[0]).query).items()}


# ---------------------------------------------------------------- errors


def request_name(method: str, action: str) -> str:
    path = action.split("?", 1)[0].rstrip("/")
    known = {
        ("POST", "/servers"): "CreateServer",
        ("GET", "/servers/detail"): "ListServers",
        ("GET", "/flavors/detail"): "ListFlavors",
        ("GET", "/v2/images"): "ListImages",
        ("GET", "/v2.0/networks"): "ListNetworks",
    }
    if (method, path) in known:
        return known[(method, path)]
    if path.startswith("/servers/"):
        return {"GET": "ShowServer", "DELETE": "DeleteServer"}.get(method, f"{method} server")
    return f"{method} {path.split('/')[1] if '/' in path else path}"
