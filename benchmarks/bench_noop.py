"""A no-op pass over a large fleet: API requests by action and where the time goes.

Seeds 1,000 services x 2 environments x 2 instances (4,000) straight into the sandbox
with the identity tags reconciler itself would set (launching them through the product
would mostly time moto), lets one pass adopt them into the ledger, then times no-op
passes and splits each into listing, planning, ledger and the rest. Also times the
planner alone per instance at 4,000 instances.

    .venv/bin/python benchmarks/bench_noop.py [--services 1000] [--passes 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _bench import Requests, fleet, fmt_requests, quiet, sandbox, timed

from reconciler import accounting, engine
from reconciler.desired import load_desired_state
from reconciler.ledger import Ledger
from reconciler.planning.planner import compute_plan
from reconciler.providers import LaunchRequest, ownership_tags
from reconciler.providers.ec2.adapter import Ec2Provider
from reconciler.providers.sandbox import SANDBOX_KEY, SANDBOX_SECRET

ENVS = ("production", "staging")
COUNT = 2
PLANNER_TARGET_US = 20.0
CONSTANT_REQUESTS = 2  # allowed on top of (provider-regions x pages)
PAGE = 1000


def seed(endpoint: str, root: Path) -> float:
    """Launch every desired instance with its generation-1 tags, 8 calls at a time."""
    desired = load_desired_state(root)
    provider = Ec2Provider(
        "cloud", key=SANDBOX_KEY, secret=SANDBOX_SECRET, region="us-east-1", endpoint=endpoint
    )
    requests = []
    for spec in desired.services():
        for slot in range(1, spec.count + 1):
            op = f"seed-{spec.env}-{spec.name}-{slot}"
            tags = ownership_tags(
                owner=desired.owner,
                env=spec.env,
                service=spec.name,
                generation=1,
                fingerprint=spec.fingerprint,
                op=op,
                slot=slot,
            )
            requests.append(
                LaunchRequest(
                    name=tags["Name"],
                    image=spec.image,
                    size=spec.size,
                    tags=tags,
                    op=op,
                    user_data=spec.user_data,
                )
            )
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(provider.create_instance, requests))
    return time.perf_counter() - began


class Split:
    """Wraps the engine's seams with timers: listing, planning, ledger."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"listing": 0.0, "planning": 0.0, "ledger": 0.0}

    def wrap(self, owner: Any, name: str, bucket: str) -> None:
        original: Callable[..., Any] = getattr(owner, name)

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[bucket] += time.perf_counter() - began

        setattr(owner, name, timed_call)

    def take(self) -> dict[str, float]:
        taken, self.seconds = self.seconds, dict.fromkeys(self.seconds, 0.0)
        return taken


def run(services: int, passes: int) -> dict[str, Any]:
    quiet()
    with sandbox() as server, tempfile.TemporaryDirectory() as tmp:
        root = fleet(
            Path(tmp) / "desired", server.endpoint, services=services, envs=ENVS, count=COUNT
        )
        seeded = seed(server.endpoint, root)
        requests = Requests(server.endpoint)
        with Ledger.open(Path(tmp) / "state") as ledger:
            adopt, adopt_s = timed(lambda: engine.apply_pass(root, ledger))
            adopt_requests = requests.take()
            split = Split()
            split.wrap(engine, "observe", "listing")
            split.wrap(engine, "compute_plan", "planning")
            for method in ("start_run", "finish_run", "view", "record_event", "event_rows"):
                split.wrap(ledger, method, "ledger")
            split.wrap(accounting, "record_observation", "ledger")
            split.wrap(engine, "resolve_open_operations", "ledger")
            rows = []
            for _ in range(passes):
                outcome, seconds = timed(lambda: engine.apply_pass(root, ledger))
                assert outcome.plan.empty and outcome.result is not None, outcome.plan
                parts = split.take()
                rows.append(
                    {
                        "seconds": seconds,
                        "requests": requests.take(),
                        **parts,
                        "other": seconds - sum(parts.values()),
                    }
                )
            # The planner alone, on the same inputs the passes used.
            desired = load_desired_state(root)
            view = ledger.view()
            observed = list(outcome.observed)
            plan_times = []
            for _ in range(5):
                began = time.perf_counter()
                compute_plan(desired=desired, observed=observed, ledger=view, now=datetime.now(UTC))
                plan_times.append(time.perf_counter() - began)
    instances = len(observed)
    median = {
        k: statistics.median(r[k] for r in rows)
        for k in ("seconds", "listing", "planning", "ledger", "other")
    }
    return {
        "services": services * len(ENVS),
        "instances": instances,
        "seed_seconds": seeded,
        "adopt_seconds": adopt_s,
        "adopt_requests": adopt_requests,
        "adopted": len(adopt.plan.actions),
        "passes": rows,
        "median": median,
        "planner_us_per_instance": min(plan_times) / instances * 1e6,
        "pages": -(-instances // PAGE),
    }


def report(r: dict[str, Any]) -> list[str]:
    m = r["median"]
    last = r["passes"][-1]["requests"]
    total = sum(last.values())
    budget = 1 * r["pages"] + CONSTANT_REQUESTS
    only_lists = set(last) <= {"DescribeInstances"}
    lines = [
        f"No-op pass over {r['services']:,} services, {r['instances']:,} instances "
        f"(1 provider-region, {r['pages']} page(s) of {PAGE})",
        "",
        f"- seeding (8 parallel RunInstances, not timed as a pass): {r['seed_seconds']:.1f} s",
        f"- first pass (adopts {r['adopted']:,} generations into the ledger): "
        f"{r['adopt_seconds']:.1f} s, requests: {fmt_requests(r['adopt_requests'])}",
        f"- no-op pass, median of {len(r['passes'])}: {m['seconds']:.2f} s = listing "
        f"{m['listing']:.2f} s + planning {m['planning']:.2f} s + ledger {m['ledger']:.2f} s "
        f"+ other {m['other']:.2f} s",
        f"- API requests per no-op pass: {fmt_requests(last)} (target <= provider-regions x "
        f"pages + {CONSTANT_REQUESTS} = {budget}, reads only): "
        f"{'MET' if total <= budget and only_lists else 'MISSED'}",
        f"- planner: {r['planner_us_per_instance']:.1f} us per instance at "
        f"{r['instances']:,} instances (target < {PLANNER_TARGET_US:.0f} us): "
        f"{'MET' if r['planner_us_per_instance'] < PLANNER_TARGET_US else 'MISSED'}",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.services, args.passes)
    print(json.dumps(result, indent=2) if args.json else "\n".join(report(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
