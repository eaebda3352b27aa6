"""Loopback servers for blue/green tests: a health endpoint and a webhook receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server:
    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


class HealthServer(_Server):
    """Answers GET /<image>/<instance>: 503 for images or instances marked bad, else 200."""

    def __init__(self) -> None:
        self.bad: set[str] = set()
        self.probes: list[str] = []
        # image -> how many distinct instances of it may pass; later ones fail.
        self.quota: dict[str, int] = {}
        self._passed: dict[str, set[str]] = {}
        super().__init__(_HealthHandler)

    def healthy(self, image: str, instance: str) -> bool:
        if image in self.bad or instance in self.bad:
            return False
        if image in self.quota:
            passed = self._passed.setdefault(image, set())
            if instance not in passed and len(passed) >= self.quota[image]:
                return False
            passed.add(instance)
        return True

    def template(self) -> str:
        return f"http://127.0.0.1:{self.port}/{{image}}/{{id}}"


class _HealthHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server: HealthServer = self.server.owner  # type: ignore[attr-defined]
        image, _, instance = self.path.strip("/").partition("/")
        server.probes.append(self.path)
        healthy = server.healthy(image, instance)
        self.send_response(200 if healthy else 503)
        self.end_headers()
        self.wfile.write(b"ok" if healthy else b"unhealthy")

    def log_message(self, *args: Any) -> None:
        return


class WebhookReceiver(_Server):
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.events: list[dict[str, Any]] = []
        self.bad_signatures = 0
        super().__init__(_WebhookHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


class _WebhookHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        server: WebhookReceiver = self.server.owner  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        expected = "sha256=" + hmac.new(server.secret.encode(), body, hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected, self.headers.get("X-Reconciler-Signature", "")):
            server.events.append(json.loads(body))
        else:
            server.bad_signatures += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return
