"""End to end through the CLI: a real subprocess, the real libcloud EC2 driver over HTTP
against the sandbox endpoint, a real SQLite ledger and real git commits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from libcloud.compute.base import Node

from reconciler.providers.sandbox import SandboxServer, fetch_stats
from tests.conftest import Cli, mutating_calls
from tests.support.cloud import live_nodes, raw_driver
from tests.support.desired_builder import IMAGE_V1, IMAGE_V2, git_commit, write_desired

SERVICES_V1 = {
    "production": {
        "web": {"image": IMAGE_V1, "count": 3, "size": "t3.small", "user_data": "userdata/boot.sh"},
        "api": {"image": IMAGE_V1, "count": 2},
    },
    "staging": {"web": {"image": IMAGE_V1, "count": 1}},
}


def generations(cli: Cli) -> list[dict[str, Any]]:
    result = cli("ledger", "generations", "--json")
    assert result.code == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def states(cli: Cli, env: str, service: str) -> dict[int, str]:
    return {
        row["number"]: row["state"]
        for row in generations(cli)
        if (row["env"], row["service"]) == (env, service)
    }


@pytest.fixture
def desired(tmp_path: Path, sandbox: SandboxServer) -> Path:
    root = write_desired(tmp_path / "desired", endpoint=sandbox.endpoint, environments=SERVICES_V1)
    git_commit(root, "v1")
    return root


def bump_image(root: Path, endpoint: str, image: str) -> str:
    services = json.loads(json.dumps(SERVICES_V1))
    services["production"]["web"]["image"] = image
    write_desired(root, endpoint=endpoint, environments=services)
    return git_commit(root, f"web to {image}")


def test_apply_from_empty_creates_generation_one_with_tags(
    cli: Cli, desired: Path, sandbox: SandboxServer
) -> None:
    result = cli("apply", "--desired", str(desired))
    assert result.code == 0, result.stderr

    nodes = live_nodes(sandbox.endpoint)
    by_service: dict[tuple[str, str], list[Node]] = {}
    for node in nodes:
        tags = node.extra["tags"]
        by_service.setdefault((tags["reconciler:env"], tags["reconciler:service"]), []).append(node)
    assert {k: len(v) for k, v in by_service.items()} == {
        ("production", "web"): 3,
        ("production", "api"): 2,
        ("staging", "web"): 1,
    }
    web = sorted(by_service[("production", "web")], key=lambda n: n.extra["tags"]["Name"])
    assert [n.extra["tags"]["Name"] for n in web] == [
        "production-web-g1-1",
        "production-web-g1-2",
        "production-web-g1-3",
    ]
    ops = set()
    for node in web:
        tags = node.extra["tags"]
        assert tags["reconciler:owner"] == "acme"
        assert tags["reconciler:generation"] == "1"
        assert len(tags["reconciler:spec"]) == 16
        assert node.extra["instance_type"] == "t3.small"
        assert node.extra["image_id"] == IMAGE_V1
        ops.add(tags["reconciler:op"])
    assert len(ops) == 3, "each instance carries its own operation id"
    # Tags rode on RunInstances itself: no CreateTags call was ever made.
    assert "CreateTags" not in fetch_stats(sandbox.endpoint)["calls"]
    assert states(cli, "production", "web") == {1: "active"}


def test_second_apply_makes_no_mutating_call_and_plan_reports_no_changes(
    cli: Cli, desired: Path, sandbox: SandboxServer
) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    before = mutating_calls(sandbox.endpoint)

    again = cli("apply", "--desired", str(desired), "--json")
    assert again.code == 0, again.stderr
    assert json.loads(again.stdout)["actions"] == []
    assert mutating_calls(sandbox.endpoint) == before

    plan = cli("plan", "--desired", str(desired), "--detailed-exitcode")
    assert plan.code == 0, plan.stderr
    assert mutating_calls(sandbox.endpoint) == before


def test_image_bump_creates_generation_two_and_keeps_one_as_standby(
    cli: Cli, desired: Path, sandbox: SandboxServer
) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    sha = bump_image(desired, sandbox.endpoint, IMAGE_V2)

    plan = cli("plan", "--desired", str(desired), "--detailed-exitcode", "--json")
    assert plan.code == 2, plan.stderr
    document = json.loads(plan.stdout)
    assert document["commit"] == sha
    assert document["summary"]["create"] == 3
    assert {(a["env"], a["service"], a["generation"]) for a in document["actions"]} == {
        ("production", "web", 2)
    }
    assert all(a["kind"] != "destroy" for a in document["actions"])

    assert cli("apply", "--desired", str(desired)).code == 0
    assert states(cli, "production", "web") == {1: "standby", 2: "active"}
    assert states(cli, "production", "api") == {1: "active"}
    row = next(r for r in generations(cli) if r["service"] == "web" and r["number"] == 2)
    assert row["commit"] == sha and row["image"] == IMAGE_V2

    web = [
        n
        for n in live_nodes(sandbox.endpoint)
        if n.extra["tags"]["reconciler:service"] == "web"
        and n.extra["tags"]["reconciler:env"] == "production"
    ]
    assert sorted(n.extra["tags"]["reconciler:generation"] for n in web) == ["1"] * 3 + ["2"] * 3
    assert cli("plan", "--desired", str(desired), "--detailed-exitcode").code == 0


def test_instance_terminated_out_of_band_is_replaced_in_same_generation(
    cli: Cli, desired: Path, sandbox: SandboxServer
) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    driver = raw_driver(sandbox.endpoint)
    victim = next(
        n for n in live_nodes(sandbox.endpoint) if n.extra["tags"]["Name"] == "production-api-g1-2"
    )
    assert driver.destroy_node(victim)

    result = cli("apply", "--desired", str(desired), "--json")
    assert result.code == 0, result.stderr
    actions = json.loads(result.stdout)["actions"]
    assert [
        (a["kind"], a["reason"], a["generation"], a["slot"], a["replaces"]) for a in actions
    ] == [("create", "missing", 1, 2, victim.id)]
    api = [
        n for n in live_nodes(sandbox.endpoint) if n.extra["tags"]["reconciler:service"] == "api"
    ]
    assert sorted(n.extra["tags"]["Name"] for n in api) == [
        "production-api-g1-1",
        "production-api-g1-2",
    ]
    assert victim.id not in {n.id for n in api}
    assert states(cli, "production", "api") == {1: "active"}


def test_count_change_scales_active_generation_without_a_new_one(
    cli: Cli, desired: Path, sandbox: SandboxServer
) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    services = json.loads(json.dumps(SERVICES_V1))
    services["production"]["api"]["count"] = 4
    services["production"]["web"]["count"] = 2
    write_desired(desired, endpoint=sandbox.endpoint, environments=services)

    result = cli("apply", "--desired", str(desired), "--json")
    assert result.code == 0, result.stderr
    reasons = sorted(
        (a["service"], a["kind"], a["reason"]) for a in json.loads(result.stdout)["actions"]
    )
    assert reasons == [
        ("api", "create", "deficit"),
        ("api", "create", "deficit"),
        ("web", "destroy", "surplus"),
    ]
    assert states(cli, "production", "api") == {1: "active"}
    api_row = next(r for r in generations(cli) if r["service"] == "api")
    assert api_row["count"] == 4
    names = sorted(
        n.extra["tags"]["Name"]
        for n in live_nodes(sandbox.endpoint)
        if n.extra["tags"]["reconciler:env"] == "production"
    )
    assert names == [
        "production-api-g1-1",
        "production-api-g1-2",
        "production-api-g1-3",
        "production-api-g1-4",
        "production-web-g1-1",
        "production-web-g1-2",
    ]


@pytest.mark.parametrize(
    ("breakage", "exit_code", "message"),
    [
        ("negative-count", 1, "count"),
        ("broken-yaml", 1, "production.yaml:"),
        ("emptied-environment", 3, "declares no services"),
        ("emptied-file", 3, "declares no services"),
    ],
)
def test_bad_desired_state_is_refused_without_mutating_calls(
    cli: Cli, desired: Path, sandbox: SandboxServer, breakage: str, exit_code: int, message: str
) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    before = mutating_calls(sandbox.endpoint)
    production = desired / "environments" / "production.yaml"
    if breakage == "negative-count":
        production.write_text(production.read_text().replace("count: 2", "count: -2"))
    elif breakage == "broken-yaml":
        production.write_text(production.read_text() + "  oops: [unclosed\n")
    elif breakage == "emptied-environment":
        production.write_text("provider: cloud\nservices: {}\n")
    else:
        production.write_text("")

    for command in ("plan", "apply"):
        result = cli(command, "--desired", str(desired))
        assert result.code == exit_code, (command, result.stdout, result.stderr)
        assert message in result.stderr
    assert mutating_calls(sandbox.endpoint) == before
    assert len(live_nodes(sandbox.endpoint)) == 6


def test_mass_destroy_guard_refuses_then_allows_with_flag(
    cli: Cli, desired: Path, sandbox: SandboxServer
) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    before = mutating_calls(sandbox.endpoint)
    write_desired(
        desired,
        endpoint=sandbox.endpoint,
        environments={"staging": {"web": {"image": IMAGE_V1, "count": 1}}},
    )
    refused = cli("apply", "--desired", str(desired))
    assert refused.code == 3, refused.stderr
    assert "max_destroy_fraction" in refused.stderr
    assert mutating_calls(sandbox.endpoint) == before

    allowed = cli("apply", "--desired", str(desired), "--allow-mass-destroy")
    assert allowed.code == 0, allowed.stderr
    assert len(live_nodes(sandbox.endpoint)) == 1
    assert set(states(cli, "production", "web").values()) == {"destroyed"}


def test_instances_without_our_owner_tag_are_never_touched(
    cli: Cli, desired: Path, sandbox: SandboxServer
) -> None:
    from libcloud.compute.base import NodeImage, NodeSize

    driver = raw_driver(sandbox.endpoint)
    size = NodeSize("t3.micro", "t3.micro", 0, 0, None, None, driver)
    foreign = driver.create_node(
        name="foreign",
        image=NodeImage(IMAGE_V1, None, driver),
        size=size,
        ex_metadata={
            "reconciler:owner": "someone-else",
            "reconciler:env": "production",
            "reconciler:service": "web",
            "reconciler:generation": "1",
        },
    )
    untagged = driver.create_node(name="pet", image=NodeImage(IMAGE_V1, None, driver), size=size)
    assert cli("apply", "--desired", str(desired)).code == 0
    write_desired(
        desired, endpoint=sandbox.endpoint, environments={"staging": SERVICES_V1["staging"]}
    )
    assert cli("apply", "--desired", str(desired), "--allow-mass-destroy").code == 0
    alive = {n.id for n in live_nodes(sandbox.endpoint)}
    assert {foreign.id, untagged.id} <= alive


def test_recreate_strategy_destroys_before_creating(
    cli: Cli, desired: Path, sandbox: SandboxServer
) -> None:
    services = json.loads(json.dumps(SERVICES_V1))
    services["staging"]["web"]["strategy"] = "recreate"
    write_desired(desired, endpoint=sandbox.endpoint, environments=services)
    assert cli("apply", "--desired", str(desired)).code == 0
    services["staging"]["web"]["image"] = IMAGE_V2
    write_desired(desired, endpoint=sandbox.endpoint, environments=services)
    result = cli("apply", "--desired", str(desired), "--json")
    assert result.code == 0, result.stderr
    kinds = [(a["kind"], a["generation"]) for a in json.loads(result.stdout)["actions"]]
    assert kinds == [("destroy", 1), ("retire", 1), ("create", 2), ("activate", 2)]
    assert states(cli, "staging", "web") == {1: "destroyed", 2: "active"}


def test_ec2_driver_with_credential_references(tmp_path: Path, sandbox: SandboxServer) -> None:
    secret_file = tmp_path / "aws_secret"
    secret_file.write_text("canary-secret-value-7f3a\n")
    root = write_desired(
        tmp_path / "desired",
        endpoint=sandbox.endpoint,
        driver="ec2",
        environments={"staging": {"web": {"image": IMAGE_V1, "count": 2}}},
        credentials={"key": {"env": "TEST_AWS_KEY"}, "secret": {"file": str(secret_file)}},
    )
    import os
    import subprocess
    import sys

    env = {**os.environ, "TEST_AWS_KEY": "AKIDCANARY", "RECONCILER_CREDENTIAL_DIRS": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            "--state-dir",
            str(tmp_path / "state"),
            "--log-format",
            "json",
            "-v",
            "apply",
            "--desired",
            str(root),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len(live_nodes(sandbox.endpoint)) == 2
    assert "canary-secret-value-7f3a" not in done.stdout + done.stderr
    ledger_bytes = (tmp_path / "state" / "ledger.sqlite").read_bytes()
    assert b"canary-secret-value-7f3a" not in ledger_bytes

    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            "--state-dir",
            str(tmp_path / "state"),
            "apply",
            "--desired",
            str(root),
        ],
        env={k: v for k, v in os.environ.items() if k != "TEST_AWS_KEY"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert missing.returncode == 1
    assert "TEST_AWS_KEY is not set" in missing.stderr


def test_more_than_one_hundred_owned_instances_are_all_seen(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    root = write_desired(
        tmp_path / "desired",
        endpoint=sandbox.endpoint,
        policy={"max_count": 200, "max_parallel": 8},
        environments={"production": {"fleet": {"image": IMAGE_V1, "count": 130}}},
    )
    assert cli("apply", "--desired", str(root), timeout=300).code == 0
    assert len(live_nodes(sandbox.endpoint)) >= 100  # one unpaginated page at most
    before = mutating_calls(sandbox.endpoint)
    plan = cli("plan", "--desired", str(root), "--detailed-exitcode")
    assert plan.code == 0, plan.stdout + plan.stderr
    assert cli("apply", "--desired", str(root)).code == 0
    assert mutating_calls(sandbox.endpoint) == before


def test_tampered_instance_is_replaced_before_it_is_destroyed(
    cli: Cli, desired: Path, sandbox: SandboxServer
) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    driver = raw_driver(sandbox.endpoint)
    victim = next(
        n for n in live_nodes(sandbox.endpoint) if n.extra["tags"]["Name"] == "staging-web-g1-1"
    )
    from libcloud.compute.base import NodeSize

    driver.ex_change_node_size(victim, NodeSize("t3.large", "t3.large", 0, 0, None, None, driver))
    changed = next(n for n in live_nodes(sandbox.endpoint) if n.id == victim.id)
    assert changed.extra["instance_type"] == "t3.large"

    result = cli("apply", "--desired", str(desired), "--json")
    assert result.code == 0, result.stderr
    actions = [(a["kind"], a["reason"], a["slot"]) for a in json.loads(result.stdout)["actions"]]
    assert actions == [("create", "tampered", 1), ("destroy", "tampered", 1)]
    staging = [
        n for n in live_nodes(sandbox.endpoint) if n.extra["tags"]["reconciler:env"] == "staging"
    ]
    assert len(staging) == 1 and staging[0].id != victim.id
    assert staging[0].extra["instance_type"] == "t3.micro"


def test_image_given_by_name_launches_its_ami_and_then_stays_put(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    name = "Windows_Server-2016-English-Nano-Base-2017.10.13"
    root = write_desired(
        tmp_path / "desired", endpoint=sandbox.endpoint,
        environments={"prod": {"win": {"image": name, "count": 2}}},
    )  # fmt: skip
    assert cli("apply", "--desired", str(root)).code == 0
    assert {n.extra["image_id"] for n in live_nodes(sandbox.endpoint)} == {IMAGE_V1}
    again = cli("plan", "--desired", str(root), "--detailed-exitcode")
    assert again.code == 0, again.stdout

    # The name now points at a newer image; the generation keeps launching its own.
    driver = raw_driver(sandbox.endpoint)
    newer = driver.create_image(live_nodes(sandbox.endpoint)[0], name)
    assert newer.id != IMAGE_V1
    root = write_desired(
        tmp_path / "desired", endpoint=sandbox.endpoint,
        environments={"prod": {"win": {"image": name, "count": 3}}},
    )  # fmt: skip
    assert cli("apply", "--desired", str(root)).code == 0
    assert {n.extra["image_id"] for n in live_nodes(sandbox.endpoint)} == {IMAGE_V1}
    settled = cli("plan", "--desired", str(root), "--detailed-exitcode")
    assert settled.code == 0, settled.stdout
