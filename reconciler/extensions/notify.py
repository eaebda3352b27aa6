"""Sending events to the configured notifiers (DESIGN §7; issue: notifiers).

Owns: turning `notifiers:` of the desired state into plugin instances (resolving the
HMAC secret reference at the last moment), filtering by event kind, and containing
failures: a notifier that cannot deliver is logged, never fails the pass.
Must not: decide when an event happens (apply, engine and daemon do).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import structlog

from reconciler.errors import ReconcilerError
from reconciler.extensions.api import Notification, PluginSet, load_plugins
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
            error = deliver_within(spec.timeout, partial(self._deliver, spec, notification))
            if error is None:
                log.info("notified", notifier=index, kind=spec.kind, notification=kind)
            else:
                log.warning(
                    "notify_failed", notifier=index, kind=spec.kind, notification=kind,
                    error=error,
                )  # fmt: skip

    def _deliver(self, spec: NotifierSpec, notification: Notification) -> None:
        plugins = self._plugins or load_plugins()
        secret = resolve_secret(spec.secret) if spec.secret else None
        plugins.notifier(spec.kind)(spec.target, secret=secret).notify(notification)


def deliver_within(seconds: float, deliver: Callable[[], None]) -> str | None:
    """Run one delivery for at most `seconds`; None when it succeeded, else why not.

    A notifier may fail, never block or crash a pass: the delivery runs in its own
    thread, abandoned (it is a daemon thread; the built-in notifiers end themselves
    by the same deadline) when it takes longer, and whatever it raises is contained.
    """
    outcome: list[str | None] = []

    def run() -> None:
        try:
            deliver()
        except ReconcilerError as exc:
            outcome.append(str(exc) or type(exc).__name__)
        # The boundary with plugin code: anything it raises is the plugin's failure,
        # named by type only (a message could quote a URL that holds a token).
        except (Exception, SystemExit) as exc:  # sys.exit() in a plugin included
            outcome.append(f"{type(exc).__name__} raised by the notifier")
        else:
            outcome.append(None)

    worker = threading.Thread(target=run, name="notify", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        return f"no delivery within {seconds:g}s; abandoned"
    return outcome[0] if outcome else "the notifier thread ended without an outcome"


class Silent(Notifications):
    def __init__(self) -> None:
        super().__init__(())
