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
import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from dataclasses import asdict
from urllib.parse import urlsplit

from reconciler.extensions import Notification, PluginError

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
        last = ""
        for attempt in range(ATTEMPTS):
            try:
                status = _post(self.url, body, headers, deadline=deadline)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                last = type(exc).__name__
            else:
                if 200 <= status < 300:
                    return
                last = f"HTTP {status}"
                if 400 <= status < 500 and status != 429:
                    break  # the receiver refuses this event; retrying will not help
            pause = 0.5 * 2**attempt
            if time.monotonic() + pause >= deadline:
                last += f"; gave up at the {DEADLINE:g}s deadline"
                break
            time.sleep(pause)
        raise PluginError(f"webhook delivery failed: {last}")


def _post(url: str, body: bytes, headers: dict[str, str], *, deadline: float) -> int:
    """POST `body`; the status. The whole exchange ends by `deadline` (monotonic): a
    socket timeout bounds each read only, and a receiver that trickles a byte at a
    time would hold it for ever, so a timer shuts the socket down at the deadline."""
    parts = urlsplit(url)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("deadline passed")
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    connection = connection_class(parts.hostname or "", parts.port, timeout=min(remaining, 10.0))

    def cut() -> None:
        sock = connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(remaining, cut)
    timer.daemon = True
    timer.start()
    try:
        path = parts.path or "/"
        connection.request("POST", f"{path}?{parts.query}" if parts.query else path, body, headers)
        response = connection.getresponse()
        response.read(65536)  # the answer's start; a receiver's essay is not waited for
        if time.monotonic() >= deadline:
            raise TimeoutError("deadline passed")
        return response.status
    finally:
        timer.cancel()
        connection.close()


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
