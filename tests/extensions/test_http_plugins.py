"""The HTTP health probe and the webhook notifier on one client (httpx) and the shared
retry policy: real loopback servers that answer badly, slowly or not at all."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from reconciler_plugins.health import HttpCheck
from reconciler_plugins.notifiers import WebhookNotifier

from reconciler.errors import PluginError
from reconciler.extensions.api import InstanceRef, Notification

NOTE = Notification(kind="run-failed", text="run 7 failed")
REF = InstanceRef(id="i-1", name="prod-web-g1-1", env="prod", service="web", generation=1,
                  image="ami-1", private_ip="127.0.0.1")  # fmt: skip


class Scripted:
    """Answers each request with the next (status, headers, body) of its script."""

    def __init__(self, script: list[tuple[int, dict[str, str], bytes]]) -> None:
        self.script = list(script)
        self.requests: list[tuple[str, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                outer.requests.append((self.command, self.rfile.read(length)))
                status, headers, body = outer.script.pop(0) if outer.script else (200, {}, b"")
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[list[Scripted]]:
    servers: list[Scripted] = []
    yield servers
    for server in servers:
        server.close()


def serve(servers: list[Scripted], *script: tuple[int, dict[str, str], bytes]) -> Scripted:
    server = Scripted(list(script))
    servers.append(server)
    return server


def test_an_unhealthy_http_answer_keeps_its_status_and_body_start(scripted: list[Scripted]) -> None:
    body = b"database down; see https://user:hunter2@db.example/status?token=abc " + b"x" * 500
    server = serve(scripted, (503, {}, body), (302, {"Location": "/elsewhere"}, b""))
    check = HttpCheck(server.url + "/healthz/{id}", timeout=5)
    result = check.probe(REF)
    assert not result.ok
    assert result.detail.startswith("HTTP 503: database down")
    assert "hunter2" not in result.detail and "token=abc" not in result.detail
    assert len(result.detail) < 300, "bounded"
    assert check.probe(REF).ok, "a redirect is an answer (3xx), not followed"
    assert [r[0] for r in server.requests] == ["GET", "GET"]


def test_a_probe_that_gets_no_answer_says_why_within_its_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    refused = HttpCheck(f"http://127.0.0.1:{port}/", timeout=5).probe(REF)
    assert not refused.ok and "ConnectError" in refused.detail and "refused" in refused.detail

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        started = time.monotonic()
        hung = HttpCheck(f"http://127.0.0.1:{silent.getsockname()[1]}/", timeout=1).probe(REF)
        assert not hung.ok and hung.detail == "timed out: no answer within 1s"
        assert time.monotonic() - started < 10
    finally:
        silent.close()


def test_the_webhook_retries_5xx_and_429_honouring_retry_after(scripted: list[Scripted]) -> None:
    server = serve(scripted, (503, {}, b""), (429, {"Retry-After": "1"}, b""), (204, {}, b""))
    started = time.monotonic()
    WebhookNotifier(server.url + "/hook", secret=None).notify(NOTE)
    assert len(server.requests) == 3
    assert time.monotonic() - started >= 1.0, "waited what Retry-After asked"
    assert b"run 7 failed" in server.requests[-1][1]


def test_the_webhook_does_not_retry_what_the_receiver_refuses(scripted: list[Scripted]) -> None:
    server = serve(scripted, (400, {}, b"bad payload"), (204, {}, b""))
    with pytest.raises(PluginError, match="HTTP 400"):
        WebhookNotifier(server.url + "/hook", secret=None).notify(NOTE)
    assert len(server.requests) == 1


def test_the_webhook_gives_up_after_its_attempts(scripted: list[Scripted]) -> None:
    server = serve(scripted, *[(500, {}, b"")] * 5)
    with pytest.raises(PluginError, match="HTTP 500"):
        WebhookNotifier(server.url + "/hook?token=secret-in-url", secret=None).notify(NOTE)
    assert len(server.requests) == 3
