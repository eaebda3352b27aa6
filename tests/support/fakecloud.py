"""A loopback HTTP server that speaks a cloud's REST API from response files.

No emulator exists here for GCE, Azure or OpenStack, so each adapter is tested
against one of these: a `FakeCloud` subclass holds the instances it was asked to
create and answers every request by filling a recorded JSON response file (under
tests/support/fixtures/<cloud>/) with that state, the way libcloud's own tests use
fixtures, but over real HTTP so the real libcloud driver does the talking.

Faults are injected per route: `throttle(n)` answers the next n requests with the
cloud's throttling response; `partial_listing = True` makes listings misbehave the
way that cloud's partial answers look. `requests` records every request (method,
path) so a test can count mutating calls.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).parent / "fixtures"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})

    @classmethod
    def of_json(cls, payload: Any, status: int = 200, **headers: str) -> Response:
        return cls(
            status=status,
            body=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", **headers},
        )


class FakeCloud:
    """Subclasses implement `handle`; the server calls it for every request."""

    fixture_dir: str = ""  # e.g. "gce": response files live in tests/support/fixtures/gce/
    # Endings of the paths that only fetch a token: POSTs there change nothing in the
    # cloud (an ending, since e.g. Azure's login path starts with the tenant id).
    auth_paths: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str]] = []
        self.queries: list[dict[str, list[str]]] = []  # each request's query, in order
        # Exceptions raised inside the fake itself: answered as a 500 (which the adapter
        # may retry like an outage), then failed loudly when `serving` ends.
        self.bugs: list[str] = []
        self.partial_listing = False
        self._throttle = 0
        self.retry_after = "0"  # the Retry-After a throttling answer carries
        self.request_times: list[float] = []  # time.monotonic() of each request, in order
        self.base_url = ""  # set once the server listens: http://127.0.0.1:<port>

    # -- what tests use ------------------------------------------------------
    def throttle(self, count: int = 1) -> None:
        with self.lock:
            self._throttle = count

    def gaps(self, method: str, path_end: str) -> list[float]:
        """Seconds between consecutive requests of `method` to a path ending so."""
        times = [t for (m, p), t in zip(self.requests, self.request_times, strict=True)
                 if m == method and p.endswith(path_end)]  # fmt: skip
        return [later - earlier for earlier, later in itertools.pairwise(times)]

    def mutating_requests(self) -> list[tuple[str, str]]:
        return [
            (m, p)
            for m, p in self.requests
            if m in ("POST", "PUT", "PATCH", "DELETE")
            and not (self.auth_paths and p.endswith(self.auth_paths))
        ]

    # -- what subclasses use -------------------------------------------------
    def fixture(self, name: str, /, **values: Any) -> Any:
        """Load tests/support/fixtures/<cloud>/<name>, `$name` placeholders filled, as JSON.

        Values that are not strings are substituted as JSON text, so a template may
        write `"items": $items` for a list."""
        text = (FIXTURES / self.fixture_dir / name).read_text()
        filled = Template(text).substitute(
            {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
        )
        return json.loads(filled)

    def throttled(self) -> bool:
        """True (and one fewer left) when this request must get the throttling answer."""
        with self.lock:
            if self._throttle > 0:
                self._throttle -= 1
                return True
            return False

    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    # -- plumbing --------------------------------------------------------------
    def dispatch(self, request: Request) -> Response:
        with self.lock:
            self.requests.append((request.method, request.path))
            self.queries.append(request.query)
            self.request_times.append(time.monotonic())
        return self.handle(request)


def _handler_for(cloud: FakeCloud) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Request(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            try:
                response = cloud.dispatch(request)
            except Exception as exc:  # a bug in the fake: answer 500, fail the test later
                cloud.bugs.append(f"{request.method} {request.path}: {exc!r}")
                response = Response.of_json({"error": f"fake cloud: {exc!r}"}, status=500)
            self.send_response(response.status)
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: pytest shows the test's own output

    return Handler


@contextmanager
def serving(cloud: FakeCloud) -> Iterator[FakeCloud]:
    """Serve `cloud` on 127.0.0.1 (a free port) for the duration of the block; a bug in
    the fake's own code (a request it could not answer) fails the block at its end."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(cloud))
    server.daemon_threads = True
    cloud.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fakecloud", daemon=True
    )
    thread.start()
    try:
        yield cloud
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert not cloud.bugs, "the fake cloud failed to answer: " + "; ".join(cloud.bugs)
