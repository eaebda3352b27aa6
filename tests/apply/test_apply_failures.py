"""A rollout that fails its gate: the new instances go, the old generation keeps serving.

The sandbox always boots instances, so the failure is injected at our own seam, the
`HealthGate` (the plugin point health checks will use); everything else is real.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reconciler import engine
from reconciler.ledger import Ledger
from reconciler.model import ObservedInstance, ServiceSpec
from reconciler.providers.sandbox import SandboxServer, fetch_stats
from tests.support.desired_builder import IMAGE_V1, IMAGE_V2, write_desired


class NeverHealthy:
    def __init__(self) -> None:
        self.checked: list[str] = []

    def wait_healthy(self, instances: Sequence[ObservedInstance], spec: ServiceSpec) -> str | None:
        self.checked += [i.id for i in instances]
        return "probe http://{private_ip}:8080/healthz never answered"


def test_failed_rollout_is_compensated_and_not_retried(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    services = {"prod": {"web": {"image": IMAGE_V1, "count": 2}}}
    root = write_desired(tmp_path / "d", endpoint=sandbox.endpoint, environments=services)
    ledger = Ledger.open(tmp_path / "state")
    first = engine.apply_pass(root, ledger)
    assert first.result is not None and first.result.ok

    services["prod"]["web"]["image"] = IMAGE_V2
    write_desired(root, endpoint=sandbox.endpoint, environments=services)
    gate = NeverHealthy()
    failed = engine.apply_pass(root, ledger, gate=gate)

    assert failed.result is not None and not failed.result.ok
    assert "never answered" in failed.result.failures[0]
    assert len(gate.checked) == 2
    rows = {r["number"]: r for r in ledger.generation_rows(env="prod", service="web")}
    assert rows[1]["state"] == "active"
    assert rows[2]["state"] == "failed" and rows[2]["reason"].startswith("failed: health gate")
    instances = {r["id"]: r for r in ledger.instance_rows(env="prod", service="web")}
    assert {r["state"] for r in instances.values() if r["generation"] == 2} == {"destroyed"}
    assert set(gate.checked) == {i for i, r in instances.items() if r["generation"] == 2}
    observed = engine.observe(failed.desired, engine.build_providers(failed.desired))
    alive = {i.id: i for i in observed if i.alive}
    assert sorted(i.generation for i in alive.values()) == [1, 1]
    ops = ledger.open_operations()
    assert ops == [], "every operation is closed: done or failed"

    # The same spec is not tried again until the desired state changes.
    before = fetch_stats(sandbox.endpoint)["mutating"]
    again = engine.apply_pass(root, ledger)
    assert again.plan.empty
    assert next(n.message for n in again.plan.notes).startswith("spec ")
    assert fetch_stats(sandbox.endpoint)["mutating"] == before

    # A new commit (another spec) is tried, as generation 3.
    services["prod"]["web"]["size"] = "t3.small"
    write_desired(root, endpoint=sandbox.endpoint, environments=services)
    third = engine.apply_pass(root, ledger)
    assert third.result is not None and third.result.ok
    states = {r["number"]: r["state"] for r in ledger.generation_rows(env="prod", service="web")}
    assert states == {1: "standby", 2: "failed", 3: "active"}
    ledger.close()


def test_failed_scale_up_rolls_back_only_the_new_instance(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """A create inside the active generation that fails its gate is undone; nothing else moves."""
    services = {"prod": {"web": {"image": IMAGE_V1, "count": 1}}}
    root = write_desired(tmp_path / "d", endpoint=sandbox.endpoint, environments=services)
    ledger = Ledger.open(tmp_path / "state")
    assert engine.apply_pass(root, ledger).result is not None
    desired = engine.read_desired(root)
    provider = engine.build_providers(desired)["cloud"]
    original = next(i for i in provider.list_owned("acme") if i.alive)
    # Scale up while the gate fails: the deficit create is rolled back, nothing else moves.
    services["prod"]["web"]["count"] = 2
    write_desired(root, endpoint=sandbox.endpoint, environments=services)
    outcome = engine.apply_pass(root, ledger, gate=NeverHealthy())
    assert outcome.result is not None and not outcome.result.ok
    alive = [i for i in provider.list_owned("acme") if i.alive]
    assert [i.id for i in alive] == [original.id]
    states = {r["number"]: r["state"] for r in ledger.generation_rows(env="prod", service="web")}
    assert states == {1: "active"}
    ledger.close()
