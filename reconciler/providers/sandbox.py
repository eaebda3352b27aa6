"""The sandbox: moto's EC2 API on loopback, shaped so the real libcloud driver can use it.

Owns: the only import of moto, the WSGI layer in front of it, per-action counters of
the calls moto served (tests and benchmarks read them), and fault injection by rule
(throttling, 5xx, lost responses, latency, truncated or foreign bodies) so tests can
show how the adapter behaves when the cloud misbehaves. Must not: be used for
anything but trying the product out and testing it; it binds to 127.0.0.1 only.

Two facts shape the layer: moto writes EC2 XML in the namespace
``http://ec2.amazonaws.com/doc/2016-11-15`` while AWS (and so libcloud) uses the same
URI with a trailing slash, so libcloud finds no elements until the namespace is fixed;
and moto routes on the SigV4 Authorization header, so clients must sign with v4.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import random
import socket
import threading
import time
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final
from urllib.parse import parse_qs

from reconciler.errors import ConfigurationError

_MOTO_NAMESPACE = b'xmlns="http://ec2.amazonaws.com/doc/2016-11-15"'
_AWS_NAMESPACE = b'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"'

MUTATION_LOG_LIMIT: Final = 10_000

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
FAULTS_PATH = "/_sandbox/faults"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# What a fault rule can do to a matching call:
#   throttle       503 RequestLimitExceeded, exactly as AWS sends it; moto never sees the call
#   error5xx       500 InternalError; moto never sees the call
#   auth           401 AuthFailure (bad credentials); moto never sees the call
#   not-visible    400 InvalidInstanceID.NotFound, as EC2 answers for an instance it
#                  launched a moment ago (eventual consistency); moto never sees the call
#   drop-response  moto executes the call, then the connection is closed without a reply
#   truncate       moto executes the call, the client gets the first half of the body
#   foreign        moto executes the call, the client gets a 200 that is not EC2 XML
#                  (a proxy's or captive portal's page)
#   latency        sleep `seconds` before forwarding; combines with the other kinds
FAULT_KINDS: Final = (
    "throttle",
    "error5xx",
    "auth",
    "not-visible",
    "drop-response",
    "truncate",
    "foreign",
    "latency",
)
_REJECTING = frozenset({"throttle", "error5xx", "auth", "not-visible"})


def is_mutating(action: str) -> bool:
    return action.startswith(MUTATING_PREFIXES)


@dataclass(frozen=True)
class FaultRule:
    """One rule: `kind` hits calls of `action` ("*" for all) with probability `fraction`,
    at most `times` times (None: no limit)."""

    action: str
    kind: str
    fraction: float = 1.0
    times: int | None = None
    seconds: float = 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultRule:
        unknown = set(data) - {"action", "kind", "fraction", "times", "seconds"}
        if unknown:
            raise ValueError(f"unknown fault rule keys: {sorted(unknown)}")
        kind = str(data.get("kind", ""))
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}; got {kind!r}")
        fraction = float(data.get("fraction", 1.0))
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("fraction must be between 0 and 1")
        times = data.get("times")
        return cls(
            action=str(data.get("action", "*")),
            kind=kind,
            fraction=fraction,
            times=None if times is None else int(times),
            seconds=float(data.get("seconds", 0.0)),
        )

    def matches(self, action: str) -> bool:
        return self.action in ("*", action)


class FaultPlan:
    """The active rules and a seeded random source; decisions are made under a lock.

    The sequence of decisions is fixed by the seed; which concurrent request meets
    which decision still depends on arrival order, so tests assert on outcomes
    (no duplicates, convergence), never on which call was hit.
    """

    def __init__(self, rules: Sequence[FaultRule] = (), seed: int = 0) -> None:
        self.rules = tuple(rules)
        self.seed = seed
        self._random = random.Random(seed)
        self._fired: Counter[int] = Counter()
        self._lock = threading.Lock()

    def decide(self, action: str) -> tuple[float, str | None]:
        """(seconds of latency to add, the fault kind to apply or None)."""
        delay, outcome = 0.0, None
        with self._lock:
            for index, rule in enumerate(self.rules):
                if not rule.matches(action):
                    continue
                if rule.times is not None and self._fired[index] >= rule.times:
                    continue
                if rule.kind != "latency" and outcome is not None:
                    continue
                if self._random.random() >= rule.fraction:
                    continue
                self._fired[index] += 1
                if rule.kind == "latency":
                    delay += rule.seconds
                else:
                    outcome = rule.kind
        return delay, outcome

    def to_json(self) -> dict[str, Any]:
        return {"rules": [asdict(r) for r in self.rules], "seed": self.seed}


def _aws_error(code: str, message: str) -> bytes:
    request_id = uuid.uuid4()
    return (
        f"<?xml version='1.0' encoding='UTF-8'?>\n<Response><Errors><Error><Code>{code}</Code>"
        f"<Message>{message}</Message></Error></Errors><RequestID>{request_id}</RequestID>"
        "</Response>"
    ).encode()


_REJECTIONS: Final = {
    "throttle": ("503 Service Unavailable", "RequestLimitExceeded", "Request limit exceeded."),
    "error5xx": (
        "500 Internal Server Error",
        "InternalError",
        "An internal error has occurred. Retry your request.",
    ),
    "auth": (
        "401 Unauthorized",
        "AuthFailure",
        "AWS was not able to validate the provided access credentials",
    ),
    "not-visible": (
        "400 Bad Request",
        "InvalidInstanceID.NotFound",
        "The instance ID does not exist",
    ),
}
_FOREIGN_BODY = b"<html><head><title>Gateway</title></head><body>Please log in</body></html>"


class LostResponse(ConnectionResetError):
    """Raised inside the server to drop a response; werkzeug treats it as a dropped
    connection and writes nothing, so the client sees the socket close."""


class SandboxApp:
    """WSGI app: moto behind a namespace fix, call counters, fault rules and a reset."""

    def __init__(self) -> None:
        try:
            from moto.moto_server.werkzeug_app import (
                DomainDispatcherApplication,
                create_backend_app,
            )
        except ImportError:
            raise ConfigurationError(
                "driver: sandbox without an endpoint runs the sandbox in this process, which "
                "needs the sandbox extra (moto): pip install 'reconciler[sandbox]' (from a "
                "checkout: .venv/bin/pip install '.[sandbox]'), or give the profile the "
                "endpoint of a running `reconciler sandbox`"
            ) from None
        self._moto: WsgiApp = DomainDispatcherApplication(create_backend_app)
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()  # served by moto, per action
        self.received: Counter[str] = Counter()  # every API request, per action
        self.faults: Counter[tuple[str, str]] = Counter()  # (kind, action)
        # Instance ids named by mutating calls moto served: "was this one ever touched?"
        self.touched: Counter[str] = Counter()
        # Mutating requests served, in order, with their User-Agent (a leader's epoch):
        # who changed the cloud when. The newest MUTATION_LOG_LIMIT are kept.
        self.mutations: deque[dict[str, Any]] = deque(maxlen=MUTATION_LOG_LIMIT)
        self.fault_plan = FaultPlan()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == STATS_PATH:
            return self._json(start_response, self.stats())
        if path == RESET_PATH:
            self.reset()
            return self._json(start_response, {"reset": True})
        if path == FAULTS_PATH:
            return self._faults_endpoint(environ, start_response)
        params = self._params(environ)
        action = (params.get("Action") or ["(other)"])[0]
        delay, fault = self.fault_plan.decide(action)
        with self._lock:
            self.received[action] += 1
            if delay:
                self.faults[("latency", action)] += 1
            if fault is not None:
                self.faults[(fault, action)] += 1
        if delay:
            time.sleep(delay)
        if fault in _REJECTING:
            status, code, message = _REJECTIONS[fault]
            return self._respond(start_response, status, _aws_error(code, message), "text/xml")

        status, headers, body = self._serve(environ, action, params)
        if fault == "drop-response":
            self._drop(environ)
        if fault == "truncate":
            body = body[: len(body) // 2]
        if fault == "foreign":
            status, body = "200 OK", _FOREIGN_BODY
            headers = [("Content-Type", "text/html")]
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]

    def _serve(
        self, environ: dict[str, Any], action: str, params: dict[str, list[str]]
    ) -> tuple[str, list[Any], bytes]:
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"], captured["headers"] = status, headers
            return lambda _data: None

        body = b"".join(self._moto(environ, capture))
        with self._lock:
            self.calls[action] += 1
            if is_mutating(action):
                for key, values in params.items():
                    if key.startswith(("InstanceId", "ResourceId")):
                        self.touched.update(values)
                self.mutations.append({
                    "at": time.time(), "action": action,
                    "agent": str(environ.get("HTTP_USER_AGENT", "")),
                })  # fmt: skip
        return (
            captured["status"],
            list(captured["headers"]),
            body.replace(_MOTO_NAMESPACE, _AWS_NAMESPACE),
        )

    @staticmethod
    def _drop(environ: dict[str, Any]) -> None:
        """Close the client's connection after the call took effect: a lost response."""
        sock = environ.get("werkzeug.socket")
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):  # the client may already be gone
                sock.shutdown(socket.SHUT_RDWR)
        raise LostResponse("response dropped by a sandbox fault rule")

    @staticmethod
    def _params(environ: dict[str, Any]) -> dict[str, list[str]]:
        params = parse_qs(str(environ.get("QUERY_STRING", "")))
        if "Action" not in params and environ.get("REQUEST_METHOD") == "POST":
            # Form-encoded bodies carry the action; read and hand the bytes back to moto.
            length = int(environ.get("CONTENT_LENGTH") or 0)
            raw: bytes = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(raw)
            params = parse_qs(raw.decode("utf-8", "replace"))
        return params

    def _faults_endpoint(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "DELETE":
            self.fault_plan = FaultPlan()
        elif method in ("POST", "PUT"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            try:
                payload = json.loads(environ["wsgi.input"].read(length) or b"{}")
                rules = [FaultRule.from_json(r) for r in payload.get("rules", [])]
                self.fault_plan = FaultPlan(rules, seed=int(payload.get("seed", 0)))
            except (ValueError, TypeError, AttributeError) as exc:
                body = json.dumps({"error": str(exc)}).encode()
                return self._respond(start_response, "400 Bad Request", body, "application/json")
        return self._json(start_response, self.fault_plan.to_json())

    def stats(self) -> dict[str, Any]:
        with self._lock:
            calls = dict(self.calls)
            touched = dict(self.touched)
            mutations = list(self.mutations)
            received = dict(self.received)
            faults: dict[str, dict[str, int]] = {}
            for (kind, action), n in self.faults.items():
                faults.setdefault(kind, {})[action] = n
        mutating = sum(n for action, n in calls.items() if is_mutating(action))
        return {
            "calls": calls,  # what moto served (a dropped response was still served)
            "mutating": mutating,
            "total": sum(calls.values()),
            "received": received,  # every request, including those a fault rejected
            "faults": faults,
            "touched": touched,  # instance id -> mutating calls that named it
            "mutations": mutations,  # [{at, action, agent}], oldest first
        }

    def reset(self) -> None:
        """Forget every instance, counted call and fault rule (fresh state per test)."""
        from moto.moto_api._internal.models import moto_api_backend

        moto_api_backend.reset()
        with self._lock:
            self.calls.clear()
            self.received.clear()
            self.faults.clear()
            self.touched.clear()
            self.mutations.clear()
        self.fault_plan = FaultPlan()

    @classmethod
    def _json(cls, start_response: Callable[..., Any], payload: dict[str, Any]) -> list[bytes]:
        return cls._respond(
            start_response, "200 OK", json.dumps(payload).encode(), "application/json"
        )

    @staticmethod
    def _respond(
        start_response: Callable[..., Any], status: str, body: bytes, content_type: str
    ) -> list[bytes]:
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
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


def set_faults(endpoint: str, rules: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Replace a running sandbox's fault rules, e.g.
    ``set_faults(url, [{"action": "*", "kind": "throttle", "fraction": 0.2}], seed=1)``."""
    body = json.dumps({"rules": list(rules), "seed": seed}).encode()
    request = urllib.request.Request(
        endpoint.rstrip("/") + FAULTS_PATH,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def clear_faults(endpoint: str) -> None:
    request = urllib.request.Request(endpoint.rstrip("/") + FAULTS_PATH, method="DELETE")
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
