"""Looking at the sandbox cloud from outside our adapter, and small shared builders.

Owns: an independent libcloud EC2 client for the sandbox (`raw_driver`), the nodes it
lists as alive (`live_nodes`), a free loopback port, and an observed instance for the
pure tests. Test modules import these from here, never from one another.
"""

from __future__ import annotations

import socket
from datetime import datetime

from libcloud.compute.base import Node
from libcloud.compute.drivers.ec2 import EC2NodeDriver

from reconciler.model import InstanceState, ObservedInstance
from reconciler.providers.endpoints import parse_endpoint
from reconciler.providers.sandbox import SANDBOX_KEY, SANDBOX_SECRET


def raw_driver(endpoint: str) -> EC2NodeDriver:
    """An independent libcloud client, to check the cloud without our adapter."""
    host, port, secure = parse_endpoint(endpoint)
    return EC2NodeDriver(
        SANDBOX_KEY,
        SANDBOX_SECRET,
        region="us-east-1",
        host=host,
        port=port,
        secure=secure,
        signature_version="4",
    )


def live_nodes(endpoint: str) -> list[Node]:
    return [n for n in raw_driver(endpoint).list_nodes() if n.state in ("running", "pending")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def observed(
    node_id: str, *, launched_at: datetime, service: str | None = "web",
    generation: int | None = 1,
) -> ObservedInstance:  # fmt: skip
    """A running instance of ours as a listing returns it (env production)."""
    return ObservedInstance(
        id=node_id,
        provider="cloud",
        state=InstanceState.RUNNING,
        image="ami-1",
        size="t3.micro",
        env="production" if service else None,
        service=service,
        generation=generation,
        launched_at=launched_at,
    )
