"""Randomized failovers during rollouts, two members on one etcd (`make soak-ha`, issue 16).

Two daemons (processes) share a real etcd, the sandbox and a desired-state repository,
and stream the ledger to a file replica. Each round pushes a new generation with a slow
health gate, waits a random moment into the rollout, then takes the leader down at
random: SIGKILL (and a restart), or SIGSTOP past the lease (and SIGCONT once the other
leads). It prints the failover times (kill/stop -> the other member holds the key and
says it leads) and the counts that must be zero: leaked instances (alive in the cloud,
unknown to the leader's ledger), duplicated slots, interleaved epochs in the sandbox's
request log, and ledgers failing `PRAGMA integrity_check` on any member. Figures are
appended to benchmarks/RESULTS-ha.md. Exit status 1 when a count that must be zero is not.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _bench import REPO, sandbox

from reconciler.providers.sandbox import fetch_stats
from tests.support.cloud import live_nodes
from tests.support.daemon_support import DaemonProcess, Remote, wait_for
from tests.support.desired_builder import IMAGE_V1, IMAGE_V2
from tests.support.etcd import EtcdServer

TTL = 3
NAMES = ("alpha", "beta")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failovers", type=int, default=20)
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.monotonic()
    with sandbox() as cloud, tempfile.TemporaryDirectory(prefix="soak-ha-") as tmp:
        root = Path(tmp)
        etcd = EtcdServer(root / "etcd").start()
        remote = Remote(root, cloud.endpoint)
        replica = f"file://{root / 'replica'}"
        members: dict[str, DaemonProcess] = {}

        def start(name: str) -> None:
            members[name] = DaemonProcess(
                state_dir=root / f"state-{name}", repo=str(remote.bare),
                log_path=root / f"{name}.log", interval="1s",
                extra=("--coordination", etcd.url, "--lease-ttl", f"{TTL}s", "--member", name,
                       "--ledger-replica", replica),
            )  # fmt: skip

        def leader() -> str | None:
            """The holder of the key, once it says it leads (a paused member's file may
            still say leader: the key is the truth)."""
            holder = etcd.leader_key("acme")
            return holder[0] if holder and _role(root, holder[0]) == "leader" else None

        failovers: list[float] = []
        methods: list[str] = []
        try:
            remote.push(_desired(IMAGE_V1, 0), "round 0")
            for name in NAMES:
                start(name)
            wait_for(leader, timeout=60, what="a leader")
            wait_for(lambda: _running(cloud.endpoint, IMAGE_V1) == 2, timeout=120, what="v1")
            for round_ in range(1, args.failovers + 1):
                image = IMAGE_V2 if round_ % 2 else IMAGE_V1
                remote.push(_desired(image, round_), f"round {round_}")
                time.sleep(rng.uniform(1.0, 4.0))  # somewhere in the rollout
                current = wait_for(leader, timeout=60, what="a leader")
                other = NAMES[1 - NAMES.index(current)]
                method = rng.choice(("kill", "stop"))
                down_at = time.monotonic()
                if method == "kill":
                    members[current].process.kill()
                    members[current].wait()
                else:
                    members[current].signal(signal.SIGSTOP)
                wait_for(lambda o=other: leader() == o, timeout=60, what=f"{other} leads")
                failovers.append(time.monotonic() - down_at)
                methods.append(method)
                if method == "kill":
                    start(current)
                else:
                    members[current].signal(signal.SIGCONT)
                wait_for(lambda i=image, o=other: _running(cloud.endpoint, i) == 2
                         and _active_image(root / f"state-{leader() or o}") == i,
                         timeout=180, what=f"round {round_} converged")  # fmt: skip
                print(f"round {round_:2d}: {method:4s} {current} -> {other} leads after "
                      f"{failovers[-1]:.1f}s", flush=True)  # fmt: skip
            time.sleep(2 * TTL)
            final = wait_for(leader, timeout=60, what="a leader")
            counts = _counts(root, cloud.endpoint, final)
        finally:
            for process in members.values():
                if process.process.poll() is None:
                    process.signal(signal.SIGCONT)
                process.stop()
            etcd.stop()
    median = statistics.median(failovers) if failovers else float("nan")
    lines = [
        f"### `benchmarks/soak_ha.py --failovers {args.failovers} --seed {args.seed}` "
        f"({time.monotonic() - started:.0f} s, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"- failovers: {len(failovers)} ({methods.count('kill')} SIGKILL, "
        f"{methods.count('stop')} SIGSTOP past the lease), lease TTL {TTL}s, interval 1s",
        f"- failover time: median {median:.1f} s, max {max(failovers, default=0):.1f} s "
        f"(= {median / TTL:.2f} x TTL)",
        *(f"- {what}: {n}" for what, n in counts.items()),
        "",
    ]
    print("\n".join(lines))
    with (REPO / "benchmarks" / "RESULTS-ha.md").open("a") as out:
        out.write("\n".join(lines) + "\n")
    return 0 if not any(counts.values()) else 1


def _desired(image: str, round_: int) -> dict[str, Any]:
    slow = {"command": "sleep 0.5", "interval": "1s", "healthy_after": 2}
    # keep_previous short: the standby goes, so each round is a new generation.
    web = {"image": image, "count": 2, "health": slow, "keep_previous": "2s"}
    return {"prod": {"web": web}}


def _role(root: Path, name: str) -> str | None:
    try:
        return str(json.loads((root / f"state-{name}" / "coordination.json").read_text())["role"])
    except (OSError, ValueError, KeyError):
        return None


def _running(endpoint: str, image: str) -> int:
    nodes = live_nodes(endpoint)
    return sum(1 for n in nodes if n.extra.get("image_id") == image and n.state == "running")


def _active_image(state_dir: Path) -> str | None:
    try:
        with sqlite3.connect(f"file:{state_dir / 'ledger.sqlite'}?mode=ro", uri=True) as db:
            row = db.execute("SELECT image FROM generations WHERE state = 'active'").fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def _counts(root: Path, endpoint: str, leader: str) -> dict[str, int]:
    nodes = live_nodes(endpoint)
    with sqlite3.connect(f"file:{root / f'state-{leader}' / 'ledger.sqlite'}?mode=ro",
                         uri=True) as db:  # fmt: skip
        recorded = {
            row[0]
            for row in db.execute(
                "SELECT id FROM instances WHERE state NOT IN ('destroyed', 'gone')"
            )
        }
    names = [n.extra.get("tags", {}).get("Name") for n in nodes]
    epochs = []
    for entry in fetch_stats(endpoint)["mutations"]:
        match = re.search(r"reconciler-epoch/(\d+)", entry["agent"])
        epochs.append(int(match.group(1)) if match else None)
    runs = [e for i, e in enumerate(epochs) if i == 0 or epochs[i - 1] != e]
    broken = 0
    for name in NAMES:
        path = root / f"state-{name}" / "ledger.sqlite"
        if path.exists():
            with sqlite3.connect(path) as db:
                broken += db.execute("PRAGMA integrity_check").fetchone()[0] != "ok"
    return {
        "leaked (alive, unknown to the leader's ledger)": len({n.id for n in nodes} - recorded),
        "duplicated slots (one Name alive twice)": len(names) - len(set(names)),
        "interleaved epochs in the request log": len(runs) - len(set(runs)),
        "mutations without an epoch": sum(1 for e in epochs if e is None),
        "ledgers failing integrity_check": broken,
    }


if __name__ == "__main__":
    sys.exit(main())
