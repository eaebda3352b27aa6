"""Issue 20: every phase within 2x of a bare libcloud loop, measured in one run.

50 services x 2 instances. Each tool gets a fresh sandbox and runs as a process per
phase: `reconciler apply` (ledger, guards, intents, health gate and all) and
`bare_loop.py` (libcloud alone: list, diff, create, wait for running, destroy; same
parallelism). Phases: create 100 from empty, a no-op pass (run three times, the median
kept: it is the shortest phase, where one slow start shows most), replace all after an
image bump, heal 3 instances terminated out of band. Prints the wall seconds of each,
ours / loop, and the API requests each made (the sandbox counts them by action); then
the issue's two absolute targets: a no-op `apply` under 0.5 s, `--version` under 0.2 s.

    .venv/bin/python benchmarks/bench_heal.py [--json] [--services 50]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _bench import IMAGE_V1, IMAGE_V2, REPO, Requests, fmt_requests, machine, sandbox

from tests.support.desired_builder import write_desired

COUNT, HEAL, PARALLEL = 2, 3, 8
PHASES = ("create", "no-op", "replace-all", "heal")
TARGET = 2.0  # ours / loop, every phase
NO_OP_RUNS = 3
NO_OP_TARGET, VERSION_TARGET = 0.5, 0.2  # seconds of wall time, ours alone


def _fleet(root: Path, endpoint: str, services: int, image: str) -> Path:
    spec = {"image": image, "count": COUNT, "keep_previous": "0s"}
    return write_desired(
        root, endpoint=endpoint,
        environments={"production": {f"svc{n:04d}": dict(spec) for n in range(services)}},
        policy={"max_parallel": PARALLEL, "max_destroy_fraction": 1.0},
    )  # fmt: skip


def _run(command: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    began = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - began


def _terminate_some(endpoint: str, tag: str, image: str) -> None:
    """Out-of-band terminations (not timed, not counted), as an operator would."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bare_loop import driver, listing

    ec2 = driver(endpoint)
    nodes = sorted(
        (n for n in listing(ec2, {}) if n.state == "running"
         and tag in n.extra.get("tags", {}) and n.extra.get("image_id") == image),
        key=lambda n: n.id,
    )  # fmt: skip
    assert len(nodes) >= HEAL, f"only {len(nodes)} instances to terminate"
    for node in nodes[:HEAL]:
        ec2.destroy_node(node)


def _warm_up(endpoint: str) -> None:
    """One untimed, uncounted request: moto builds a region's EC2 backend (its images,
    instance types) on the first request the process ever serves, about 0.7 s here.
    The sandboxes share that process, so without this the first tool measured would pay
    it and the second would not."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bare_loop import driver, listing

    listing(driver(endpoint), {})


def _phases(
    endpoint: str, converge: Callable[[str], float], tag: str
) -> dict[str, dict[str, Any]]:
    _warm_up(endpoint)
    requests = Requests(endpoint)
    result: dict[str, dict[str, Any]] = {}

    def phase(name: str, image: str, runs: int = 1) -> None:
        times = [converge(image) for _ in range(runs)]
        taken = requests.take()
        result[name] = {
            "seconds": round(statistics.median(times), 3),
            "runs": [round(t, 3) for t in times],
            "requests": {action: n // runs for action, n in taken.items()},  # per run
        }

    phase("create", IMAGE_V1)
    phase("no-op", IMAGE_V1, runs=NO_OP_RUNS)
    phase("replace-all", IMAGE_V2)
    _terminate_some(endpoint, tag, IMAGE_V2)
    requests.take()
    phase("heal", IMAGE_V2)
    return result


def run(services: int) -> dict[str, Any]:
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        with sandbox() as server:
            root = Path(tmp) / "desired"

            def ours(image: str) -> float:
                _fleet(root, server.endpoint, services, image)
                return _run([python, "-m", "reconciler", "--state-dir", f"{tmp}/state",
                             "--log-format", "json", "apply", "--desired", str(root),
                             "--yes"])  # fmt: skip

            reconciler = _phases(server.endpoint, ours, "reconciler:owner")
            version = statistics.median(
                _run([python, "-m", "reconciler", "--version"]) for _ in range(5)
            )
        with sandbox() as server:

            def loop(image: str) -> float:
                return _run([python, "benchmarks/bare_loop.py", "--endpoint", server.endpoint,
                             "--services", str(services), "--count", str(COUNT), "--image",
                             image, "--parallel", str(PARALLEL)])  # fmt: skip

            bare = _phases(server.endpoint, loop, "bench:owner")
    return {"services": services, "count": COUNT, "parallel": PARALLEL, "machine": machine(),
            "reconciler": reconciler, "loop": bare,
            "version_seconds": round(version, 3)}  # fmt: skip


def report(result: dict[str, Any]) -> list[str]:
    lines = [
        f"Heal speed ({result['services']} services x {result['count']} instances, "
        f"parallelism {result['parallel']}; each tool a process on a fresh sandbox)",
        "",
        "| phase | reconciler | bare libcloud loop | ours / loop | target | requests (ours) "
        "| requests (loop) |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for name in PHASES:
        ours, loop = result["reconciler"][name], result["loop"][name]
        ratio = ours["seconds"] / max(loop["seconds"], 1e-6)
        lines.append(
            f"| {name} | {ours['seconds']:.2f} s | {loop['seconds']:.2f} s | {ratio:.1f}x | "
            f"<= {TARGET:.0f}x {'MET' if ratio <= TARGET else 'MISSED'} | "
            f"{fmt_requests(ours['requests'])} | {fmt_requests(loop['requests'])} |"
        )
    no_op, version = result["reconciler"]["no-op"]["seconds"], result["version_seconds"]
    lines += [
        "",
        f"no-op `apply`: {no_op:.3f} s (median of {NO_OP_RUNS}: "
        f"{', '.join(f'{t:.3f}' for t in result['reconciler']['no-op']['runs'])}), "
        f"target < {NO_OP_TARGET} s {'MET' if no_op < NO_OP_TARGET else 'MISSED'}",
        f"`--version`: {version:.2f} s (median of 5), target < {VERSION_TARGET} s "
        f"{'MET' if version < VERSION_TARGET else 'MISSED'}",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--services", type=int, default=50)
    args = parser.parse_args()
    result = run(args.services)
    print(json.dumps(result, indent=2) if args.json else "\n".join(report(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
