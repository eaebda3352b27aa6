"""Converge 200 instances (100 services x 2) from empty with max_parallel 1, 8 and 32.

Run twice: against the bare sandbox (moto answers in milliseconds and shares this
process's interpreter lock, so it mostly measures moto) and with a fixed latency on
every call (`--latency`, default 0.1 s: an EC2-like response time, which is what
parallelism hides). Prints seconds, API requests and the speed-up of 32 over 1.

    .venv/bin/python benchmarks/bench_parallel.py [--services 100] [--latency 0.1] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from _bench import Requests, fleet, fmt_requests, quiet, sandbox, timed

from reconciler import engine
from reconciler.ledger import Ledger
from reconciler.providers.sandbox import reset_sandbox, set_faults

LEVELS = (1, 8, 32)
SPEEDUP_TARGET = 6.0


def converge(endpoint: str, tmp: Path, *, services: int, max_parallel: int) -> dict[str, Any]:
    root = fleet(
        tmp / f"desired-{max_parallel}", endpoint, services=services, max_parallel=max_parallel
    )
    requests = Requests(endpoint)
    with Ledger.open(tmp / f"state-{max_parallel}") as ledger:
        outcome, seconds = timed(lambda: engine.apply_pass(root, ledger))
    assert outcome.result is not None and outcome.result.ok, outcome.result
    return {
        "seconds": round(seconds, 3),
        "requests": requests.take(),
        "created": outcome.result.counts.get("create", 0),
    }


def run(services: int, latency: float) -> dict[str, Any]:
    quiet()
    series: dict[str, Any] = {}
    with sandbox() as server, tempfile.TemporaryDirectory() as tmp:
        for label, delay in (("bare sandbox", 0.0), (f"+{latency:g} s per call", latency)):
            rows = {}
            for level in LEVELS:
                reset_sandbox(server.endpoint)
                if delay:
                    set_faults(
                        server.endpoint, [{"action": "*", "kind": "latency", "seconds": delay}]
                    )
                rows[level] = converge(
                    server.endpoint,
                    Path(tmp) / f"{label[:4]}",
                    services=services,
                    max_parallel=level,
                )
            series[label] = rows
    return {"instances": services * 2, "series": series}


def report(r: dict[str, Any]) -> list[str]:
    lines = [
        f"Converge {r['instances']} instances from empty",
        "",
        "| endpoint | max_parallel | seconds | API requests | speed-up vs 1 |",
        "|---|---:|---:|---|---:|",
    ]
    verdicts = []
    for label, series in r["series"].items():
        rows = {int(k): v for k, v in series.items()}  # JSON turns the keys into strings
        base = rows[1]["seconds"]
        for level, row in rows.items():
            lines.append(
                f"| {label} | {level} | {row['seconds']:.2f} | "
                f"{fmt_requests(row['requests'])} | {base / row['seconds']:.1f}x |"
            )
        speedup = base / rows[32]["seconds"]
        verdicts.append(
            f"- {label}: speed-up at 32 vs 1 = {speedup:.1f}x (target >= "
            f"{SPEEDUP_TARGET:.0f}x): {'MET' if speedup >= SPEEDUP_TARGET else 'MISSED'}"
        )
    return [*lines, "", *verdicts]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.services, args.latency)
    print(json.dumps(result, indent=2) if args.json else "\n".join(report(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
