"""Extensions: the plugin API (`api`: health checks, traffic switches and notifiers,
found through entry points) and delivering events to notifiers (`notify`).

Plugin authors import the API from here, `reconciler.extensions`, which stays stable
whatever the layout behind it.
"""

from reconciler.errors import PluginError
from reconciler.extensions.api import (
    GROUPS,
    HEALTH_GROUP,
    NOTIFIER_GROUP,
    TRAFFIC_GROUP,
    HealthCheck,
    HealthCheckFactory,
    InstanceRef,
    LoadBalancerPort,
    Notification,
    Notifier,
    NotifierFactory,
    PluginSet,
    ProbeResult,
    TrafficContext,
    TrafficSwitch,
    TrafficSwitchFactory,
    load_plugins,
)

__all__ = [
    "GROUPS", "HEALTH_GROUP", "NOTIFIER_GROUP", "TRAFFIC_GROUP", "HealthCheck",
    "HealthCheckFactory", "InstanceRef", "LoadBalancerPort", "Notification", "Notifier",
    "NotifierFactory", "PluginError", "PluginSet", "ProbeResult", "TrafficContext",
    "TrafficSwitch", "TrafficSwitchFactory", "load_plugins",
]  # fmt: skip
