"""HTTP for plugins: webhook deliveries and health probes, on one client (httpx).

Owns: httpx (the only module that imports it), turning its outcomes into ours
(`TransientError` for what may be retried, `HttpRefused` for an answer that retrying
will not change), and a hard deadline on a whole exchange: httpx bounds each connect
and read, so a server trickling a byte at a time could hold a request for ever; a
timer closes the client at the deadline. Must not: follow redirects (a probe's 3xx is
its answer; a webhook's is the receiver's mistake) or log what it sends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from reconciler.errors import TransientError
from reconciler.redact import redact_urls

BODY_READ = 65536  # of an answer, at most: a receiver's essay is not waited for


@dataclass(frozen=True)
class Answer:
    status: int
    body_start: bytes
    retry_after: float | None = None


def exchange(
    method: str,
    url: str,
    *,
    deadline: float,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """One request, whatever the server does, over by `deadline` (monotonic). Raises
    TransientError when no answer came (connect, timeout, reset), else the answer."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TransientError("deadline passed before the request")
    client = httpx.Client(timeout=httpx.Timeout(min(remaining, 10.0)), follow_redirects=False)
    timer = threading.Timer(remaining, client.close)
    timer.daemon = True
    timer.start()
    try:
        with client.stream(method, url, content=body, headers=dict(headers or {})) as response:
            start = b""
            for chunk in response.iter_bytes():
                start += chunk
                if len(start) >= BODY_READ or time.monotonic() >= deadline:
                    break
        if time.monotonic() >= deadline:
            raise TransientError("no whole answer before the deadline")
        return Answer(response.status_code, start[:BODY_READ], _retry_after(response))
    except (httpx.HTTPError, RuntimeError) as exc:
        # RuntimeError, or a read on a closed socket: the deadline closed the client.
        if isinstance(exc, httpx.TimeoutException) or time.monotonic() >= deadline:
            raise TransientError(f"timed out: no answer within {remaining:.3g}s") from None
        raise TransientError(_describe(exc)) from None
    finally:
        timer.cancel()
        client.close()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return min(max(float(value), 0.0), 300.0) if value else None
    except ValueError:
        return None


def _describe(exc: Exception) -> str:
    """The kind of failure, never the URL (it may carry a token)."""
    reason = redact_urls(str(exc.__cause__ or exc).split("\n")[0][:200])
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
