"""The sandbox: moto's EC2 API on loopback, shaped so the real libcloud driver can use it.

Owns: the only import of moto, the WSGI layer in front of it, and a per-action request
counter that tests and benchmarks read. Must not: be used for anything but trying the
product out and testing it; it binds to 127.0.0.1 only.

Two facts shape the layer: moto writes EC2 XML in the namespace
``http://ec2.amazonaws.com/doc/2016-11-15`` while AWS (and so libcloud) uses the same
URI with a trailing slash, so libcloud finds no elements until the namespace is fixed;
and moto routes on the SigV4 Authorization header, so clients must sign with v4.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

_MOTO_NAMESPACE = b'xmlns="http://ec2.amazonaws.com/doc/2016-11-15"'
_AWS_NAMESPACE = b'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"'

# Actions that change something in the cloud; tests assert on these.
MUTATING_PREFIXES = (
    "Run",
    "Terminate",
    "Stop",
    "Start",
    "Reboot",
    "Create",
    "Delete",
    "Modify",
    "Register",
    "Deregister",
    "Attach",
    "Detach",
    "Associate",
    "Disassociate",
)

# Credentials the sandbox accepts; they are not secrets.
SANDBOX_KEY = "sandbox-access-key"
SANDBOX_SECRET = "sandbox-secret-key"

STATS_PATH = "/_sandbox/stats"
RESET_PATH = "/_sandbox/reset"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def is_mutating(action: str) -> bool:
    return action.startswith(MUTATING_PREFIXES)


class SandboxApp:
    """WSGI app: moto behind a namespace fix, a request counter and a reset endpoint."""

    def __init__(self) -> None:
        try:
            from moto.moto_server.werkzeug_app import (
                DomainDispatcherApplication,
                create_backend_app,
            )
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("the sandbox needs moto: pip install 'reconciler[sandbox]'") from exc
        self._moto: WsgiApp = DomainDispatcherApplication(create_backend_app)
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == STATS_PATH:
            return self._json(start_response, self.stats())
        if path == RESET_PATH:
            self.reset()
            return self._json(start_response, {"reset": True})
        self._count(environ)
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"], captured["headers"] = status, headers
            return lambda _data: None

        body = b"".join(self._moto(environ, capture))
        body = body.replace(_MOTO_NAMESPACE, _AWS_NAMESPACE)
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        start_response(captured["status"], headers)
        return [body]

    def _count(self, environ: dict[str, Any]) -> None:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        action = (query.get("Action") or [""])[0]
        if not action and environ.get("REQUEST_METHOD") == "POST":
            # Form-encoded bodies carry the action; read and hand the bytes back to moto.
            length = int(environ.get("CONTENT_LENGTH") or 0)
            raw = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(raw)
            action = (parse_qs(raw.decode("utf-8", "replace")).get("Action") or [""])[0]
        with self._lock:
            self.calls[action or "(other)"] += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            calls = dict(self.calls)
        mutating = sum(n for action, n in calls.items() if is_mutating(action))
        return {"calls": calls, "mutating": mutating, "total": sum(calls.values())}

    def reset(self) -> None:
        """Forget every instance and every counted call (fresh state per test)."""
        from moto.moto_api._internal.models import moto_api_backend

        moto_api_backend.reset()
        with self._lock:
            self.calls.clear()

    @staticmethod
    def _json(start_response: Callable[..., Any], payload: dict[str, Any]) -> list[bytes]:
        body = json.dumps(payload).encode()
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]


class SandboxServer:
    """A threaded HTTP server for SandboxApp on 127.0.0.1; `port=0` picks a free port."""

    def __init__(self, port: int = 0, *, log_requests: bool = False) -> None:
        from werkzeug.serving import make_server

        # One line per API call drowns everything else; opt in with log_requests.
        logging.getLogger("werkzeug").setLevel(logging.INFO if log_requests else logging.WARNING)

        self.app = SandboxApp()
        self._server = make_server("127.0.0.1", port, self.app, threaded=True)
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SandboxServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sandbox", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)


def fetch_stats(endpoint: str) -> dict[str, Any]:
    """Read a running sandbox's request counters (used by tests and benchmarks)."""
    with urllib.request.urlopen(endpoint.rstrip("/") + STATS_PATH, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def reset_sandbox(endpoint: str) -> None:
    request = urllib.request.Request(endpoint.rstrip("/") + RESET_PATH, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


_in_process: dict[str, SandboxServer] = {}
_in_process_lock = threading.Lock()


def in_process_endpoint() -> str:
    """Start (once per process) a sandbox for `driver: sandbox` without an endpoint."""
    with _in_process_lock:
        server = _in_process.get("default")
        if server is None:
            server = SandboxServer().start()
            _in_process["default"] = server
        return server.endpoint
