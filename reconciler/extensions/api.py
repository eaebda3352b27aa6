"""The plugin API: health checks, traffic switches and notifiers found by entry point.

Owns: the typed Protocols a plugin implements, the values passed to plugins, and
discovery through `importlib.metadata` entry points in the groups below. The built-in
plugins (in `plugins/reconciler_plugins/`) register through the same groups as any
third-party one. Must not: run plugins (apply and the notifier dispatch do), or let a
plugin that fails to load take the process down — it is reported by name instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

from reconciler.errors import ConfigurationError
from reconciler.providers.base import LoadBalancerPort as LoadBalancerPort

HEALTH_GROUP = "reconciler.health"
TRAFFIC_GROUP = "reconciler.traffic"
NOTIFIER_GROUP = "reconciler.notifiers"
GROUPS = (HEALTH_GROUP, TRAFFIC_GROUP, NOTIFIER_GROUP)


@dataclass(frozen=True)
class InstanceRef:
    """What a plugin may know about an instance: identity and addresses, nothing secret."""

    id: str
    name: str
    env: str
    service: str
    generation: int
    image: str
    private_ip: str | None = None
    public_ip: str | None = None

    def template_fields(self) -> dict[str, str]:
        """The `{placeholders}` of health and traffic templates."""
        return {
            "id": self.id,
            "name": self.name,
            "env": self.env,
            "service": self.service,
            "generation": str(self.generation),
            "image": self.image,
            "private_ip": self.private_ip or "",
            "public_ip": self.public_ip or "",
        }


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str = ""


class HealthCheck(Protocol):
    def probe(self, instance: InstanceRef) -> ProbeResult:
        """One probe of one instance; never raises for an unhealthy answer."""
        ...


class HealthCheckFactory(Protocol):
    def __call__(self, target: str, *, timeout: float) -> HealthCheck: ...


@dataclass(frozen=True)
class TrafficContext:
    """Handed to a traffic switch: its setting, and the service's load balancers."""

    target: str
    env: str
    service: str
    desired_root: str
    load_balancers: LoadBalancerPort | None = None
    heartbeat: Callable[[], None] = field(default=lambda: None)
    timeout: float = 300.0


class TrafficSwitch(Protocol):
    def switch(self, *, old: Sequence[InstanceRef], new: Sequence[InstanceRef]) -> None:
        """Move traffic from `old` to `new`; raise PluginError if it could not."""
        ...


class TrafficSwitchFactory(Protocol):
    def __call__(self, context: TrafficContext) -> TrafficSwitch: ...


@dataclass(frozen=True)
class Notification:
    kind: str  # generation-activated, generation-failed, rollback, guard-tripped, ...
    text: str  # one human sentence, Slack-compatible
    env: str | None = None
    service: str | None = None
    generation: int | None = None
    commit: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


class Notifier(Protocol):
    def notify(self, notification: Notification) -> None:
        """Deliver one event; raise PluginError when it finally could not."""
        ...


class NotifierFactory(Protocol):
    def __call__(self, target: str, *, secret: str | None) -> Notifier: ...


@dataclass
class PluginSet:
    health: dict[str, HealthCheckFactory] = field(default_factory=dict)
    traffic: dict[str, TrafficSwitchFactory] = field(default_factory=dict)
    notifiers: dict[str, NotifierFactory] = field(default_factory=dict)
    # (group, name, module:attr, error) for every entry point that did not load
    broken: list[tuple[str, str, str, str]] = field(default_factory=list)
    sources: dict[tuple[str, str], str] = field(default_factory=dict)

    def health_check(self, kind: str) -> HealthCheckFactory:
        factory: HealthCheckFactory = _pick(self.health, kind, HEALTH_GROUP, self.broken)
        return factory

    def traffic_switch(self, kind: str) -> TrafficSwitchFactory:
        factory: TrafficSwitchFactory = _pick(self.traffic, kind, TRAFFIC_GROUP, self.broken)
        return factory

    def notifier(self, kind: str) -> NotifierFactory:
        factory: NotifierFactory = _pick(self.notifiers, kind, NOTIFIER_GROUP, self.broken)
        return factory


def _pick(
    found: Mapping[str, Any], kind: str, group: str, broken: list[tuple[str, str, str, str]]
) -> Any:
    if kind in found:
        return found[kind]
    failed = [error for g, name, _, error in broken if (g, name) == (group, kind)]
    if failed:
        raise ConfigurationError(f"plugin {kind!r} ({group}) failed to load: {failed[0]}")
    raise ConfigurationError(f"no {group} plugin named {kind!r} is installed")


_cache: PluginSet | None = None


def load_plugins(*, refresh: bool = False) -> PluginSet:
    """Every installed plugin, loaded once per process; failures are recorded, not raised."""
    global _cache
    if _cache is not None and not refresh:
        return _cache
    plugins = PluginSet()
    targets: dict[str, dict[str, Any]] = {
        HEALTH_GROUP: plugins.health,
        TRAFFIC_GROUP: plugins.traffic,
        NOTIFIER_GROUP: plugins.notifiers,
    }
    for group, registry in targets.items():
        for point in entry_points(group=group):
            try:
                registry[point.name] = point.load()
            # A third-party plugin can fail in any way at import time; that must be
            # reported by name, never take the daemon down.
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                plugins.broken.append((group, point.name, point.value, error))
                continue
            plugins.sources[(group, point.name)] = point.value
    _cache = plugins
    return plugins
