"""The rollout gates: health probing and traffic switching, driven through plugins.

Owns: the probing loop of DESIGN §4's health gate (warmup, interval, consecutive
successes, timeout), and calling a service's traffic switch. Must not: create or
destroy instances or touch the ledger (apply does), or hide a hung probe from the
watchdog (every wait beats the heartbeat).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import structlog

from reconciler.errors import Interrupted, PluginError
from reconciler.extensions.api import (
    InstanceRef,
    LoadBalancerPort,
    PluginSet,
    TrafficContext,
    load_plugins,
)
from reconciler.fencing import OPEN, Fence
from reconciler.model import DesiredState, ObservedInstance, ServiceSpec

log = structlog.get_logger(__name__)

T = TypeVar("T")


def instance_ref(instance: ObservedInstance) -> InstanceRef:
    return InstanceRef(
        id=instance.id,
        name=instance.name or instance.id,
        env=instance.env or "",
        service=instance.service or "",
        generation=instance.generation or 0,
        image=instance.image,
        private_ip=instance.private_ip,
        public_ip=instance.public_ip,
    )


def call_plugin(what: str, call: Callable[[], T]) -> T:
    """Run plugin code: whatever it raises becomes a PluginError naming the plugin, so a
    crashing probe or switch fails its rollout (compensated), never the pass."""
    try:
        return call()
    except PluginError:
        raise
    # The boundary with plugin code (third-party or built-in): the exception's type is
    # kept, its text is not (it could quote a URL or a command line with a secret).
    except (Exception, SystemExit) as exc:  # a plugin's sys.exit() must not end the daemon
        log.error("plugin_crashed", plugin=what, error_type=type(exc).__name__)
        raise PluginError(f"{what} crashed with {type(exc).__name__}") from exc


class TrafficPort:
    """What apply needs to move traffic; `Rollout` is the real one."""

    def switch(
        self,
        spec: ServiceSpec,
        *,
        old: Sequence[ObservedInstance],
        new: Sequence[ObservedInstance],
    ) -> None:
        return None


@dataclass
class Rollout(TrafficPort):
    desired: DesiredState
    load_balancers: Mapping[str, LoadBalancerPort | None] = field(default_factory=dict)
    plugins: PluginSet = field(default_factory=load_plugins)
    heartbeat: Callable[[], None] = lambda: None
    should_stop: Callable[[], bool] = lambda: False
    sleep: Callable[[float], None] = time.sleep
    fence: Fence = OPEN  # checked before each switch (see reconciler.fencing)

    # ------------------------------------------------------------ the health gate

    def wait_healthy(self, instances: Sequence[ObservedInstance], spec: ServiceSpec) -> str | None:
        """None once every instance passed `healthy_after` probes in a row, else why not."""
        health = spec.health
        if health is None or not instances:
            return None
        factory = self.plugins.health_check(health.kind)
        check = call_plugin(
            f"health check {health.kind}",
            lambda: factory(health.target, timeout=health.timeout),
        )
        refs = [instance_ref(i) for i in instances]
        streak = {ref.id: 0 for ref in refs}
        last: dict[str, str] = {}
        started = time.monotonic()
        self._wait(health.warmup)
        while True:
            for ref in refs:
                if streak[ref.id] >= health.healthy_after:
                    continue
                self.heartbeat()
                result = call_plugin(f"health check {health.kind}", partial(check.probe, ref))
                streak[ref.id] = streak[ref.id] + 1 if result.ok else 0
                last[ref.id] = result.detail
            if all(n >= health.healthy_after for n in streak.values()):
                log.info("health_gate_passed", service=spec.name, instances=len(refs))
                return None
            if self.should_stop():
                # Not the generation's fault: the next pass gates it again.
                raise Interrupted("stop requested during the health gate")
            if time.monotonic() - started >= health.timeout:
                failing = sorted(i for i, n in streak.items() if n < health.healthy_after)
                return (
                    f"{len(failing)} instance(s) not healthy after {health.timeout:.0f}s "
                    f"({failing[0]}: {last.get(failing[0], 'no answer')})"
                )
            self._wait(health.interval)

    def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0 and not self.should_stop():
            self.heartbeat()
            self.sleep(min(remaining, 0.5))

    # ------------------------------------------------------------ traffic

    def switch(
        self,
        spec: ServiceSpec,
        *,
        old: Sequence[ObservedInstance],
        new: Sequence[ObservedInstance],
    ) -> None:
        if spec.traffic is None or (not old and not new):
            return
        self.fence.check(f"switch traffic of {spec.env}/{spec.name}")
        context = TrafficContext(
            target=spec.traffic.target,
            env=spec.env,
            service=spec.name,
            desired_root=self.desired.root,
            load_balancers=self.load_balancers.get(spec.provider),
            heartbeat=self.heartbeat,
        )
        factory = self.plugins.traffic_switch(spec.traffic.kind)
        what = f"traffic switch {spec.traffic.kind}"
        switch = call_plugin(what, lambda: factory(context))
        call_plugin(
            what,
            lambda: switch.switch(
                old=[instance_ref(i) for i in old], new=[instance_ref(i) for i in new]
            ),
        )
        log.info(
            "traffic_switched", env=spec.env, service=spec.name,
            old=[i.id for i in old], new=[i.id for i in new],
        )  # fmt: skip
