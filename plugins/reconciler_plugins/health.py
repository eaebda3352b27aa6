"""Built-in health checks: `http` (2xx/3xx), `tcp` (connect) and `command` (exit 0).

Owns: one probe each, with the instance's fields filled into the target template.
Must not: loop or wait (the gate in apply decides how often and how long), or raise
for an unhealthy answer — that is a `ProbeResult(ok=False)`.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import urllib.error
import urllib.request

from reconciler.extensions import InstanceRef, ProbeResult
from reconciler.templates import fill_template


def _fill(template: str, instance: InstanceRef) -> str:
    return fill_template(template, instance.template_fields())


class HttpCheck:
    def __init__(self, target: str, *, timeout: float) -> None:
        self.target = target
        self.timeout = min(timeout, 10.0)  # one probe; the gate's timeout bounds the whole

    def probe(self, instance: InstanceRef) -> ProbeResult:
        url = _fill(self.target, instance)
        request = urllib.request.Request(url, headers={"User-Agent": "reconciler-health"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return ProbeResult(200 <= response.status < 400, f"HTTP {response.status}")
        except urllib.error.HTTPError as exc:
            return ProbeResult(False, f"HTTP {exc.code}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return ProbeResult(False, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}")


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
        except (OSError, subprocess.TimeoutExpired) as exc:
            return ProbeResult(False, f"{type(exc).__name__}")
        return ProbeResult(done.returncode == 0, f"exit {done.returncode}")
