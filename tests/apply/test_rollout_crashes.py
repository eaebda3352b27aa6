"""Whatever goes wrong after instances were launched ends compensated: the new
instances destroyed, the generation failed, the notifiers told, the old generation
serving and the next pass healthy. The crash is injected at our own seams: a health
plugin registered in the PluginSet (as an entry point would be) and the rollout's gate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from reconciler import engine
from reconciler.apply.gates import Rollout
from reconciler.desired import load_desired_state
from reconciler.errors import InvalidDesiredState
from reconciler.extensions.api import InstanceRef, PluginSet, ProbeResult
from reconciler.ledger import Ledger
from reconciler.model import ObservedInstance, ServiceSpec
from reconciler.providers.sandbox import SandboxServer, clear_faults, fetch_stats, set_faults
from tests.support.desired_builder import IMAGE_V1, IMAGE_V2, write_desired


class KeyErrorProbe:
    """A third-party health check with a bug: its probe raises KeyError."""

    def __init__(self, target: str, *, timeout: float) -> None:
        self.target = target

    def probe(self, instance: InstanceRef) -> ProbeResult:
        return ProbeResult(True, {"known": "x"}["missing"])


class ExitingProbe(KeyErrorProbe):
    """A health check that calls sys.exit(): it must not end the pass."""

    def probe(self, instance: InstanceRef) -> ProbeResult:
        raise SystemExit(2)


class ZeroDivisionGate:
    """Our own code failing in a way nobody planned for, after the launches."""

    def wait_healthy(self, instances: Sequence[ObservedInstance], spec: ServiceSpec) -> str | None:
        raise ZeroDivisionError("division by zero")


def _fleet(tmp_path: Path, sandbox: SandboxServer) -> tuple[Path, Path, Ledger]:
    notes = tmp_path / "notifications.jsonl"
    services = {"prod": {"web": {"image": IMAGE_V1, "count": 2,
                                 "health": {"command": "true", "timeout": "5s"}}}}  # fmt: skip
    notifiers = [{"command": f"sh -c 'cat >> {notes}; echo >> {notes}'"}]
    root = write_desired(tmp_path / "d", endpoint=sandbox.endpoint, environments=services,
                         notifiers=notifiers)  # fmt: skip
    ledger = Ledger.open(tmp_path / "state")
    first = engine.apply_pass(root, ledger)
    assert first.result is not None and first.result.ok
    services["prod"]["web"]["image"] = IMAGE_V2
    write_desired(root, endpoint=sandbox.endpoint, environments=services, notifiers=notifiers)
    return root, notes, ledger


def _assert_compensated(
    root: Path, notes: Path, ledger: Ledger, sandbox: SandboxServer, outcome: engine.PassOutcome
) -> None:
    assert outcome.result is not None and not outcome.result.ok
    states = {r["number"]: r["state"] for r in ledger.generation_rows(env="prod", service="web")}
    assert states == {1: "active", 2: "failed"}
    gen2 = [r for r in ledger.instance_rows(env="prod", service="web") if r["generation"] == 2]
    assert len(gen2) == 2 and {r["state"] for r in gen2} == {"destroyed"}
    observed = engine.observe(outcome.desired, engine.build_providers(outcome.desired))
    assert sorted(i.generation for i in observed if i.alive) == [1, 1]
    assert ledger.open_operations() == []
    sent = [json.loads(line) for line in notes.read_text().splitlines() if line.strip()]
    assert any(n["kind"] == "generation-failed" and n["generation"] == 2 for n in sent)
    # The next pass neither crashes nor retries the failed spec.
    before = fetch_stats(sandbox.endpoint)["mutating"]
    again = engine.apply_pass(root, ledger)
    assert again.result is not None and again.plan.empty
    assert fetch_stats(sandbox.endpoint)["mutating"] == before


@pytest.mark.parametrize(
    ("probe", "raised"), [(KeyErrorProbe, "KeyError"), (ExitingProbe, "SystemExit")]
)
def test_a_health_plugin_raising_anything_fails_its_rollout_cleanly(
    tmp_path: Path, sandbox: SandboxServer, probe: type[KeyErrorProbe], raised: str
) -> None:
    root, notes, ledger = _fleet(tmp_path, sandbox)
    desired = engine.read_desired(root)
    gate = Rollout(desired, plugins=PluginSet(health={"command": probe}),
                   sleep=lambda _: None)  # fmt: skip

    outcome = engine.apply_pass(desired, ledger, gate=gate)

    assert outcome.result is not None
    assert f"health check command crashed with {raised}" in outcome.result.failures[0]
    _assert_compensated(root, notes, ledger, sandbox, outcome)
    ledger.close()


def test_an_unexpected_exception_after_launch_is_compensated(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    root, notes, ledger = _fleet(tmp_path, sandbox)

    outcome = engine.apply_pass(root, ledger, gate=ZeroDivisionGate())

    assert outcome.result is not None
    assert "unexpected ZeroDivisionError" in outcome.result.failures[0]
    _assert_compensated(root, notes, ledger, sandbox, outcome)
    ledger.close()


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("true {ip}", "unknown placeholder {ip}"),
        ("check {id!r}", "takes no conversion or format"),
        ("check {id:>10}", "takes no conversion or format"),
        ("check {id.__class__}", "unknown placeholder"),
        ("check {id[0]}", "unknown placeholder"),
        ("check {0}", "unknown placeholder {0}"),
        ("check {", "malformed template"),
        ("check }", "malformed template"),
        ("check 'unclosed", "cannot be split"),
    ],
)
def test_a_bad_health_template_fails_validation(
    tmp_path: Path, template: str, fragment: str
) -> None:
    services = {"prod": {"web": {"image": IMAGE_V1, "health": {"command": template}}}}
    root = write_desired(tmp_path / "d", endpoint="http://127.0.0.1:9", environments=services)
    with pytest.raises(InvalidDesiredState) as caught:
        load_desired_state(root)
    (problem,) = caught.value.problems
    assert problem.key == "services.web.health.command" and problem.line == 6
    assert fragment in problem.message


def test_a_destroy_failing_during_compensation_does_not_stop_it(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """The undo goes on when one of its destroys fails: the generation is still marked
    failed and the notifier told; what was left running is pruned by the next pass."""
    root, notes, ledger = _fleet(tmp_path, sandbox)
    set_faults(sandbox.endpoint, [{"action": "TerminateInstances", "kind": "auth", "times": 1}])
    try:
        outcome = engine.apply_pass(root, ledger, gate=ZeroDivisionGate())
    finally:
        clear_faults(sandbox.endpoint)

    assert outcome.result is not None and not outcome.result.ok
    states = {r["number"]: r["state"] for r in ledger.generation_rows(env="prod", service="web")}
    assert states == {1: "active", 2: "failed"}
    sent = [json.loads(line) for line in notes.read_text().splitlines() if line.strip()]
    assert any(n["kind"] == "generation-failed" and n["generation"] == 2 for n in sent)

    engine.apply_pass(root, ledger)  # prunes the failed generation's survivor
    observed = engine.observe(outcome.desired, engine.build_providers(outcome.desired))
    assert sorted(i.generation for i in observed if i.alive) == [1, 1]
    ledger.close()
