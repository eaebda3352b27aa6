"""Guards beyond mass-destroy: `frozen: true`, and the thrash detector that freezes a
service something keeps killing, until a new commit or `reconciler unfreeze`."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from reconciler.ledger import Ledger
from reconciler.providers.sandbox import SandboxServer
from tests.conftest import Cli, mutating_calls
from tests.support.cloud import live_nodes, raw_driver
from tests.support.desired_builder import IMAGE_V1, IMAGE_V2, git_commit, write_desired


def test_frozen_service_and_environment_are_observed_never_changed(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    root = tmp_path / "desired"
    services = {"web": {"image": IMAGE_V1, "count": 2}, "api": {"image": IMAGE_V1}}
    write_desired(root, endpoint=sandbox.endpoint, environments={"prod": services})
    assert cli("apply", "--desired", str(root)).code == 0

    services["web"] = {"image": IMAGE_V2, "count": 2, "frozen": True}
    services["api"] = {"image": IMAGE_V2}
    write_desired(root, endpoint=sandbox.endpoint, environments={"prod": services})
    before = mutating_calls(sandbox.endpoint)
    plan = json.loads(cli("plan", "--desired", str(root), "--json").stdout)
    assert {(a["service"], a["kind"]) for a in plan["actions"]} == {
        ("api", "create"),
        ("api", "activate"),
    }
    assert plan["notes"][0]["service"] == "web"
    assert "frozen in the desired state" in plan["notes"][0]["message"]

    env_file = root / "environments" / "prod.yaml"
    document = yaml.safe_load(env_file.read_text())
    document["frozen"] = True
    env_file.write_text(yaml.safe_dump(document))
    result = cli("apply", "--desired", str(root), "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["actions"] == []
    assert mutating_calls(sandbox.endpoint) == before


def test_thrash_detector_freezes_until_unfreeze_or_a_new_commit(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    root = tmp_path / "desired"
    environments = {"prod": {"web": {"image": IMAGE_V1, "count": 1}}}
    write_desired(
        root, endpoint=sandbox.endpoint, environments=environments,
        policy={"thrash_limit": 2, "thrash_window": "1h"},
    )  # fmt: skip
    git_commit(root, "v1")
    assert cli("apply", "--desired", str(root)).code == 0
    driver = raw_driver(sandbox.endpoint)

    def kill() -> None:
        driver.destroy_node(live_nodes(sandbox.endpoint)[0])

    def apply() -> list[dict[str, object]]:
        result = cli("apply", "--desired", str(root), "--json")
        assert result.code == 0, result.stderr
        actions: list[dict[str, object]] = json.loads(result.stdout)["actions"]
        return actions

    kill()
    assert len(apply()) == 1
    kill()
    assert len(apply()) == 1
    kill()
    before = mutating_calls(sandbox.endpoint)
    assert apply() == [], "the third replacement in the window trips the detector"
    assert mutating_calls(sandbox.endpoint) == before
    assert live_nodes(sandbox.endpoint) == []
    with Ledger.open(tmp_path / "state") as ledger:
        event = ledger.event_rows(kind="frozen")[0]
    assert (event["env"], event["service"]) == ("prod", "web")
    assert event["detail"]["replacements"] == 2
    assert event["detail"]["planned"] == 1
    assert event["detail"]["limit"] == 2
    plan = json.loads(cli("plan", "--desired", str(root), "--json").stdout)
    assert "frozen by a guard (thrash" in plan["notes"][0]["message"]
    assert apply() == [], "still frozen on the next pass"

    unfrozen = cli("unfreeze", "prod", "--desired", str(root))
    assert unfrozen.code == 0, unfrozen.stderr
    assert "prod/web" in unfrozen.stdout
    assert [a["kind"] for a in apply()] == ["create"], "counting restarts after unfreeze"
    assert len(live_nodes(sandbox.endpoint)) == 1

    # Thrash again until frozen, then a new commit lifts the freeze.
    for _ in range(2):
        kill()
        assert len(apply()) == 1
    kill()
    assert apply() == []
    git_commit(root, "an operator looked at it")
    assert [a["kind"] for a in apply()] == ["create"]
    assert len(live_nodes(sandbox.endpoint)) == 1


def test_unfreeze_explains_what_it_cannot_lift(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    root = tmp_path / "desired"
    write_desired(
        root, endpoint=sandbox.endpoint,
        environments={"prod": {"web": {"image": IMAGE_V1, "frozen": True}}},
    )  # fmt: skip
    result = cli("unfreeze", "prod", "web", "--desired", str(root))
    assert result.code == 1
    assert "frozen in the desired state" in result.stderr
