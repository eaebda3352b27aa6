"""Built-in notifiers: `webhook` (JSON POST, Slack-compatible `text`, optional HMAC
signature) and `command` (the event as JSON on stdin).

Owns: delivering one event with bounded retries. Must not: block a pass for long
(every attempt has a timeout) or put the signing secret anywhere but the HMAC.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shlex
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict

from reconciler.extensions import Notification, PluginError

SIGNATURE_HEADER = "X-Reconciler-Signature"
ATTEMPTS = 3


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
        last = ""
        for attempt in range(ATTEMPTS):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    if 200 <= response.status < 300:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                if 400 <= exc.code < 500 and exc.code != 429:
                    break  # the receiver refuses this event; retrying will not help
            except (urllib.error.URLError, OSError) as exc:
                last = type(exc).__name__
            time.sleep(0.5 * 2**attempt)
        raise PluginError(f"webhook delivery failed after {ATTEMPTS} attempts: {last}")


class CommandNotifier:
    def __init__(self, target: str, *, secret: str | None) -> None:
        self.argv = shlex.split(target)

    def notify(self, notification: Notification) -> None:
        try:
            done = subprocess.run(
                self.argv,
                input=payload(notification),
                capture_output=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PluginError(f"notifier command could not run: {type(exc).__name__}") from None
        if done.returncode != 0:
            raise PluginError(f"notifier command exited {done.returncode}")
