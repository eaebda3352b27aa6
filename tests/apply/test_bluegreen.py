"""Blue/green done right, end to end through the CLI: health gates against a loopback
health server whose answers the test controls, a traffic-switch command, webhook
notifications with signatures, failure and retry, revert to a standby, rollback/release."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.providers.sandbox import SandboxServer, fetch_stats
from tests.conftest import Cli
from tests.support.bluegreen_support import HealthServer, WebhookReceiver
from tests.support.cloud import live_nodes
from tests.support.desired_builder import IMAGE_V1, IMAGE_V2, write_desired

IMAGE_BAD = "ami-0badbad0"
SECRET = "webhook-signing-secret-4411"


@pytest.fixture
def health() -> Iterator[HealthServer]:
    server = HealthServer()
    yield server
    server.close()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver(SECRET)
    yield server
    server.close()


class Fleet:
    """A desired state with one blue/green service behind a traffic-switch command."""

    def __init__(
        self, root: Path, endpoint: str, health: HealthServer, webhook: WebhookReceiver
    ) -> None:
        self.root = root
        self.endpoint = endpoint
        self.health = health
        self.switch_log = root.parent / "switches.log"
        self.secret_file = root.parent / "hook_secret"
        self.secret_file.write_text(SECRET)
        self.webhook = webhook

    def write(self, image: str, *, count: int = 2) -> None:
        service = {
            "image": image,
            "count": count,
            "health": {
                "http": self.health.template(),
                "timeout": "3s",
                "interval": "1s",
                "healthy_after": 2,
            },
            "traffic": {"command": "scripts/switch.sh"},
        }
        write_desired(self.root, endpoint=self.endpoint, environments={"prod": {"web": service}})
        config = yaml.safe_load((self.root / "reconciler.yaml").read_text())
        config["notifiers"] = [
            {"webhook": self.webhook.url, "secret": {"file": str(self.secret_file)}}
        ]
        (self.root / "reconciler.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        script = self.root / "scripts" / "switch.sh"
        script.parent.mkdir(exist_ok=True)
        script.write_text(
            "#!/bin/sh\n"
            f'echo "$OLD_GENERATION>$NEW_GENERATION old=[$OLD_INSTANCE_IDS] '
            f'new=[$NEW_INSTANCE_IDS]" >> {self.switch_log}\n'
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR)

    def switches(self) -> list[str]:
        return self.switch_log.read_text().splitlines() if self.switch_log.exists() else []


@pytest.fixture
def fleet(
    tmp_path: Path,
    sandbox: SandboxServer,
    health: HealthServer,
    webhook: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> Fleet:
    # The host allows the webhook's signing secret to be read from there (hostpolicy).
    monkeypatch.setenv("RECONCILER_CREDENTIAL_DIRS", str(tmp_path))
    return Fleet(tmp_path / "desired", sandbox.endpoint, health, webhook)


def states(cli: Cli) -> dict[int, str]:
    rows = json.loads(cli("ledger", "generations", "--json").stdout)
    return {r["number"]: r["state"] for r in rows}


def generation_rows(cli: Cli) -> dict[int, dict[str, Any]]:
    rows = json.loads(cli("ledger", "generations", "--json").stdout)
    return {r["number"]: r for r in rows}


def transitions(cli: Cli, number: int) -> list[tuple[str | None, str]]:
    events = json.loads(cli("ledger", "events", "--kind", "generation_state", "--json").stdout)
    return [
        (e["detail"]["from"], e["detail"]["to"])
        for e in sorted(events, key=lambda e: e["id"])
        if e["generation"] == number
    ]


def run_instances(endpoint: str) -> int:
    return int(fetch_stats(endpoint)["calls"].get("RunInstances", 0))


def apply(cli: Cli, fleet: Fleet, *extra: str) -> Any:
    return cli("apply", "--desired", str(fleet.root), *extra)


def test_blue_green_lifecycle_with_health_failure_retry_revert_rollback_and_release(
    cli: Cli, fleet: Fleet, sandbox: SandboxServer, health: HealthServer, webhook: WebhookReceiver
) -> None:
    # v1, then v2: v2 active behind the switch, v1 kept as standby.
    fleet.write(IMAGE_V1)
    assert apply(cli, fleet).code == 0
    fleet.write(IMAGE_V2)
    result = apply(cli, fleet)
    assert result.code == 0, result.stderr
    assert states(cli) == {1: "standby", 2: "active"}
    first_rows = generation_rows(cli)
    assert [s.split(" ")[0] for s in fleet.switches()] == [">1", "1>2"]
    v2_ids = {n.id for n in live_nodes(sandbox.endpoint) if n.extra["image_id"] == IMAGE_V2}
    assert all(i in fleet.switches()[-1] for i in v2_ids)
    assert any(IMAGE_V2 in probe for probe in health.probes), "v2 was probed before activation"

    # v3 never becomes healthy: failed, no instances left, v2 active and its traffic untouched.
    health.bad.add(IMAGE_BAD)
    fleet.write(IMAGE_BAD)
    switches_before = fleet.switches()
    failed = apply(cli, fleet)
    assert failed.code == 1, failed.stdout + failed.stderr
    assert "not healthy" in failed.stderr
    assert states(cli) == {1: "standby", 2: "active", 3: "failed"}
    assert not [n for n in live_nodes(sandbox.endpoint) if n.extra["image_id"] == IMAGE_BAD]
    assert fleet.switches() == switches_before

    # A second apply does not try the failed spec again; `retry` allows it.
    launches = run_instances(sandbox.endpoint)
    again = apply(cli, fleet, "--json")
    assert again.code == 0
    assert json.loads(again.stdout)["actions"] == []
    assert run_instances(sandbox.endpoint) == launches
    assert cli("retry", "prod", "web").code == 0
    retried = apply(cli, fleet)
    assert retried.code == 1
    assert run_instances(sandbox.endpoint) == launches + 2
    assert states(cli)[4] == "failed"

    # Reverting the desired image to v1 re-activates the standby: no RunInstances at all.
    fleet.write(IMAGE_V1)
    launches = run_instances(sandbox.endpoint)
    reverted = apply(cli, fleet, "--json")
    assert reverted.code == 0, reverted.stderr
    assert [a["kind"] for a in json.loads(reverted.stdout)["actions"]] == ["activate"]
    assert run_instances(sandbox.endpoint) == launches
    # `retry` did not rewrite generation 3: it failed, and stays failed in the history.
    assert states(cli) == {1: "active", 2: "standby", 3: "failed", 4: "failed"}
    assert fleet.switches()[-1].startswith("2>1")

    # rollback: generation 2 serves again and the service is pinned until release.
    rolled = cli("rollback", "prod", "web", "--desired", str(fleet.root), "--yes")
    assert rolled.code == 0, rolled.stderr
    assert states(cli)[2] == "active"
    assert states(cli)[1] == "standby"
    assert fleet.switches()[-1].startswith("1>2")
    pinned = apply(cli, fleet, "--json")
    assert pinned.code == 0
    assert json.loads(pinned.stdout)["actions"] == []
    plan = cli("plan", "--desired", str(fleet.root), "--json")
    assert "pinned to generation 2" in json.loads(plan.stdout)["notes"][0]["message"]

    released = cli("release", "prod", "web", "--desired", str(fleet.root))
    assert released.code == 0, released.stderr
    back = apply(cli, fleet)
    assert back.code == 0
    assert states(cli)[1] == "active" and states(cli)[2] == "standby"

    # History is append-only: rollback, release and retry left the first stamps alone,
    # and every state change is an event row, in order.
    final_rows = generation_rows(cli)
    for number in (1, 2):
        for column in ("created_at", "activated_at", "retired_at"):
            if first_rows[number][column] is not None:
                assert final_rows[number][column] == first_rows[number][column], (number, column)
    assert transitions(cli, 1) == [
        (None, "creating"), ("creating", "active"), ("active", "standby"),
        ("standby", "active"), ("active", "standby"), ("standby", "active"),
    ]  # fmt: skip
    assert transitions(cli, 2) == [
        (None, "creating"), ("creating", "active"), ("active", "standby"),
        ("standby", "active"), ("active", "standby"),
    ]  # fmt: skip
    assert transitions(cli, 3) == [(None, "creating"), ("creating", "failed")]
    retries = json.loads(cli("ledger", "events", "--kind", "retried", "--json").stdout)
    assert [(e["generation"], e["detail"]["failure"][:6]) for e in retries] == [(3, "failed")]
    failed_cost = json.loads(cli("ledger", "cost", "--json").stdout)
    assert failed_cost, "the cost listing still has rows"

    # Every event reached the webhook once, signed.
    assert webhook.bad_signatures == 0
    kinds = [(e["kind"], e["generation"]) for e in webhook.events]
    assert kinds.count(("generation-failed", 3)) == 1
    assert kinds.count(("generation-failed", 4)) == 1
    assert kinds.count(("rollback", 2)) == 1
    assert kinds.count(("generation-activated", 2)) == 1
    assert [k for k in kinds if k[0] == "generation-activated"] == [
        ("generation-activated", 1),
        ("generation-activated", 2),
        ("generation-activated", 1),
        ("generation-activated", 1),
    ]
    assert all(e["text"] for e in webhook.events), "Slack-compatible text field"
    assert SECRET not in json.dumps(webhook.events)


def test_replacement_inside_the_active_generation_must_pass_the_gate(
    cli: Cli, fleet: Fleet, sandbox: SandboxServer, health: HealthServer
) -> None:
    fleet.write(IMAGE_V1)
    assert apply(cli, fleet).code == 0
    nodes = live_nodes(sandbox.endpoint)
    from tests.support.cloud import raw_driver

    raw_driver(sandbox.endpoint).destroy_node(nodes[0])
    health.bad.add(IMAGE_V1)  # whatever replaces it will fail its probes
    failed = apply(cli, fleet)
    assert failed.code == 1
    assert len(live_nodes(sandbox.endpoint)) == 1, "the unhealthy replacement was removed"
    assert states(cli) == {1: "active"}

    health.bad.clear()
    healed = apply(cli, fleet, "--json")
    assert healed.code == 0, healed.stderr
    # The slot was emptied out of band ("missing"); once the failed pass has recorded the
    # original as gone, the refill counts as a plain deficit of the active generation.
    assert [(a["kind"], a["generation"]) for a in json.loads(healed.stdout)["actions"]] == [
        ("create", 1)
    ]
    assert len(live_nodes(sandbox.endpoint)) == 2
    assert fleet.switches()[-1].startswith(">1 old=[] new=[")


def test_plugin_discovery_lists_installed_and_broken_plugins(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "extra_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "extra_plugin-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: extra-plugin\nVersion: 1.0\n"
    )
    (site / "extra_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[reconciler.health]\nalways-ok = extra_plugin:AlwaysOk\n"
        "[reconciler.notifiers]\nbroken = extra_plugin_missing:Nope\n"
    )
    (site / "extra_plugin.py").write_text(
        "from reconciler.extensions.api import ProbeResult\n"
        "class AlwaysOk:\n"
        "    def __init__(self, target, *, timeout):\n"
        "        self.target = target\n"
        "    def probe(self, instance):\n"
        "        return ProbeResult(True, 'always')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "plugins", "--json"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(done.stdout)}
    assert rows[("health", "always-ok")]["status"] == "ok"
    assert rows[("health", "http")]["source"] == "reconciler_plugins.health:HttpCheck"
    assert rows[("notifiers", "broken")]["status"].startswith("failed: ModuleNotFoundError")
    assert "plugin broken (notifiers) failed" in done.stderr


def test_load_balancer_members_follow_the_active_generation(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer, health: HealthServer
) -> None:
    from libcloud.loadbalancer.base import Algorithm

    from reconciler.providers.ec2.elb import ElbBalancers, _EndpointElbDriver
    from reconciler.providers.sandbox import SANDBOX_KEY, SANDBOX_SECRET

    # Operators own the load balancer; the test creates it the way they would.
    _EndpointElbDriver(SANDBOX_KEY, SANDBOX_SECRET, "us-east-1", sandbox.endpoint).create_balancer(
        "web-lb", 80, "http", Algorithm.ROUND_ROBIN, []
    )
    balancers = ElbBalancers(
        key=SANDBOX_KEY, secret=SANDBOX_SECRET, region="us-east-1", endpoint=sandbox.endpoint
    )
    root = tmp_path / "desired"

    def write(image: str) -> None:
        service = {
            "image": image,
            "count": 2,
            "health": {"http": health.template(), "timeout": "3s", "interval": "1s"},
            "traffic": {"libcloud-lb": "web-lb"},
        }
        write_desired(root, endpoint=sandbox.endpoint, environments={"prod": {"web": service}})

    def generation_ids(image: str) -> set[str]:
        return {n.id for n in live_nodes(sandbox.endpoint) if n.extra["image_id"] == image}

    write(IMAGE_V1)
    assert cli("apply", "--desired", str(root)).code == 0
    assert balancers.members("web-lb") == generation_ids(IMAGE_V1)

    write(IMAGE_V2)
    assert cli("apply", "--desired", str(root)).code == 0
    assert balancers.members("web-lb") == generation_ids(IMAGE_V2)
    assert len(generation_ids(IMAGE_V1)) == 2, "the standby still runs, out of the balancer"

    health.bad.add(IMAGE_BAD)
    write(IMAGE_BAD)
    assert cli("apply", "--desired", str(root)).code == 1
    assert balancers.members("web-lb") == generation_ids(IMAGE_V2), "traffic untouched"

    write(IMAGE_V1)
    assert cli("apply", "--desired", str(root)).code == 0
    assert balancers.members("web-lb") == generation_ids(IMAGE_V1), "revert switched back"


def _serving_watcher(endpoint: str, balancer: str) -> tuple[list[int], Any]:
    """Samples, until stopped, how many balancer members are running instances."""
    import threading

    from reconciler.providers.ec2.elb import ElbBalancers
    from reconciler.providers.sandbox import SANDBOX_KEY, SANDBOX_SECRET

    balancers = ElbBalancers(
        key=SANDBOX_KEY, secret=SANDBOX_SECRET, region="us-east-1", endpoint=endpoint
    )
    samples: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            running = {n.id for n in live_nodes(endpoint) if n.state == "running"}
            samples.append(len(balancers.members(balancer) & running))
            stop.wait(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()

    def finish() -> None:
        stop.set()
        thread.join(timeout=10)

    return samples, finish


def _rolling_fleet(root: Path, endpoint: str, health: HealthServer, image: str) -> None:
    service = {
        "image": image,
        "count": 6,
        "strategy": "rolling",
        "batch": 2,
        "user_data": "userdata/boot.sh",
        "health": {"http": health.template(), "timeout": "3s", "interval": "1s"},
        "traffic": {"libcloud-lb": "fleet-lb"},
    }
    write_desired(root, endpoint=endpoint, environments={"prod": {"fleet": service}})


@pytest.fixture
def fleet_lb(sandbox: SandboxServer) -> None:
    from libcloud.loadbalancer.base import Algorithm

    from reconciler.providers.ec2.elb import _EndpointElbDriver
    from reconciler.providers.sandbox import SANDBOX_KEY, SANDBOX_SECRET

    _EndpointElbDriver(SANDBOX_KEY, SANDBOX_SECRET, "us-east-1", sandbox.endpoint).create_balancer(
        "fleet-lb", 80, "http", Algorithm.ROUND_ROBIN, []
    )


def test_rolling_batches_keep_capacity_and_finish_on_the_new_generation(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer, health: HealthServer, fleet_lb: None
) -> None:
    root = tmp_path / "desired"
    _rolling_fleet(root, sandbox.endpoint, health, IMAGE_V1)
    assert cli("apply", "--desired", str(root)).code == 0
    _rolling_fleet(root, sandbox.endpoint, health, IMAGE_V2)
    plan = json.loads(cli("plan", "--desired", str(root), "--json").stdout)
    kinds = [a["kind"][0] for a in plan["actions"]]
    assert "".join(kinds) == "ccddccddccddar", "three batches of two, then activate and retire"

    samples, finish = _serving_watcher(sandbox.endpoint, "fleet-lb")
    try:
        result = cli("apply", "--desired", str(root))
    finally:
        finish()
    assert result.code == 0, result.stderr
    # Enough samples to have seen each batch swap; the apply is fast (parallel launches).
    assert len(samples) >= 3
    assert min(samples) >= 4, samples
    nodes = live_nodes(sandbox.endpoint)
    assert sorted(n.extra["image_id"] for n in nodes) == [IMAGE_V2] * 6
    rows = json.loads(cli("ledger", "generations", "--json").stdout)
    assert {r["number"]: r["state"] for r in rows} == {1: "destroyed", 2: "active"}


def test_rolling_failure_rolls_the_finished_batches_back(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer, health: HealthServer, fleet_lb: None
) -> None:
    from reconciler.providers.ec2.elb import ElbBalancers
    from reconciler.providers.sandbox import SANDBOX_KEY, SANDBOX_SECRET

    root = tmp_path / "desired"
    _rolling_fleet(root, sandbox.endpoint, health, IMAGE_V1)
    assert cli("apply", "--desired", str(root)).code == 0
    health.quota[IMAGE_V2] = 2  # the first batch passes, the second never does
    _rolling_fleet(root, sandbox.endpoint, health, IMAGE_V2)
    samples, finish = _serving_watcher(sandbox.endpoint, "fleet-lb")
    try:
        result = cli("apply", "--desired", str(root))
    finally:
        finish()
    assert result.code == 1
    assert min(samples) >= 4, samples
    nodes = live_nodes(sandbox.endpoint)
    assert sorted(n.extra["image_id"] for n in nodes) == [IMAGE_V1] * 6, "rolled back"
    assert sorted(n.extra["tags"]["Name"] for n in nodes) == [
        f"prod-fleet-g1-{n}" for n in range(1, 7)
    ]
    from reconciler.providers.ec2.adapter import Ec2Provider

    adapter = Ec2Provider(
        "cloud", key=SANDBOX_KEY, secret=SANDBOX_SECRET, region="us-east-1",
        endpoint=sandbox.endpoint,
    )  # fmt: skip
    # Relaunched old instances boot with the old instances' own user data.
    assert {adapter.user_data_of(n.id) for n in nodes} == {"#!/bin/sh\necho booted\n"}
    balancers = ElbBalancers(
        key=SANDBOX_KEY, secret=SANDBOX_SECRET, region="us-east-1", endpoint=sandbox.endpoint
    )
    assert balancers.members("fleet-lb") == {n.id for n in nodes}
    rows = json.loads(cli("ledger", "generations", "--json").stdout)
    assert {r["number"]: r["state"] for r in rows} == {1: "active", 2: "failed"}
    again = cli("apply", "--desired", str(root), "--json")
    assert again.code == 0 and json.loads(again.stdout)["actions"] == []
