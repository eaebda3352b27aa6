"""Build a ledger with a million instance rows and print how long the people-facing
queries take: `ledger cost --by service`, `ledger orphans` and one history page, in
process and as whole CLI commands (interpreter start, integrity check and output
included).

    .venv/bin/python benchmarks/ledger_scale.py [--instances 1000000] [--dir DIR]

Prints figures only; the test suite never asserts on timings.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from reconciler.ledger import Ledger
from reconciler.model import InstanceState, ObservedInstance
from reconciler.planning.orphans import DesiredService, observation_document
from reconciler.present.report import build_report

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
ENVS, SERVICES, PER_GENERATION = 5, 40, 25


def build(state_dir: Path, instances: int) -> None:
    with Ledger.open(state_dir) as ledger:
        ledger.record_observation(run=None, at=NOW, commit=None, documents={},
                                  billing={"cloud": ("per-second", 60.0)})  # fmt: skip
    conn = sqlite3.connect(state_dir / "ledger.sqlite", isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")  # bulk load only; the daemon keeps FULL
    rng = random.Random(7)
    generations = instances // PER_GENERATION
    per_service = max(generations // (ENVS * SERVICES), 1)
    start = NOW - timedelta(days=365)
    conn.execute("BEGIN")
    gen_rows, inst_rows = [], []
    n = 0
    for e in range(ENVS):
        for s in range(SERVICES):
            for g in range(1, per_service + 1):
                created = start + timedelta(seconds=(g - 1) * 365 * 86400 / per_service)
                last = g == per_service
                ended = None if last else created + timedelta(hours=rng.randint(2, 400))
                c, d = (
                    created.isoformat(timespec="microseconds"),
                    ended and ended.isoformat(timespec="microseconds"),
                )
                state = "active" if last else "destroyed"
                gen_rows.append((f"env{e}", f"svc{s}", g, "cloud", f"fp{g}", "ami", "t3.micro",
                                 PER_GENERATION, state, c, c, d, d))  # fmt: skip
                for slot in range(PER_GENERATION):
                    n += 1
                    inst_rows.append((f"i-{n:017x}", "cloud", f"env{e}", f"svc{s}", g, slot,
                                      "ami", "t3.micro", 0.0104, "running" if last else "destroyed",
                                      c, d, created.timestamp(),
                                      ended.timestamp() if ended else None))  # fmt: skip
    conn.executemany(
        "INSERT INTO generations (env, service, number, provider, fingerprint, image, size, "
        "count, state, created_at, activated_at, retired_at, destroyed_at) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        gen_rows,
    )
    conn.executemany(
        "INSERT INTO instances (id, provider, env, service, generation, slot, image, size, "
        "price_per_hour, state, created_at, destroyed_at, created_s, ended_s) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        inst_rows,
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    # The last pass's observation: every live instance, plus a few orphans.
    live = [
        ObservedInstance(id=r[0], provider="cloud", state=InstanceState.RUNNING, image="ami",
                         size="t3.micro", env=r[2], service=r[3], generation=r[4],
                         launched_at=datetime.fromisoformat(r[10]))
        for r in inst_rows if r[9] == "running"
    ]  # fmt: skip
    desired = [DesiredService(f"env{e}", f"svc{s}", "cloud", 1800)
               for e in range(ENVS) for s in range(SERVICES - 1)]  # fmt: skip
    with Ledger.open(state_dir) as ledger:
        ledger.record_observation(
            run=None, at=NOW, commit=None, billing={"cloud": ("per-second", 60.0)},
            documents={"cloud": observation_document(desired=desired, instances=live,
                                                     prices={"t3.micro": 0.0104})},
        )  # fmt: skip
    print(f"built {n:,} instance rows, {len(gen_rows):,} generations, {len(live):,} live")


def timed(label: str, fn: object) -> None:
    began = time.perf_counter()
    result = fn()  # type: ignore[operator]
    elapsed = time.perf_counter() - began
    size = len(result) if hasattr(result, "__len__") else result
    print(f"{label:<44} {elapsed * 1000:8.1f} ms  ({size} rows)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    from reconciler.accounting import find_orphans

    with tempfile.TemporaryDirectory() as scratch:
        state_dir = args.dir or Path(scratch) / "state"
        began = time.perf_counter()
        build(state_dir, args.instances)
        print(f"build took {time.perf_counter() - began:.1f} s")
        for check in ("full", "quick"):
            timed(f"open ({check} integrity check)", lambda c=check: Ledger.open(state_dir, check=c).close() or 0)  # type: ignore[func-returns-value]  # noqa: E501  # fmt: skip
        with Ledger.open(state_dir, check="quick") as ledger:
            timed("ledger cost --by service", lambda: ledger.cost_rows(by="service", now=NOW))
            timed("ledger cost --by env --since 30d", lambda: ledger.cost_rows(
                by="env", now=NOW, since=NOW - timedelta(days=30)))  # fmt: skip
            timed("ledger cost --by generation", lambda: ledger.cost_rows(by="generation", now=NOW))
            timed(
                "ledger orphans (stored observation)", lambda: find_orphans(ledger, now=NOW).orphans
            )
            timed(
                "ledger history --limit 20 (page 1)", lambda: ledger.history_rows(limit=20, now=NOW)
            )
            timed("ledger history --service svc1 --limit 20", lambda: ledger.history_rows(
                service="svc1", env="env1", limit=20, now=NOW))  # fmt: skip
            timed("ledger report (30 days)", lambda: build_report(ledger, now=NOW, days=30))
            timed("ledger cost --by day --since 30d", lambda: ledger.cost_rows(
                by="day", now=NOW, since=NOW - timedelta(days=30)))  # fmt: skip
            timed("ledger cost --by day (all)", lambda: ledger.cost_rows(by="day", now=NOW))
        print("whole commands (best of 3, each a fresh `python -m reconciler`):")
        for command in (
            ["--help"],
            ["ledger", "cost", "--by", "service"],
            ["ledger", "cost", "--by", "env", "--since", "30d"],
            ["ledger", "orphans"],
            ["ledger", "history", "--limit", "20"],
            ["ledger", "history", "--limit", "20", "--json"],
            ["ledger", "history", "--env", "env1", "--service", "svc1", "--limit", "20"],
        ):
            command_timed(state_dir, command)


def command_timed(state_dir: Path, command: list[str]) -> None:
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "reconciler", "--state-dir", str(state_dir), *command],
            check=True, capture_output=True,
        )  # fmt: skip
        best = min(best, time.perf_counter() - began)
    print(f"  reconciler {' '.join(command):<58} {best * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
