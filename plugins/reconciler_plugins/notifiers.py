"""Built-in notifiers: `webhook` (JSON POST, Slack-compatible `text`, optional HMAC
signature) and `command` (the event as JSON on stdin).

Owns: delivering one event with bounded retries, all of them within DEADLINE. Must
not: block a pass for long (the deadline covers connect, send and every read) or put
the signing secret anywhere but the HMAC.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shlex
import signal
import subprocess
import time
from dataclasses import asdict

from reconciler.errors import HttpRefused, PluginError, TransientError
from reconciler.extensions import Notification
from reconciler.httpclient import exchange
from reconciler.retrypolicy import retrying

SIGNATURE_HEADER = "X-Reconciler-Signature"
ATTEMPTS = 3
# One delivery, all attempts included; the dispatcher's own deadline (the notifier's
# `timeout`, 10 s by default) may stop waiting for it sooner.
DEADLINE = 10.0


def payload(notification: Notification) -> bytes:
    document = {"text": notification.text, **asdict(notification)}
    return json.dumps(document, sort_keys=True, default=str).encode()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookNotifier:
    def __init__(self, target: str, *, secret: str | None) -> None:
        self.url = target
        self._secret = secret

    def __repr__(self) -> str:  # the URL may carry a token: never printed whole
        return "WebhookNotifier(...)"

    def notify(self, notification: Notification) -> None:
        body = payload(notification)
        headers = {"Content-Type": "application/json", "User-Agent": "reconciler"}
        if self._secret:
            headers[SIGNATURE_HEADER] = signature(self._secret, body)
        deadline = time.monotonic() + DEADLINE
        # The adapters' retry policy: 5xx, 429 and no answer are retried (Retry-After
        # honoured), within ATTEMPTS and the DEADLINE; another 4xx ends it at once.
        policy = retrying("webhook", "POST", attempts=ATTEMPTS, seconds=DEADLINE,
                          event="notifier_retry")  # fmt: skip
        try:
            for attempt in policy:
                with attempt:
                    _deliver(self.url, body, headers, deadline=deadline)
        except HttpRefused as exc:
            raise PluginError(f"webhook delivery failed: {exc}") from None
        except TransientError as exc:
            raise PluginError(f"webhook delivery failed: {exc}") from None


def _deliver(url: str, body: bytes, headers: dict[str, str], *, deadline: float) -> None:
    answer = exchange("POST", url, body=body, headers=headers, deadline=deadline)
    if 200 <= answer.status < 300:
        return
    if answer.status == 429 or answer.status >= 500:
        raise TransientError(f"HTTP {answer.status}", retry_after=answer.retry_after)
    # The receiver refuses this event: retrying will not help.
    raise HttpRefused(f"HTTP {answer.status}", status=answer.status)


class CommandNotifier:
    def __init__(self, target: str, *, secret: str | None) -> None:
        self.argv = shlex.split(target)

    def notify(self, notification: Notification) -> None:
        try:
            # Its own session: on the deadline the whole group goes, children included
            # (one left holding the output pipe would block the read for ever).
            process = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            raise PluginError(f"notifier command could not run: {type(exc).__name__}") from None
        try:
            process.communicate(payload(notification), timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise PluginError(f"notifier command did not finish within {DEADLINE:g}s") from None
        if process.returncode != 0:
            raise PluginError(f"notifier command exited {process.returncode}")
