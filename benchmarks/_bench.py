"""Shared helpers for the benchmark scripts: a private sandbox, fleets, counters, timers.

Owns: starting and stopping a sandbox on 127.0.0.1 for one script, writing fleet
desired states, reading the sandbox's per-action request counters as differences, and
the machine facts RESULTS.md reports. Must not: assert anything (scripts print figures
against targets; the test suite never times anything).
"""

from __future__ import annotations

import logging
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import structlog  # noqa: E402

from reconciler.providers.sandbox import SandboxServer, fetch_stats  # noqa: E402
from tests.support.desired_builder import IMAGE_V1, IMAGE_V2, write_desired  # noqa: E402

__all__ = ["IMAGE_V1", "IMAGE_V2"]

T = TypeVar("T")


def quiet() -> None:
    """Warnings only: per-instance info lines would dominate the timings."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger().setLevel(logging.WARNING)


@contextmanager
def sandbox() -> Iterator[SandboxServer]:
    """A sandbox of our own for the script's lifetime, stopped however the script ends."""
    server = SandboxServer().start()
    try:
        yield server
    finally:
        server.stop()


def fleet(
    root: Path,
    endpoint: str,
    *,
    services: int,
    envs: tuple[str, ...] = ("production",),
    count: int = 2,
    image: str = IMAGE_V1,
    max_parallel: int = 32,
) -> Path:
    """`services` services per environment, `count` instances each, on one provider."""
    spec = {"image": image, "count": count}
    environments = {env: {f"svc{n:04d}": dict(spec) for n in range(services)} for env in envs}
    return write_desired(
        root,
        endpoint=endpoint,
        environments=environments,
        policy={"max_parallel": max_parallel, "max_destroy_fraction": 1.0,
                "max_total_instances": 100_000},
        # moto filters tags in quadratic time: a 4,000-instance listing page is slow.
        provider_options={"timeout": "10m"},  # the most a profile may say
    )


class Requests:
    """API requests the sandbox received since the last `take()`, by action."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._last: dict[str, int] = dict(fetch_stats(endpoint)["received"])

    def take(self) -> dict[str, int]:
        now: dict[str, int] = dict(fetch_stats(self.endpoint)["received"])
        delta = {k: n - self._last.get(k, 0) for k, n in now.items() if n != self._last.get(k, 0)}
        self._last = now
        return dict(sorted(delta.items()))


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    began = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - began


def rss_mib() -> float:
    """Current resident set size of this process (Linux /proc; else the peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cores": os.cpu_count(),
        "load": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def fmt_requests(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in counts.items()) or "none"
