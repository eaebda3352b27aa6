"""Built-in traffic switches: `command` (the operator's script) and `libcloud-lb`.

Owns: moving traffic from the old instances to the new ones and confirming it.
Must not: create or destroy instances, or talk to a cloud except through the
adapter's `LoadBalancerPort` (libcloud stays in the adapters).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from reconciler.errors import PluginError
from reconciler.extensions import InstanceRef, TrafficContext


def _addresses(instances: Sequence[InstanceRef], attribute: str) -> str:
    return " ".join(getattr(i, attribute) or "" for i in instances).strip()


class CommandSwitch:
    """Runs the command with OLD_/NEW_ instance ids and addresses in its environment."""

    def __init__(self, context: TrafficContext) -> None:
        self.context = context

    def switch(self, *, old: Sequence[InstanceRef], new: Sequence[InstanceRef]) -> None:
        argv = shlex.split(self.context.target)
        if argv and not os.path.isabs(argv[0]) and "/" in argv[0]:
            # A script committed beside the desired state: resolved from its directory.
            argv[0] = str(Path(self.context.desired_root) / argv[0])
        env = {
            **os.environ,
            "RECONCILER_ENV": self.context.env,
            "RECONCILER_SERVICE": self.context.service,
            "OLD_INSTANCE_IDS": " ".join(i.id for i in old),
            "OLD_PRIVATE_IPS": _addresses(old, "private_ip"),
            "OLD_PUBLIC_IPS": _addresses(old, "public_ip"),
            "OLD_GENERATION": str(old[0].generation) if old else "",
            "NEW_INSTANCE_IDS": " ".join(i.id for i in new),
            "NEW_PRIVATE_IPS": _addresses(new, "private_ip"),
            "NEW_PUBLIC_IPS": _addresses(new, "public_ip"),
            "NEW_GENERATION": str(new[0].generation) if new else "",
        }
        try:
            done = subprocess.run(
                argv,
                env=env,
                capture_output=True,
                timeout=self.context.timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PluginError(f"traffic command could not run: {type(exc).__name__}") from None
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise PluginError(f"traffic command exited {done.returncode}: {tail[0][:200]}")


class LibcloudLbSwitch:
    """Attach the new instances to a named load balancer, wait until they are in
    service, then detach the old ones."""

    POLL = 1.0

    def __init__(self, context: TrafficContext) -> None:
        if context.load_balancers is None:
            raise PluginError("libcloud-lb: this provider has no load balancer support")
        self.context = context
        self.balancers = context.load_balancers

    def switch(self, *, old: Sequence[InstanceRef], new: Sequence[InstanceRef]) -> None:
        name = self.context.target
        new_ids = [i.id for i in new]
        if new_ids:
            self.balancers.attach(name, new_ids)
            deadline = time.monotonic() + self.context.timeout
            while not set(new_ids) <= self.balancers.in_service(name):
                self.context.heartbeat()
                if time.monotonic() >= deadline:
                    raise PluginError(f"libcloud-lb: {name} did not put {new_ids} in service")
                time.sleep(self.POLL)
        old_ids = [i.id for i in old if i.id in self.balancers.members(name)]
        if old_ids:
            self.balancers.detach(name, old_ids)
