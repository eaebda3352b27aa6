"""Built-in health checks: `http` (2xx/3xx), `tcp` (connect) and `command` (exit 0).

Owns: one probe each, with the instance's fields filled into the target template, and
an unhealthy answer's reason (the HTTP status and the start of its body, the TCP error,
the end of the command's stderr), bounded and with URL credentials redacted.
Must not: loop or wait (the gate in apply decides how often and how long), or raise
for an unhealthy answer — that is a `ProbeResult(ok=False)`.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time

from reconciler.desired.templates import fill_template
from reconciler.errors import TransientError
from reconciler.extensions import InstanceRef, ProbeResult
from reconciler.httpclient import exchange
from reconciler.redact import excerpt

BODY_START = 200  # bytes of an unhealthy answer's body kept as its reason


def _body_start(body: bytes) -> str:
    text = excerpt(body[:BODY_START], limit=BODY_START)
    return f": {text}" if text else ""


def _fill(template: str, instance: InstanceRef) -> str:
    return fill_template(template, instance.template_fields())


class HttpCheck:
    def __init__(self, target: str, *, timeout: float) -> None:
        self.target = target
        self.timeout = min(timeout, 10.0)  # one probe; the gate's timeout bounds the whole

    def probe(self, instance: InstanceRef) -> ProbeResult:
        url = _fill(self.target, instance)
        headers = {"User-Agent": "reconciler-health"}
        try:
            answer = exchange("GET", url, headers=headers,
                              deadline=time.monotonic() + self.timeout)  # fmt: skip
        except TransientError as exc:  # no answer: refused, reset, timed out
            return ProbeResult(False, str(exc))
        except ValueError as exc:  # not a URL httpx can send
            return ProbeResult(False, f"invalid URL: {type(exc).__name__}")
        ok = 200 <= answer.status < 400
        body = "" if ok else _body_start(answer.body_start[:BODY_START])
        return ProbeResult(ok, f"HTTP {answer.status}{body}")


class TcpCheck:
    def __init__(self, target: str, *, timeout: float) -> None:
        self.target = target
        self.timeout = min(timeout, 10.0)

    def probe(self, instance: InstanceRef) -> ProbeResult:
        host, _, port = _fill(self.target, instance).rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=self.timeout):
                return ProbeResult(True, "connected")
        except (OSError, ValueError) as exc:
            return ProbeResult(False, f"{type(exc).__name__}: {exc}")


class CommandCheck:
    """Runs the operator's command; the instance's fields are also in its environment."""

    def __init__(self, target: str, *, timeout: float) -> None:
        self.target = target
        self.timeout = min(timeout, 60.0)

    def probe(self, instance: InstanceRef) -> ProbeResult:
        argv = shlex.split(_fill(self.target, instance))
        env = {
            **os.environ,
            **{f"RECONCILER_{k.upper()}": v for k, v in instance.template_fields().items()},
        }
        try:
            done = subprocess.run(
                argv,
                env=env,
                capture_output=True,
                timeout=self.timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return ProbeResult(False, f"timed out after {self.timeout:g}s")
        except OSError as exc:
            return ProbeResult(False, f"cannot run {argv[0] if argv else '?'}: {exc.strerror}")
        if done.returncode == 0:
            return ProbeResult(True, "exit 0")
        # The end of stderr says why (or of stdout, for a check that reports there).
        said = excerpt(done.stderr) or excerpt(done.stdout)
        return ProbeResult(False, f"exit {done.returncode}" + (f": {said}" if said else ""))
