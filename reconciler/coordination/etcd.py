"""The leader key on etcd v3, through its JSON gateway (the only etcd3gw user).

Owns: parsing `etcd://HOST:PORT[,HOST:PORT...]`, trying the endpoints in turn, and
the four calls an election needs, as Patroni makes them: grant a lease and create the
leader key on it in one transaction (only if the key does not exist), keep the lease
alive, read who holds the key (its create revision is the leader's epoch), and revoke
the lease to resign. Must not: decide when to campaign or whether to act (that is
coordination.leadership), or retry beyond one pass over the endpoints.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar
from urllib.parse import urlsplit

import etcd3gw
from etcd3gw import exceptions as etcd_errors
from etcd3gw.lease import Lease

from reconciler.errors import ConfigurationError, CoordinationUnavailable

_T = TypeVar("_T")
API_PATH: Final = "/v3/"  # etcd >= 3.4; naming it spares a discovery request per client


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Holder:
    """Who holds the leader key: the member's name and the key's create revision."""

    member: str
    epoch: int
    lease: int


def parse_endpoints(url: str) -> tuple[Endpoint, ...]:
    """`etcd://10.0.0.1:2379,10.0.0.2:2379` -> endpoints; a clear error otherwise."""
    scheme, _, rest = url.partition("://")
    if scheme != "etcd" or not rest:
        raise ConfigurationError(
            f"--coordination {url!r}: expected etcd://HOST:PORT[,HOST:PORT...]"
        )
    endpoints = []
    for part in rest.rstrip("/").split(","):
        parsed = urlsplit(f"//{part}")
        try:
            port = parsed.port
        except ValueError:
            port = None
        if not parsed.hostname or port is None or not 0 < port < 65536:
            raise ConfigurationError(
                f"--coordination: {part!r} is not HOST:PORT with a port from 1 to 65535"
            )
        endpoints.append(Endpoint(parsed.hostname, port))
    return tuple(endpoints)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdElection:
    """One leader key on an etcd cluster reached through any of `endpoints`."""

    def __init__(self, endpoints: tuple[Endpoint, ...], *, key: str, timeout: float) -> None:
        self.key = key
        self.endpoints = endpoints
        self._clients = [
            etcd3gw.client(host=e.host, port=e.port, timeout=timeout, api_path=API_PATH)
            for e in endpoints
        ]
        self._current = 0

    def _call(self, what: str, call: Callable[[etcd3gw.Etcd3Client], _T]) -> _T:
        """`call` on the endpoint that last answered, then on each of the others."""
        errors = []
        for step in range(len(self._clients)):
            index = (self._current + step) % len(self._clients)
            try:
                result = call(self._clients[index])
            except (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError,
                    etcd_errors.InternalServerError) as exc:  # fmt: skip
                errors.append(f"{self.endpoints[index]}: {type(exc).__name__}")
                continue
            except etcd_errors.Etcd3Exception as exc:
                raise CoordinationUnavailable(f"etcd {what} refused: {exc}") from None
            self._current = index
            return result
        raise CoordinationUnavailable(f"etcd {what}: no endpoint answered ({'; '.join(errors)})")

    def campaign(self, member: str, ttl: int) -> Holder | None:
        """Take the leader key on a fresh lease if nobody holds it; None if somebody does."""

        def attempt(client: etcd3gw.Etcd3Client) -> Holder | None:
            lease = client.lease(ttl)
            key = _b64(self.key)
            txn = {
                "compare": [{"key": key, "result": "EQUAL", "target": "CREATE",
                             "create_revision": 0}],
                "success": [{"request_put": {"key": key, "value": _b64(member),
                                             "lease": lease.id}}],
                "failure": [],
            }  # fmt: skip
            answer = client.transaction(txn)
            if not answer.get("succeeded"):
                lease.revoke()
                return None
            # The put is the transaction's only write: its revision is the key's
            # create revision, the epoch.
            return Holder(member, int(answer["header"]["revision"]), lease.id)

        return self._call("campaign", attempt)

    def keep_alive(self, lease: int) -> int:
        """The lease's remaining TTL after a keep-alive; -1 (or 0) when it is gone."""
        return self._call("keep-alive", lambda client: Lease(lease, client).refresh())

    def holder(self) -> Holder | None:
        """Who holds the key now, or None."""

        def read(client: etcd3gw.Etcd3Client) -> Holder | None:
            found = client.post(
                client.get_url("/kv/range"), data=json.dumps({"key": _b64(self.key)})
            )
            kvs = found.get("kvs") or []
            if not kvs:
                return None
            kv = kvs[0]
            member = base64.b64decode(kv.get("value", "")).decode(errors="replace")
            return Holder(member, int(kv["create_revision"]), int(kv.get("lease", 0)))

        return self._call("read", read)

    def resign(self, lease: int) -> None:
        """Revoke the lease: the key goes at once and a follower can take over."""
        self._call("resign", lambda client: Lease(lease, client).revoke())
