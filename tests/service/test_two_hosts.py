"""Two daemons, one etcd, one sandbox, one desired-state repository (issue 16).

Everything is real: etcd (Debian's etcd-server) on loopback ports, the daemons as
processes, the sandbox's EC2 API, git. Who acted is read from the cloud itself: every
instance a leader launches carries its epoch (`reconciler:epoch`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.ledger import Ledger
from reconciler.providers.sandbox import SandboxServer, fetch_stats
from tests.conftest import Cli, mutating_calls
from tests.support.bluegreen_support import WebhookReceiver
from tests.support.cloud import free_port, live_nodes
from tests.support.daemon_support import DaemonProcess, Remote, wait_for
from tests.support.desired_builder import IMAGE_V1, IMAGE_V2
from tests.support.etcd import EtcdServer, etcd_available
from tests.support.faultproxy import FaultProxy

pytestmark = pytest.mark.skipif(
    not etcd_available() and not os.environ.get("CI"),
    reason="etcd is not installed (.ci/run installs etcd-server)",
)

TTL = 3
HOOK_SECRET = "two-hosts-hook-secret-8812"
WEB_V1 = {"prod": {"web": {"image": IMAGE_V1, "count": 2}}}
WEB_V2 = {"prod": {"web": {"image": IMAGE_V2, "count": 2}}}


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path / "etcd").start()
    yield server
    server.stop()


@pytest.fixture
def remote(tmp_path: Path, sandbox: SandboxServer) -> Remote:
    return Remote(tmp_path, sandbox.endpoint)


@pytest.fixture
def members(tmp_path: Path) -> Iterator[dict[str, DaemonProcess]]:
    started: dict[str, DaemonProcess] = {}
    yield started
    for process in started.values():
        if process.process.poll() is None:
            with_signal(process, signal.SIGCONT)
        process.stop()


def with_signal(process: DaemonProcess, signum: int) -> None:
    if process.process.poll() is None:
        process.signal(signum)


def start_member(
    members: dict[str, DaemonProcess], tmp_path: Path, remote: Remote, etcd: EtcdServer,
    name: str, *extra: str, url: str | None = None,
) -> DaemonProcess:  # fmt: skip
    process = DaemonProcess(
        state_dir=tmp_path / f"state-{name}",
        repo=str(remote.bare),
        log_path=tmp_path / f"{name}.log",
        interval="1s",
        env={"HOOK_SECRET": HOOK_SECRET},
        extra=(
            "--coordination",
            url or etcd.url,
            "--lease-ttl",
            f"{TTL}s",
            "--member",
            name,
            *extra,
        ),
    )
    members[name] = process
    return process


def coordination(tmp_path: Path, name: str) -> dict[str, Any]:
    try:
        loaded = json.loads((tmp_path / f"state-{name}" / "coordination.json").read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def leader_of(tmp_path: Path, names: tuple[str, ...]) -> str | None:
    leading = [n for n in names if coordination(tmp_path, n).get("role") == "leader"]
    return leading[0] if len(leading) == 1 else None


def epochs_in_cloud(endpoint: str) -> dict[str, str]:
    """instance id -> the epoch tag it was launched with (live instances)."""
    nodes = live_nodes(endpoint)
    return {n.id: str(n.extra.get("tags", {}).get("reconciler:epoch")) for n in nodes}


def running_with_image(endpoint: str, image: str) -> int:
    return sum(1 for n in live_nodes(endpoint) if n.extra.get("image_id") == image
               and n.state == "running")  # fmt: skip


def test_two_members_one_acts_and_status_says_who_leads(
    tmp_path: Path, sandbox: SandboxServer, etcd: EtcdServer, remote: Remote,
    members: dict[str, DaemonProcess],
) -> None:  # fmt: skip
    webhook = WebhookReceiver(HOOK_SECRET)
    hook = [
        {"webhook": webhook.url, "secret": {"env": "HOOK_SECRET"}, "events": ["leader-changed"]}
    ]
    remote.push(WEB_V1, "web v1", notifiers=hook)
    ports = {"alpha": free_port(), "beta": free_port()}
    for name in ("alpha", "beta"):
        start_member(members, tmp_path, remote, etcd, name,
                     "--metrics-addr", f"127.0.0.1:{ports[name]}")  # fmt: skip
    leader = wait_for(lambda: leader_of(tmp_path, ("alpha", "beta")), what="a leader")
    follower = "beta" if leader == "alpha" else "alpha"
    wait_for(lambda: len(live_nodes(sandbox.endpoint)) == 2, what="two instances")
    holder = etcd.leader_key("acme")
    assert holder is not None and holder[0] == leader
    epoch = holder[1]
    # Several passes with both members running: nothing more is changed by anyone.
    settled = mutating_calls(sandbox.endpoint)
    time.sleep(2 * TTL)  # several passes (interval 1s)
    assert mutating_calls(sandbox.endpoint) == settled
    assert set(epochs_in_cloud(sandbox.endpoint).values()) == {str(epoch)}
    assert {m["epoch"] for m in mutation_log(sandbox.endpoint)} == {epoch}
    # The follower never acted: no ledger of its own, a status that names the leader.
    assert not (tmp_path / f"state-{follower}" / "ledger.sqlite").exists()
    for name, role in ((leader, "leader"), (follower, "follower")):
        status = Cli(state_dir=tmp_path / f"state-{name}", cwd=tmp_path)("status", "--json")
        seen = json.loads(status.stdout)
        assert (seen["role"], seen["member"], seen["epoch"]) == (role, name, epoch)
        assert seen["coordination"]["leader"] == leader
        assert (seen["lease_expires_at"] is not None) == (role == "leader")
        assert seen["replica_lag_seconds"] is None  # no --ledger-replica here
        metrics = httpx.get(f"http://127.0.0.1:{ports[name]}/metrics", timeout=10).text
        assert f'reconciler_leader{{member="{name}"}} {1.0 if role == "leader" else 0.0}' in metrics
        assert f"reconciler_leader_epoch {float(epoch)}" in metrics
    assert coordination(tmp_path, leader)["lease_expires_at"]
    with Ledger.open(tmp_path / f"state-{leader}") as ledger:
        changed = ledger.event_rows(kind="leader_changed")
    assert [e["detail"]["member"] for e in changed] == [leader]
    assert operation_epochs(tmp_path / f"state-{leader}") == {epoch}
    wait_for(lambda: webhook.events, what="the leader-changed notification")
    assert [(e["kind"], e["detail"]["member"]) for e in webhook.events] == [
        ("leader-changed", leader)
    ]
    webhook.close()


def test_a_paused_leader_wakes_fenced_and_steps_down(
    tmp_path: Path, sandbox: SandboxServer, etcd: EtcdServer, remote: Remote,
    members: dict[str, DaemonProcess],
) -> None:  # fmt: skip
    remote.push(WEB_V1, "web v1")
    alpha = start_member(members, tmp_path, remote, etcd, "alpha")
    wait_for(lambda: leader_of(tmp_path, ("alpha",)) == "alpha", what="alpha leads")
    wait_for(lambda: running_with_image(sandbox.endpoint, IMAGE_V1) == 2, what="v1 running")
    start_member(members, tmp_path, remote, etcd, "beta")
    first = etcd.leader_key("acme")
    assert first is not None and first[0] == "alpha"

    alpha.signal(signal.SIGSTOP)
    wait_for(lambda: (etcd.leader_key("acme") or ("", 0))[0] == "beta", timeout=TTL * 10,
             what="beta takes the key")  # fmt: skip
    second = etcd.leader_key("acme")
    assert second is not None and second[1] > first[1]
    remote.push(WEB_V2, "web v2")
    wait_for(lambda: running_with_image(sandbox.endpoint, IMAGE_V2) == 2, what="beta rolls out")

    # Alpha wakes in the middle of its own pass (its interval is 1s): it must not send
    # one more mutation, and must not write its ledger again.
    woke_at = time.time()
    alpha.signal(signal.SIGCONT)
    wait_for(lambda: "leader_stepped_down" in alpha.log(), what="alpha steps down")
    remote.push({"prod": {"web": {"image": IMAGE_V2, "count": 3}}}, "web x3")  # more work
    wait_for(lambda: running_with_image(sandbox.endpoint, IMAGE_V2) == 3, what="beta again")
    time.sleep(TTL)
    log = mutation_log(sandbox.endpoint)
    assert {m["epoch"] for m in log if m["at"] >= woke_at} == {second[1]}
    assert not [m for m in log if m["epoch"] is None], "a mutation without an epoch"
    assert_one_epoch_at_a_time(log)
    with Ledger.open(tmp_path / "state-alpha", check="none") as ledger:
        rows = ledger.run_rows()
    assert rows and all(_ts(r["started_at"]) < woke_at for r in rows)
    assert coordination(tmp_path, "alpha")["role"] == "follower"
    assert etcd.leader_key("acme") == second


def mutation_log(endpoint: str) -> list[dict[str, Any]]:
    """The sandbox's mutating requests, each with the epoch its User-Agent named."""
    found = []
    for entry in fetch_stats(endpoint)["mutations"]:
        match = re.search(r"reconciler-epoch/(\d+)", entry["agent"])
        found.append({**entry, "epoch": int(match.group(1)) if match else None})
    return found


def assert_one_epoch_at_a_time(log: list[dict[str, Any]]) -> None:
    """Epochs follow each other and never interleave: two members never acted at once."""
    order = [m["epoch"] for m in log]
    runs = [e for i, e in enumerate(order) if i == 0 or order[i - 1] != e]
    assert len(runs) == len(set(runs)), f"epochs interleaved: {runs}"
    assert runs == sorted(runs), f"an older epoch acted after a newer one: {runs}"


def operation_epochs(state_dir: Path) -> set[int | None]:
    """The epochs stamped on the intent log's rows (read-only, with sqlite3 itself)."""
    with sqlite3.connect(f"file:{state_dir / 'ledger.sqlite'}?mode=ro", uri=True) as db:
        return {epoch for (epoch,) in db.execute("SELECT DISTINCT epoch FROM operations")}


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def test_etcd_gone_stops_the_leader_and_back_one_resumes(
    tmp_path: Path, sandbox: SandboxServer, etcd: EtcdServer, remote: Remote,
    members: dict[str, DaemonProcess],
) -> None:  # fmt: skip
    remote.push(WEB_V1, "web v1")
    start_member(members, tmp_path, remote, etcd, "alpha")
    start_member(members, tmp_path, remote, etcd, "beta")
    leader = wait_for(lambda: leader_of(tmp_path, ("alpha", "beta")), what="a leader")
    wait_for(lambda: running_with_image(sandbox.endpoint, IMAGE_V1) == 2, what="v1 running")

    etcd.stop()
    gone_at = time.time()
    wait_for(lambda: leader_of(tmp_path, ("alpha", "beta")) is None
             and coordination(tmp_path, leader)["role"] == "follower",
             timeout=TTL * 5, what="the leader stops leading")  # fmt: skip
    stopped_at = time.time()
    assert stopped_at - gone_at < TTL + 2  # a bound from the lease, generous for CI
    # Work arrives while nobody can lead: nobody acts on it.
    remote.push(WEB_V2, "web v2")
    time.sleep(TTL)
    assert not [m for m in mutation_log(sandbox.endpoint) if m["at"] > stopped_at]

    etcd.start()
    new_leader = wait_for(lambda: leader_of(tmp_path, ("alpha", "beta")), timeout=TTL * 10,
                          what="one leader again")  # fmt: skip
    wait_for(lambda: running_with_image(sandbox.endpoint, IMAGE_V2) == 2, what="v2 rolled out")
    holder = etcd.leader_key("acme")
    assert holder is not None and holder[0] == new_leader
    assert {m["epoch"] for m in mutation_log(sandbox.endpoint) if m["at"] > stopped_at} == {
        holder[1]
    }
    assert_one_epoch_at_a_time(mutation_log(sandbox.endpoint))


def test_sigkill_of_the_leader_mid_rollout_the_other_restores_and_finishes(
    tmp_path: Path, sandbox: SandboxServer, etcd: EtcdServer, remote: Remote,
    members: dict[str, DaemonProcess],
) -> None:  # fmt: skip
    replica = f"file://{tmp_path / 'replica'}"
    remote.push(WEB_V1, "web v1")
    alpha = start_member(members, tmp_path, remote, etcd, "alpha", "--ledger-replica", replica)
    wait_for(lambda: leader_of(tmp_path, ("alpha",)) == "alpha", what="alpha leads")
    wait_for(lambda: running_with_image(sandbox.endpoint, IMAGE_V1) == 2, what="v1 running")
    time.sleep(2)  # Litestream ships the first generation (it syncs every second)
    start_member(members, tmp_path, remote, etcd, "beta", "--ledger-replica", replica)
    first = etcd.leader_key("acme")
    assert first is not None

    # A slow health gate keeps the rollout open long enough to kill it half-way.
    slow = {"command": "sleep 1", "interval": "1s", "healthy_after": 3}
    remote.push({"prod": {"web": {"image": IMAGE_V2, "count": 2, "health": slow}}}, "web v2")
    wait_for(lambda: running_with_image(sandbox.endpoint, IMAGE_V2) >= 1, what="v2 launching")
    assert replicators(tmp_path / "state-alpha"), "alpha streams its ledger while leading"
    alpha.process.kill()
    alpha.wait()
    killed_at = time.time()
    # Its Litestream dies with it: a dead leader's replicator must not go on writing.
    wait_for(lambda: not replicators(tmp_path / "state-alpha"), timeout=10,
             what="alpha's replicator gone")  # fmt: skip

    wait_for(lambda: leader_of(tmp_path, ("beta",)) == "beta", timeout=TTL * 5,
             what="beta leads")  # fmt: skip
    led_at = time.time()
    assert led_at - killed_at < TTL + 1 + 5  # TTL + one interval, with room for a slow CI
    wait_for(lambda: generation_states(tmp_path / "state-beta").get("active") is not None
             and running_with_image(sandbox.endpoint, IMAGE_V2) == 2
             and _active_image(tmp_path / "state-beta") == IMAGE_V2,
             timeout=120, what="the rollout finished by beta")  # fmt: skip
    time.sleep(TTL)

    # No instance leaked or doubled: the cloud holds exactly what beta's ledger says is
    # alive, two of v2 (active) and two of v1 (standby).
    live = {n.id for n in live_nodes(sandbox.endpoint)}
    with Ledger.open(tmp_path / "state-beta", check="none") as ledger:
        recorded = {row["id"] for row in ledger.instance_rows(live_only=True)}
        generations = ledger.generation_rows(env="prod", service="web")
        restored = ledger.event_rows(kind="ledger_restored")
    assert live == recorded
    assert running_with_image(sandbox.endpoint, IMAGE_V1) == 2
    assert running_with_image(sandbox.endpoint, IMAGE_V2) == 2
    # History made before the failover came with the ledger.
    assert any(g["number"] == 1 and g["image"] == IMAGE_V1 for g in generations)
    assert restored and restored[-1]["detail"]["restored"] is True
    status = json.loads(
        Cli(state_dir=tmp_path / "state-beta", cwd=tmp_path)("status", "--json").stdout
    )
    assert status["role"] == "leader" and isinstance(status["replica_lag_seconds"], float)
    assert_one_epoch_at_a_time(mutation_log(sandbox.endpoint))


def replicators(state_dir: Path) -> list[int]:
    """Pids of `litestream replicate` processes streaming `state_dir`'s ledger."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [a.decode(errors="replace") for a in argv]
        if "replicate" in text and str(state_dir / "ledger.sqlite") in text:
            found.append(int(proc.name))
    return found


def generation_states(state_dir: Path) -> dict[str, int]:
    """state -> generation number (the newest in that state), read from the ledger."""
    if not (state_dir / "ledger.sqlite").exists():
        return {}
    with sqlite3.connect(f"file:{state_dir / 'ledger.sqlite'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT state, number FROM generations ORDER BY number").fetchall()
    return {state: number for state, number in rows}


def _active_image(state_dir: Path) -> str | None:
    with sqlite3.connect(f"file:{state_dir / 'ledger.sqlite'}?mode=ro", uri=True) as db:
        row = db.execute("SELECT image FROM generations WHERE state = 'active'").fetchone()
    return str(row[0]) if row else None


@pytest.mark.parametrize("fault", ["delay", "cut", "blackhole"])
def test_a_faulty_link_to_etcd_never_lets_two_members_act(
    tmp_path: Path, sandbox: SandboxServer, etcd: EtcdServer, remote: Remote,
    members: dict[str, DaemonProcess], fault: str,
) -> None:  # fmt: skip
    """Each member reaches etcd through its own proxy; alpha's link goes bad while work
    arrives. Alpha must stop before its lease could have passed to beta, and the
    sandbox's request log (each mutation names its epoch) must show one epoch at a time."""
    proxies = {name: FaultProxy(etcd.client_port) for name in ("alpha", "beta")}
    try:
        remote.push(WEB_V1, "web v1")
        start_member(members, tmp_path, remote, etcd, "alpha", url=proxies["alpha"].url)
        wait_for(lambda: leader_of(tmp_path, ("alpha",)) == "alpha", what="alpha leads")
        wait_for(lambda: running_with_image(sandbox.endpoint, IMAGE_V1) == 2, what="v1")
        start_member(members, tmp_path, remote, etcd, "beta", url=proxies["beta"].url)
        first = etcd.leader_key("acme")
        assert first is not None and first[0] == "alpha"

        proxies["alpha"].set(fault, delay=TTL * 2.0)
        remote.push(WEB_V2, "web v2")
        wait_for(lambda: (etcd.leader_key("acme") or ("", 0))[0] == "beta", timeout=TTL * 10,
                 what="beta takes the key")  # fmt: skip
        wait_for(lambda: running_with_image(sandbox.endpoint, IMAGE_V2) == 2, what="v2 by beta")
        wait_for(lambda: coordination(tmp_path, "alpha").get("role") == "follower",
                 what="alpha knows it follows")  # fmt: skip
        proxies["alpha"].set("pass")
        remote.push({"prod": {"web": {"image": IMAGE_V2, "count": 3}}}, "web x3")
        wait_for(lambda: running_with_image(sandbox.endpoint, IMAGE_V2) == 3, what="x3")
        time.sleep(TTL)
        log = mutation_log(sandbox.endpoint)
        assert_one_epoch_at_a_time(log)
        second = etcd.leader_key("acme")
        assert second is not None and second[0] == "beta"
        assert {m["epoch"] for m in log} <= {first[1], second[1]}
        assert coordination(tmp_path, "alpha")["role"] == "follower"
    finally:
        for proxy in proxies.values():
            proxy.close()
