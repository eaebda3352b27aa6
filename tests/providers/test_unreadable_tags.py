"""Owned instances whose identity tags no pass could have written, end to end through
the CLI against the sandbox: every command goes on, the instance is left alone and is
reported (plan, ledger orphans, one event), and `ledger rebuild` skips it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from libcloud.compute.base import NodeImage, NodeSize

from reconciler.providers.sandbox import SandboxServer
from tests.conftest import Cli, mutating_calls
from tests.support.cloud import live_nodes, raw_driver
from tests.support.desired_builder import IMAGE_V1, write_desired


@pytest.mark.parametrize("generation", ["99999999999999999999", "-1"])
def test_an_owned_instance_with_an_unreadable_generation_is_reported_and_left_alone(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer, generation: str
) -> None:
    services = {"production": {"web": {"image": IMAGE_V1, "count": 1}}}
    desired = write_desired(tmp_path / "desired", endpoint=sandbox.endpoint,
                            environments=services)  # fmt: skip
    assert cli("apply", "--desired", str(desired)).code == 0
    driver = raw_driver(sandbox.endpoint)
    odd = driver.create_node(
        name="odd", image=NodeImage(IMAGE_V1, None, driver),
        size=NodeSize("t3.micro", "t3.micro", 0, 0, None, None, driver),
        ex_metadata={"reconciler:owner": "acme", "reconciler:env": "production",
                     "reconciler:service": "web", "reconciler:generation": generation,
                     "Name": f"production-web-g{generation}-1"},
    )  # fmt: skip
    before = mutating_calls(sandbox.endpoint)

    plan = cli("plan", "--desired", str(desired), "--json")
    applied = cli("apply", "--desired", str(desired))
    again = cli("apply", "--desired", str(desired))
    orphans = cli("ledger", "orphans", "--json")
    events = cli("ledger", "events", "--json")
    rebuilt = cli("ledger", "rebuild", "--desired", str(desired), "--yes")

    for result in (plan, applied, again, orphans, events, rebuilt):
        assert result.code == 0, result.stderr
        assert "Traceback" not in result.stderr
    assert mutating_calls(sandbox.endpoint) == before
    assert odd.id in {n.id for n in live_nodes(sandbox.endpoint)}
    notes = [n["message"] for n in json.loads(plan.stdout)["notes"]]
    assert any(odd.id in n and "unreadable identity tags" in n for n in notes), notes
    (orphan,) = [o for o in json.loads(orphans.stdout) if o["instance"] == odd.id]
    assert orphan["kind"] == "unreadable-tags"
    assert "reconciler:generation is not a generation number" in orphan["action"]
    reported = [e for e in json.loads(events.stdout) if e["kind"] == "instance_tags_unreadable"]
    assert [e["instance"] for e in reported] == [odd.id]  # once, not once per pass
