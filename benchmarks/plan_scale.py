"""How `plan`'s own work grows with the number of services: reading and validating the
desired state, planning, and rendering the plan (human and JSON), for 500 to 5,000
services of 2 instances each, from an empty cloud (every instance to create).

The cloud's listing is left out (an empty observation): the sandbox's listing is moto's
and is quadratic in the tags it filters (see benchmarks/README.md), which would measure
moto, not reconciler. Prints seconds and the time per service relative to the smallest
size: a linear `plan` keeps that ratio near 1.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _bench import IMAGE_V1, quiet, write_desired
from rich.console import Console

from reconciler.desired import load_desired_state
from reconciler.model import LedgerView
from reconciler.planning.planner import compute_plan
from reconciler.present import render

SIZES = (500, 1000, 2000, 5000)


def one(services: int, work: Path) -> float:
    environments = {"production": {f"svc{n:05d}": {"image": IMAGE_V1, "count": 2}
                                   for n in range(services)}}  # fmt: skip
    root = write_desired(work / f"d{services}", endpoint="http://127.0.0.1:9",
                         environments=environments,
                         policy={"max_total_instances": 100_000})  # fmt: skip
    began = time.perf_counter()
    desired = load_desired_state(root)
    plan = compute_plan(desired=desired, observed=[], ledger=LedgerView((), ()),
                        now=datetime.now(UTC))  # fmt: skip
    render.print_plan(Console(file=io.StringIO(), width=100), plan, commit=None)
    with contextlib.redirect_stdout(io.StringIO()):
        render.print_json(render.plan_to_json(plan, commit=None, guards=[]))
    return time.perf_counter() - began


def main() -> None:
    quiet()
    with tempfile.TemporaryDirectory() as tmp:
        times = {n: one(n, Path(tmp)) for n in SIZES}
    base = times[SIZES[0]] / SIZES[0]
    print(f"{'services':>9} {'seconds':>8} {'per service vs 500':>19}")
    for n, seconds in times.items():
        print(f"{n:>9} {seconds:>8.2f} {seconds / n / base:>19.2f}")


if __name__ == "__main__":
    main()
