"""Traffic switched at will (`traffic: {..., switch: manual | after D}`), end to end through
the CLI on the sandbox: a new generation waits `ready` beside the serving one, kept
health-checked each pass, until `reconciler switch`, the delay, or `reconciler abort`; one
that turns unhealthy while it waits is failed and destroyed, never switched; a newer
commit replaces the one waiting."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.providers.sandbox import SandboxServer, fetch_stats
from tests.conftest import Cli
from tests.support.bluegreen_support import HealthServer
from tests.support.cloud import live_nodes, raw_driver
from tests.support.desired_builder import write_desired

IMAGES = [f"ami-5{n:07d}" for n in range(1, 9)]


@pytest.fixture
def health() -> Iterator[HealthServer]:
    server = HealthServer()
    yield server
    server.close()


class Service:
    """One blue/green service behind a traffic-switch command that logs every switch."""

    def __init__(self, root: Path, endpoint: str, health: HealthServer) -> None:
        self.root = root
        self.endpoint = endpoint
        self.health = health
        self.switch_log = root.parent / "switches.log"
        self.notified = root.parent / "notified.log"

    def write(self, image: str, *, switch: str | None = "manual", count: int = 2) -> None:
        traffic: dict[str, Any] = {"command": "scripts/switch.sh"}
        if switch is not None:
            traffic["switch"] = switch
        service = {
            "image": image,
            "count": count,
            "health": {"http": self.health.template(), "timeout": "3s", "interval": "1s"},
            "traffic": traffic,
        }
        write_desired(self.root, endpoint=self.endpoint, environments={"prod": {"web": service}})
        config = yaml.safe_load((self.root / "reconciler.yaml").read_text())
        config["notifiers"] = [{"command": str(self.root / "scripts" / "notify.sh")}]
        (self.root / "reconciler.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        scripts = self.root / "scripts"
        scripts.mkdir(exist_ok=True)
        for name, line in (
            ("switch.sh", f'echo "$OLD_GENERATION>$NEW_GENERATION [$NEW_INSTANCE_IDS]" >> '
                          f"{self.switch_log}"),
            ("notify.sh", f"{{ cat; echo; }} >> {self.notified}"),
        ):  # fmt: skip
            script = scripts / name
            script.write_text(f"#!/bin/sh\n{line}\n")
            script.chmod(script.stat().st_mode | stat.S_IXUSR)

    def switches(self) -> list[str]:
        return self.switch_log.read_text().splitlines() if self.switch_log.exists() else []

    def notifications(self, kind: str) -> list[str]:
        """The text of each notification of `kind` (the command gets it as JSON)."""
        lines = self.notified.read_text().splitlines() if self.notified.exists() else []
        sent = [json.loads(line) for line in lines if line.strip()]
        return [n["text"] for n in sent if n["kind"] == kind]


@pytest.fixture
def web(tmp_path: Path, sandbox: SandboxServer, health: HealthServer) -> Service:
    return Service(tmp_path / "desired", sandbox.endpoint, health)


def states(cli: Cli) -> dict[int, str]:
    rows = json.loads(cli("ledger", "generations", "--json").stdout)
    return {r["number"]: r["state"] for r in rows}


def apply(cli: Cli, web: Service) -> Any:
    result = cli("apply", "--desired", str(web.root), "--yes")
    return result


def running_ids(endpoint: str, image: str) -> set[str]:
    return {
        n.id for n in live_nodes(endpoint)
        if n.extra["image_id"] == image and n.state == "running"
    }  # fmt: skip


def launches(endpoint: str) -> int:
    return int(fetch_stats(endpoint)["calls"].get("RunInstances", 0))


def service_status(cli: Cli) -> dict[str, Any]:
    document = json.loads(cli("status", "--json").stdout)
    return next(s for s in document["services"] if s["service"] == "web")


def test_manual_switch_waits_ready_across_passes_then_switch_moves_traffic(
    cli: Cli, web: Service, sandbox: SandboxServer, health: HealthServer
) -> None:
    web.write(IMAGES[0])
    first = apply(cli, web)
    assert first.code == 0, first.stderr
    # The first generation has nothing to wait beside: it takes the traffic at once.
    assert states(cli) == {1: "active"}
    assert len(web.switches()) == 1

    web.write(IMAGES[1])
    second = apply(cli, web)
    assert second.code == 0, second.stderr
    assert states(cli) == {1: "active", 2: "ready"}
    assert len(web.switches()) == 1, "traffic moved without a switch"
    new_ids = running_ids(sandbox.endpoint, IMAGES[1])
    assert len(new_ids) == 2
    [ready_note] = web.notifications("generation-ready")
    assert "generation 2" in ready_note and "reconciler switch prod web" in ready_note

    # Several more passes: the waiting generation is checked each time, never switched,
    # nothing is launched, and plan has no change to make.
    before = launches(sandbox.endpoint)
    for _ in range(2):
        probes = len([p for p in health.probes if p.startswith(f"/{IMAGES[1]}/")])
        again = apply(cli, web)
        assert again.code == 0, again.stderr
        assert len([p for p in health.probes if p.startswith(f"/{IMAGES[1]}/")]) >= probes + 2
    assert launches(sandbox.endpoint) == before
    assert states(cli) == {1: "active", 2: "ready"}
    assert len(web.switches()) == 1
    plan = cli("plan", "--desired", str(web.root), "--detailed-exitcode")
    assert plan.code == 0, plan.stdout + plan.stderr
    assert "WAITING" in plan.stdout and "reconciler switch prod web" in plan.stdout
    planned = json.loads(cli("plan", "--desired", str(web.root), "--json").stdout)
    assert planned["changes"] is False
    assert [a["kind"] for a in planned["actions"]] == ["check"]
    [hold] = planned["held"]
    assert hold["reason"] == "waiting" and hold["since"]

    status = service_status(cli)
    assert status["state"] == "waiting"
    assert status["active"] == 1 and status["ready"] == 2 and status["ready_image"] == IMAGES[1]
    assert status["held"][0]["reason"] == "waiting" and status["held"][0]["since"]
    text = cli("status").stdout
    assert "WAITING" in text and "g2" in text

    switched = cli("switch", "prod", "web", "--desired", str(web.root))
    assert switched.code == 0, switched.stderr
    assert "generation 2" in switched.stdout
    assert states(cli) == {1: "standby", 2: "active"}
    assert web.switches()[-1].startswith("1>2 ")
    assert set(web.switches()[-1].split("[")[1].rstrip("]").split()) == new_ids
    events = json.loads(cli("ledger", "events", "--kind", "switched", "--json").stdout)
    assert [e["generation"] for e in events] == [2]
    assert service_status(cli)["state"] == "ok" and service_status(cli)["held"] == []

    # Nothing waits any more: switch and abort say so and change nothing.
    nothing = cli("switch", "prod", "web", "--desired", str(web.root))
    assert nothing.code == 1 and "no generation of prod/web is waiting" in nothing.stderr
    assert cli("abort", "prod", "web", "--desired", str(web.root)).code == 1
    assert states(cli) == {1: "standby", 2: "active"}


def test_abort_destroys_the_waiting_generation_and_holds_its_spec(
    cli: Cli, web: Service, sandbox: SandboxServer
) -> None:
    web.write(IMAGES[0])
    assert apply(cli, web).code == 0
    web.write(IMAGES[1])
    assert apply(cli, web).code == 0
    assert states(cli) == {1: "active", 2: "ready"}
    serving = running_ids(sandbox.endpoint, IMAGES[0])
    waiting = running_ids(sandbox.endpoint, IMAGES[1])

    aborted = cli("abort", "prod", "web", "--desired", str(web.root))
    assert aborted.code == 0, aborted.stderr
    assert "2 instance(s) destroyed" in aborted.stdout
    assert states(cli)[2] == "failed" and states(cli)[1] == "active"
    assert running_ids(sandbox.endpoint, IMAGES[1]) == set()
    assert running_ids(sandbox.endpoint, IMAGES[0]) == serving
    assert len(web.switches()) == 1
    assert web.notifications("generation-aborted")
    [event] = json.loads(cli("ledger", "events", "--kind", "aborted", "--json").stdout)
    assert event["generation"] == 2 and set(event["detail"]["destroyed"]) == waiting

    # The aborted spec is not launched again until the desired state changes.
    before = launches(sandbox.endpoint)
    again = apply(cli, web)
    assert again.code == 0, again.stderr
    assert launches(sandbox.endpoint) == before
    assert [h["reason"] for h in service_status(cli)["held"]] == ["failed"]
    assert "aborted" in service_status(cli)["held"][0]["why"]


def test_a_waiting_generation_that_turns_unhealthy_is_failed_and_destroyed_never_switched(
    cli: Cli, web: Service, sandbox: SandboxServer, health: HealthServer
) -> None:
    web.write(IMAGES[0])
    assert apply(cli, web).code == 0
    web.write(IMAGES[1])
    assert apply(cli, web).code == 0
    assert states(cli) == {1: "active", 2: "ready"}

    health.bad.add(IMAGES[1])
    failed = apply(cli, web)
    assert failed.code == 1
    assert states(cli)[2] == "failed" and states(cli)[1] == "active"
    assert running_ids(sandbox.endpoint, IMAGES[1]) == set()
    assert len(web.switches()) == 1, "an unhealthy generation was switched"
    assert web.notifications("generation-failed")
    # A switch asked for now has nothing to switch to.
    assert cli("switch", "prod", "web", "--desired", str(web.root)).code == 1
    assert len(web.switches()) == 1


def test_a_newer_commit_replaces_the_waiting_generation_and_a_delay_switches_by_itself(
    cli: Cli, web: Service, sandbox: SandboxServer
) -> None:
    web.write(IMAGES[0])
    assert apply(cli, web).code == 0
    web.write(IMAGES[1])
    assert apply(cli, web).code == 0
    assert states(cli) == {1: "active", 2: "ready"}

    web.write(IMAGES[2])
    assert apply(cli, web).code == 0
    assert states(cli) == {1: "active", 2: "destroyed", 3: "ready"}
    assert running_ids(sandbox.endpoint, IMAGES[1]) == set()
    assert len(web.switches()) == 1

    # `switch: after 1s`: the waiting generation takes the traffic on the first pass
    # after the delay, without a command.
    web.write(IMAGES[2], switch="after 1s")
    time.sleep(1.2)
    assert apply(cli, web).code == 0
    assert states(cli) == {1: "standby", 3: "active", 2: "destroyed"}
    assert web.switches()[-1].startswith("1>3 ")


def test_a_long_delay_waits_and_says_when_it_switches(
    cli: Cli, web: Service, sandbox: SandboxServer
) -> None:
    web.write(IMAGES[0], switch="after 2h")
    assert apply(cli, web).code == 0
    web.write(IMAGES[1], switch="after 2h")
    assert apply(cli, web).code == 0
    assert apply(cli, web).code == 0
    assert states(cli) == {1: "active", 2: "ready"}
    [hold] = service_status(cli)["held"]
    assert hold["reason"] == "waiting" and " or at " in hold["why"]

    # Removing `switch:` lets the waiting generation take the traffic on the next pass.
    web.write(IMAGES[1], switch=None)
    assert apply(cli, web).code == 0
    assert states(cli)[2] == "active"


def test_switch_with_another_strategy_is_refused_at_validation(
    cli: Cli, web: Service
) -> None:
    web.write(IMAGES[0])
    path = web.root / "environments" / "prod.yaml"
    document = yaml.safe_load(path.read_text())
    document["services"]["web"]["strategy"] = "rolling"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    result = cli("validate", "--desired", str(web.root))
    assert result.code == 1
    assert "services.web.traffic.switch" in result.stderr
    assert "needs strategy blue-green" in result.stderr
    document["services"]["web"]["strategy"] = "blue-green"
    document["services"]["web"]["traffic"]["switch"] = "later"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    result = cli("validate", "--desired", str(web.root))
    assert result.code == 1 and "manual, or after DURATION" in result.stderr
    document["services"]["web"]["traffic"]["switch"] = "after soon"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    result = cli("validate", "--desired", str(web.root))
    assert result.code == 1 and "invalid delay" in result.stderr


def test_a_rebuilt_ledger_never_takes_a_waiting_generation_for_the_serving_one(
    cli: Cli, web: Service, sandbox: SandboxServer
) -> None:
    """The tags cannot say whether the newer generation was ever switched to: a rebuild
    keeps the older one serving and the newer one `ready`, so the operator's switch
    decides, never the rebuild."""
    web.write(IMAGES[0])
    assert apply(cli, web).code == 0
    web.write(IMAGES[1])
    assert apply(cli, web).code == 0
    assert states(cli) == {1: "active", 2: "ready"}
    for suffix in ("", "-wal", "-shm"):
        (cli.state_dir / f"ledger.sqlite{suffix}").unlink(missing_ok=True)
    rebuilt = cli("ledger", "rebuild", "--desired", str(web.root), "--json")
    assert rebuilt.code == 0, rebuilt.stderr
    assert states(cli) == {1: "active", 2: "ready"}
    before = launches(sandbox.endpoint)
    again = apply(cli, web)
    assert again.code == 0, again.stderr
    assert states(cli) == {1: "active", 2: "ready"}
    assert launches(sandbox.endpoint) == before and len(web.switches()) == 1
    assert cli("switch", "prod", "web", "--desired", str(web.root)).code == 0
    assert states(cli) == {1: "standby", 2: "active"}


def test_switch_refuses_a_generation_short_of_count_or_no_longer_asked_for(
    cli: Cli, web: Service, sandbox: SandboxServer
) -> None:
    web.write(IMAGES[0])
    assert apply(cli, web).code == 0
    web.write(IMAGES[1])
    assert apply(cli, web).code == 0
    assert states(cli) == {1: "active", 2: "ready"}

    # One of its instances gone (out of band): not switched to less than count.
    raw = raw_driver(sandbox.endpoint)
    victim = next(n for n in raw.list_nodes() if n.id in running_ids(sandbox.endpoint, IMAGES[1]))
    raw.destroy_node(victim)
    short = cli("switch", "prod", "web", "--desired", str(web.root))
    assert short.code == 1 and "runs 1 of 2 instances" in short.stderr
    assert states(cli) == {1: "active", 2: "ready"} and len(web.switches()) == 1

    # The desired state moved on (not applied yet): the waiting spec is not switched to.
    web.write(IMAGES[2])
    stale = cli("switch", "prod", "web", "--desired", str(web.root))
    assert stale.code == 1 and "no longer asks for" in stale.stderr
    assert states(cli) == {1: "active", 2: "ready"} and len(web.switches()) == 1
