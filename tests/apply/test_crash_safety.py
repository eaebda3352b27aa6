"""SIGKILL during a fleet-wide replacement, then apply again: nothing lost, nothing leaked.

Each trial converges 10 services x 2 instances, commits an image bump for all of them,
runs `python -m reconciler apply` as a real process and kills it with SIGKILL after a
delay drawn from `random.Random(trial)` between 0.2 s and the time one full replacement
takes (measured once, un-killed). Then `apply` runs until it exits 0 (at most 3 times)
and the cloud and the ledger must be exactly right: 20 live instances, all on the new
image, unique names, no instance outside an active generation, no open operation, a
ledger that passes `integrity_check`, and a further `apply` that mutates nothing.

`keep_previous` is 0s, so a finished replacement keeps no standby: the expected fleet
is exactly the 20 new instances. `SOAK_TRIALS=200` (`make soak`) runs more trials.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.ledger import Ledger
from reconciler.providers.sandbox import SandboxServer, fetch_stats, reset_sandbox
from tests.conftest import Cli
from tests.support.cloud import live_nodes
from tests.support.desired_builder import IMAGE_V1, IMAGE_V2, git_commit, write_desired

TRIALS = int(os.environ.get("SOAK_TRIALS", "10"))
SERVICES = 10
COUNT = 2
MIN_DELAY = 0.2
NAME = re.compile(r"^(?P<env>[a-z]+)-(?P<service>svc\d+)-g(?P<gen>\d+)-(?P<slot>\d+)$")

_measured: dict[str, float] = {}


def fleet(image: str) -> dict[str, dict[str, dict[str, Any]]]:
    return {
        "prod": {
            f"svc{n:02d}": {"image": image, "count": COUNT, "keep_previous": "0s"}
            for n in range(SERVICES)
        }
    }


def write_fleet(root: Path, endpoint: str, image: str) -> None:
    write_desired(
        root,
        endpoint=endpoint,
        environments=fleet(image),
        # Every service in flight at once, as in a real fleet-wide bump; the image bump
        # destroys every old instance, but each has its replacement: not a mass destroy.
        policy={"max_parallel": SERVICES},
    )
    git_commit(root, f"all services to {image}")


def apply_command(cli: Cli, root: Path) -> list[str]:
    return [sys.executable, "-m", "reconciler", "--state-dir", str(cli.state_dir),
            "--log-format", "json", "apply", "--desired", str(root)]  # fmt: skip


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.pop("STATE_DIRECTORY", None)
    return env


def prepare(cli: Cli, root: Path, endpoint: str) -> None:
    """A converged v1 fleet and a committed v2: the replacement is what apply does next."""
    write_fleet(root, endpoint, IMAGE_V1)
    first = cli("apply", "--desired", str(root))
    assert first.code == 0, first.stderr
    write_fleet(root, endpoint, IMAGE_V2)


def full_replacement_seconds(tmp_path: Path, endpoint: str) -> float:
    """How long one un-killed replacement takes here, process start included (once)."""
    if "seconds" not in _measured:
        cli = Cli(state_dir=tmp_path / "calibrate-state", cwd=tmp_path)
        root = tmp_path / "calibrate-desired"
        prepare(cli, root, endpoint)
        started = time.monotonic()
        done = subprocess.run(apply_command(cli, root), env=clean_env(), capture_output=True,
                              text=True, timeout=300, check=False)  # fmt: skip
        _measured["seconds"] = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        reset_sandbox(endpoint)
    return _measured["seconds"]


def kill_after(command: list[str], cwd: Path, delay: float) -> int | None:
    """Run `command`, SIGKILL it after `delay` s; its exit code if it finished first."""
    process = subprocess.Popen(command, cwd=cwd, env=clean_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        return process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        return None


@pytest.mark.parametrize("trial", range(TRIALS))
def test_sigkill_during_replacement_then_apply_converges_exactly(
    trial: int, tmp_path: Path, sandbox: SandboxServer
) -> None:
    full = full_replacement_seconds(tmp_path, sandbox.endpoint)
    cli = Cli(state_dir=tmp_path / "state", cwd=tmp_path)
    root = tmp_path / "desired"
    prepare(cli, root, sandbox.endpoint)
    delay = random.Random(trial).uniform(MIN_DELAY, max(full, MIN_DELAY * 2))

    finished = kill_after(apply_command(cli, root), tmp_path, delay)

    results = []
    for _attempt in range(3):
        again = cli("apply", "--desired", str(root))
        results.append(again)
        if again.code == 0:
            break
    assert results[-1].code == 0, (
        f"trial {trial} (killed after {delay:.2f}s, finished={finished}): "
        + " | ".join(r.stderr[-2000:] for r in results)
    )
    assert_converged(cli, sandbox.endpoint, context=f"trial {trial}, delay {delay:.2f}s")

    before = fetch_stats(sandbox.endpoint)["mutating"]
    last = cli("apply", "--desired", str(root))
    assert last.code == 0, last.stderr
    assert fetch_stats(sandbox.endpoint)["mutating"] == before, f"trial {trial}: not converged"


def assert_converged(cli: Cli, endpoint: str, *, context: str) -> None:
    nodes = live_nodes(endpoint)
    names = [n.extra["tags"].get("Name", "") for n in nodes]
    assert len(nodes) == SERVICES * COUNT, f"{context}: {sorted(names)}"
    assert {n.extra["image_id"] for n in nodes} == {IMAGE_V2}, context
    assert len(set(names)) == len(names), f"{context}: duplicate names {sorted(names)}"
    parsed = [NAME.match(name) for name in names]
    assert all(parsed), f"{context}: {names}"
    slots: dict[str, list[int]] = {}
    for match in parsed:
        assert match is not None
        slots.setdefault(match["service"], []).append(int(match["slot"]))
    assert {s: sorted(v) for s, v in slots.items()} == {
        f"svc{n:02d}": list(range(1, COUNT + 1)) for n in range(SERVICES)
    }, context

    with Ledger.open(cli.state_dir) as ledger:
        assert ledger.open_operations() == [], context
        serving = {
            (row["env"], row["service"], row["number"])
            for row in ledger.generation_rows()
            if row["state"] in ("active", "standby")
        }
        path = ledger.path
    for node in nodes:
        tags = node.extra["tags"]
        key = (tags["reconciler:env"], tags["reconciler:service"],
               int(tags["reconciler:generation"]))  # fmt: skip
        assert key in serving, f"{context}: {tags['Name']} is outside every live generation"

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", context
    finally:
        conn.close()
