"""Sending events to the configured notifiers (DESIGN §7; issue: notifiers).

Owns: turning `notifiers:` of the desired state into plugin instances (resolving the
HMAC secret reference at the last moment), filtering by event kind, and containing
failures: a notifier that cannot deliver is logged, never fails the pass.
Must not: decide when an event happens (apply, engine and daemon do).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from reconciler.errors import ReconcilerError
from reconciler.extensions import Notification, PluginSet, load_plugins
from reconciler.model import NotifierSpec
from reconciler.providers.credentials import resolve_secret

log = structlog.get_logger(__name__)


class Notifications:
    def __init__(self, specs: Sequence[NotifierSpec], plugins: PluginSet | None = None) -> None:
        self.specs = tuple(specs)
        self._plugins = plugins

    def send(self, kind: str, text: str, **fields: Any) -> None:
        notification = Notification(kind=kind, text=text, **fields)
        for index, spec in enumerate(self.specs):
            if spec.events and kind not in spec.events:
                continue
            try:
                plugins = self._plugins or load_plugins()
                secret = resolve_secret(spec.secret) if spec.secret else None
                plugins.notifier(spec.kind)(spec.target, secret=secret).notify(notification)
            except ReconcilerError as exc:
                log.warning(
                    "notify_failed",
                    notifier=index,
                    kind=spec.kind,
                    notification=kind,
                    error=str(exc),
                )
            else:
                log.info("notified", notifier=index, kind=spec.kind, notification=kind)


class Silent(Notifications):
    def __init__(self) -> None:
        super().__init__(())
