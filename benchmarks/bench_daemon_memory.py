"""Daemon memory: resident set size after 10 and after 500 no-op passes.

Runs the real daemon loop in this process (git remote on disk, sandbox endpoint, a
short interval) over a small fleet and reads VmRSS after pass 10 and pass 500. The
target: growth within 10%.

    .venv/bin/python benchmarks/bench_daemon_memory.py [--passes 500] [--interval 0.01]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _bench import fleet, quiet, rss_mib, sandbox, timed

from reconciler.ledger import Ledger
from reconciler.service.daemon import Daemon, DaemonSettings
from reconciler.service.systemd import Notifier, Watchdog
from tests.support.desired_builder import git_commit

EARLY = 10
GROWTH_TARGET = 0.10


def run(passes: int, interval: float, services: int) -> dict[str, Any]:
    quiet()
    with sandbox() as server, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        fleet(work / "desired", server.endpoint, services=services)
        git_commit(work, "fleet")
        bare = Path(tmp) / "remote.git"
        subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
        settings = DaemonSettings(repo=str(bare), path="desired", interval=interval, jitter=0.0)
        state = Path(tmp) / "state"
        state.mkdir()
        samples: dict[int, float] = {}
        with Ledger.open(state) as ledger:
            notifier = Notifier(None)
            daemon = Daemon(
                settings,
                state_dir=state,
                ledger=ledger,
                notifier=notifier,
                watchdog=Watchdog(notifier, environ={}),
            )

            def loop() -> None:
                for n in range(1, passes + 1):
                    daemon.run_pass()
                    daemon._sleep(interval)
                    if n in (EARLY, passes):
                        gc.collect()
                        samples[n] = rss_mib()

            _, seconds = timed(loop)
    return {
        "passes": passes,
        "interval": interval,
        "services": services,
        "seconds": round(seconds, 1),
        "rss_mib": samples,
    }


def report(r: dict[str, Any]) -> list[str]:
    rss = {int(k): v for k, v in r["rss_mib"].items()}  # JSON turns the keys into strings
    early, late = rss[EARLY], rss[r["passes"]]
    growth = (late - early) / early
    return [
        f"Daemon memory ({r['services']} services x 2 instances, interval {r['interval']} s, "
        f"{r['passes']} passes in {r['seconds']} s)",
        "",
        f"- RSS after {EARLY} passes: {early:.1f} MiB; after {r['passes']}: {late:.1f} MiB; "
        f"growth {growth * 100:+.1f}% (target within {GROWTH_TARGET * 100:.0f}%): "
        f"{'MET' if abs(growth) <= GROWTH_TARGET else 'MISSED'}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--passes", type=int, default=500)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.passes, args.interval, args.services)
    print(json.dumps(result, indent=2) if args.json else "\n".join(report(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
