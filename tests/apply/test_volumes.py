"""Stateful singletons end to end on the sandbox: a service's data volume created once,
handed from one generation to the next (the old instance stopped first, kept stopped as
the standby, then gone), given back when the new generation fails its health gate,
refused combinations, and a SIGKILL at each step of the hand-over. What the sandbox
holds is read with an independent libcloud client, never through our adapter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.ledger import Ledger
from reconciler.providers.sandbox import SandboxServer, clear_faults, fetch_stats, set_faults
from tests.conftest import Cli
from tests.support.bluegreen_support import HealthServer
from tests.support.cloud import raw_driver
from tests.support.desired_builder import write_desired

V1, V2, V3 = "ami-81000001", "ami-82000002", "ami-83000003"


@pytest.fixture
def health() -> Iterator[HealthServer]:
    server = HealthServer()
    yield server
    server.close()


class Db:
    def __init__(self, root: Path, endpoint: str, health: HealthServer) -> None:
        self.root = root
        self.endpoint = endpoint
        self.health = health

    def write(self, image: str, *, keep: str = "30m", **volume: Any) -> None:
        service = {
            "image": image,
            "keep_previous": keep,
            "health": {"http": self.health.template(), "timeout": "2s", "interval": "1s"},
            "volume": {"size": 8, "device": "/dev/sdf", **volume},
        }
        write_desired(self.root, endpoint=self.endpoint, environments={"prod": {"db": service}})

    def cloud(self) -> dict[str, Any]:
        """What the sandbox holds: our volumes, and the db's instances by state."""
        driver = raw_driver(self.endpoint)
        volumes = [v for v in driver.list_volumes()
                   if (v.extra.get("tags") or {}).get("reconciler:service") == "db"]  # fmt: skip
        nodes = [n for n in driver.list_nodes()
                 if (n.extra.get("tags") or {}).get("reconciler:service") == "db"]  # fmt: skip
        return {
            "volumes": volumes,
            "nodes": {n.id: n for n in nodes},
            "running": {n.id for n in nodes if n.state == "running"},
            "stopped": {n.id for n in nodes if n.state == "stopped"},
            "snapshots": [s for s in driver.list_snapshots()
                          if (s.extra.get("tags") or {}).get("reconciler:service") == "db"],
        }

    def invariant(self) -> str:
        """The volume is attached to exactly one instance, which is running, and no
        other db instance runs; returns the volume id."""
        seen = self.cloud()
        [volume] = seen["volumes"]
        holder = volume.extra.get("instance_id")
        assert holder in seen["running"], (holder, seen["running"], seen["stopped"])
        assert seen["running"] == {holder}, seen["running"]
        return str(volume.id)


@pytest.fixture
def db(tmp_path: Path, sandbox: SandboxServer, health: HealthServer) -> Db:
    return Db(tmp_path / "desired", sandbox.endpoint, health)


def apply(cli: Cli, db: Db) -> Any:
    return cli("apply", "--desired", str(db.root), "--yes")


def states(cli: Cli) -> dict[int, str]:
    rows = json.loads(cli("ledger", "generations", "--json").stdout)
    return {r["number"]: r["state"] for r in rows}


def instance_of(cli: Cli, generation: int) -> str:
    with Ledger.open(cli.state_dir) as ledger:
        [row] = ledger.instance_rows(env="prod", service="db", generation=generation)
    return str(row["id"])


def test_the_volume_is_handed_to_each_new_generation_and_given_back_on_failure(
    cli: Cli, db: Db, health: HealthServer
) -> None:
    db.write(V1, keep="3s")
    first = apply(cli, db)
    assert first.code == 0, first.stderr
    assert states(cli) == {1: "active"}
    volume = db.invariant()
    assert db.cloud()["volumes"][0].extra.get("instance_id") == instance_of(cli, 1)
    assert db.cloud()["snapshots"] == []  # nothing to protect on the first attach

    # An image bump: a new instance in the volume's zone, the old one stopped, the
    # same volume attached to the new one, a snapshot before the hand-over.
    db.write(V2, keep="3s")
    second = apply(cli, db)
    assert second.code == 0, second.stderr
    assert states(cli) == {1: "standby", 2: "active"}
    assert db.invariant() == volume
    seen = db.cloud()
    assert seen["volumes"][0].extra.get("instance_id") == instance_of(cli, 2)
    assert instance_of(cli, 1) in seen["stopped"], "the standby is kept, stopped"
    assert len(seen["snapshots"]) == 1
    kinds = [e["kind"] for e in json.loads(cli("ledger", "events", "--json").stdout)]
    for kind in ("volume_created", "snapshot_created", "instance_stopped", "volume_detached",
                 "volume_attached"):  # fmt: skip
        assert kind in kinds, kind

    # keep_previous ends: the stopped standby goes; the volume stays where it is.
    time.sleep(3.5)
    third = apply(cli, db)
    assert third.code == 0, third.stderr
    assert states(cli)[1] == "destroyed"
    assert instance_of(cli, 1) not in db.cloud()["nodes"] or db.cloud()["nodes"][
        instance_of(cli, 1)].state == "terminated"
    assert db.invariant() == volume

    # A failing health gate: the volume goes back to generation 2's instance, started.
    health.bad.add(V3)
    db.write(V3, keep="3s")
    failed = apply(cli, db)
    assert failed.code == 1
    assert states(cli)[2] == "active" and states(cli)[3] == "failed"
    assert db.invariant() == volume
    assert db.cloud()["volumes"][0].extra.get("instance_id") == instance_of(cli, 2)
    # Nothing is left to do: the failed spec waits for a new commit.
    again = apply(cli, db)
    assert again.code == 0, again.stderr
    assert db.invariant() == volume


def test_invalid_combinations_are_refused(cli: Cli, db: Db) -> None:
    db.write(V1)
    path = db.root / "environments" / "prod.yaml"
    document = yaml.safe_load(path.read_text())
    for key, value, message in (
        ("count", 2, "must be 1 for a service with a volume"),
        ("strategy", "blue-green", "must be recreate for a service with a volume"),
    ):
        broken = json.loads(json.dumps(document))
        broken["services"]["db"][key] = value
        path.write_text(yaml.safe_dump(broken, sort_keys=False))
        result = cli("validate", "--desired", str(db.root))
        assert result.code == 1
        assert f"services.db.{key}" in result.stderr and message in result.stderr

    # A size change of an existing volume: refused by plan and apply, nothing changed.
    db.write(V1)
    assert apply(cli, db).code == 0
    volume = db.invariant()
    db.write(V2, size=16)
    planned = cli("plan", "--desired", str(db.root))
    assert planned.code == 3 and "services.db.volume.size" in planned.stderr
    refused = apply(cli, db)
    assert refused.code == 3 and "never replaced" in refused.stderr
    assert states(cli) == {1: "active"} and db.invariant() == volume


# Each hand-over step's API call, held in flight by the sandbox (a latency fault) while
# the apply process is killed with SIGKILL: the intent row is written, the call was sent.
STEPS = {
    "launch": "RunInstances",
    "snapshot": "CreateSnapshot",
    "stop": "StopInstances",
    "detach": "DetachVolume",
    "attach": "AttachVolume",
}
HELD = 2.0  # seconds the sandbox holds the call before serving it


@pytest.mark.parametrize("step", list(STEPS))
def test_sigkill_at_each_handover_step_is_finished_by_the_next_pass(
    cli: Cli, db: Db, step: str, sandbox: SandboxServer
) -> None:
    db.write(V1)
    assert apply(cli, db).code == 0
    volume = db.invariant()
    db.write(V2)
    action = STEPS[step]
    set_faults(sandbox.endpoint, [{"action": action, "kind": "latency", "seconds": HELD,
                                   "times": 1}])  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(cli.state_dir), "--log-format",
         "json", "apply", "--desired", str(db.root), "--yes"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while fetch_stats(sandbox.endpoint)["received"].get(action, 0) == 0:
            assert process.poll() is None, "the apply ended before the step"
            assert time.monotonic() < deadline, f"{action} was never sent"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    time.sleep(HELD + 0.5)  # the call in flight lands, as a cloud's would
    clear_faults(sandbox.endpoint)
    # Whatever the cloud shows now, never two running instances with the volume.
    seen = db.cloud()
    [held] = seen["volumes"]
    assert len(seen["running"] & {held.extra.get("instance_id")}) <= 1

    resumed = apply(cli, db)
    assert resumed.code == 0, resumed.stderr
    assert states(cli) == {1: "standby", 2: "active"}
    assert db.invariant() == volume
    assert db.cloud()["volumes"][0].extra.get("instance_id") == instance_of(cli, 2)
    assert len(db.cloud()["snapshots"]) == 1, "a redone hand-over took a second snapshot"
    # No instance leaked: generation 1's is the stopped standby, generation 2's runs.
    seen = db.cloud()
    alive = {i for i, n in seen["nodes"].items() if n.state in ("running", "stopped", "pending")}
    assert alive == {instance_of(cli, 1), instance_of(cli, 2)}
    with Ledger.open(cli.state_dir) as ledger:
        assert ledger.open_operations() == []


def test_rollback_hands_the_volume_back_and_delete_is_the_only_way_it_goes(
    cli: Cli, db: Db, sandbox: SandboxServer
) -> None:
    db.write(V1)
    assert apply(cli, db).code == 0
    volume = db.invariant()
    db.write(V2)
    assert apply(cli, db).code == 0
    assert states(cli) == {1: "standby", 2: "active"}

    # rollback on request: the same hand-over in reverse, the standby started again.
    rolled = cli("rollback", "prod", "db", "--yes", "--desired", str(db.root))
    assert rolled.code == 0, rolled.stderr
    assert states(cli) == {1: "active", 2: "standby"}
    assert db.invariant() == volume
    assert db.cloud()["volumes"][0].extra.get("instance_id") == instance_of(cli, 1)
    assert instance_of(cli, 2) in db.cloud()["stopped"]

    # Deleting is refused while the service declares it, and while it is attached.
    refused = cli("volume", "delete", "prod", "db", "--yes", "--desired", str(db.root))
    assert refused.code == 1 and "still declares its volume" in refused.stderr
    assert cli("volume", "delete", "prod", "db", "--desired", str(db.root)).code == 1

    # The service is removed: its instances go, the volume stays (a pass never deletes
    # one) and `ledger orphans` shows it with its monthly cost.
    assert cli("release", "prod", "db", "--desired", str(db.root)).code == 0
    web = {"image": V1, "count": 1}
    write_desired(db.root, endpoint=db.endpoint, environments={"prod": {"web": web}})
    removed = cli("apply", "--desired", str(db.root), "--yes", "--allow-mass-destroy")
    assert removed.code == 0, removed.stderr
    seen = db.cloud()
    assert seen["running"] == set() and [v.id for v in seen["volumes"]] == [volume]
    orphans = json.loads(cli("ledger", "orphans", "--live", "--desired", str(db.root),
                             "--json").stdout)  # fmt: skip
    [unattached] = [o for o in orphans if o["kind"] == "volume-unattached"]
    assert unattached["instance"] == volume and unattached["monthly_cost"] > 0
    assert "reconciler volume delete prod db --yes" in unattached["action"]

    deleted = cli("volume", "delete", "prod", "db", "--yes", "--desired", str(db.root))
    assert deleted.code == 0, deleted.stderr
    assert db.cloud()["volumes"] == []
    assert len(db.cloud()["snapshots"]) == 1, "snapshots are kept"
    stored = json.loads(cli("ledger", "orphans", "--json").stdout)
    [snapshot] = [o for o in stored if o["kind"] == "snapshot-orphaned"]
    assert volume in snapshot["action"] and snapshot["monthly_cost"] > 0
    events = json.loads(cli("ledger", "events", "--kind", "volume_deleted", "--json").stdout)
    assert [e["detail"]["volume"] for e in events] == [volume]
