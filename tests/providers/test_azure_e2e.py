"""End to end through the CLI with `driver: azure`: a real subprocess, the real libcloud
ARM driver over HTTP against the fake Azure, a real SQLite ledger and real git commits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Cli
from tests.support.azure_support import (
    CLIENT_ID,
    IMAGE_V1,
    IMAGE_V2,
    LOCATION,
    RESOURCE_GROUP,
    SSH_KEY,
    SUBSCRIPTION,
    TENANT,
    AzureCloud,
)
from tests.support.desired_builder import git_commit, write_desired
from tests.support.fakecloud import serving

CANARY = "canary-azure-secret-9b7c"
SERVICES = {
    "production": {
        "web": {"image": IMAGE_V1, "count": 3, "size": "Standard_B1s",
                "user_data": "userdata/boot.sh"},
        "api": {"image": IMAGE_V1, "count": 2, "size": "Standard_B2s"},
    },
}  # fmt: skip


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[AzureCloud]:
    # The CLI subprocess inherits these: credentials reach it only as references.
    monkeypatch.setenv("TEST_AZURE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("TEST_AZURE_SECRET", CANARY)
    with serving(AzureCloud(client_secret=CANARY)) as cloud:
        yield cloud


def write(root: Path, fake: AzureCloud, services: dict[str, Any]) -> Path:
    return write_desired(
        root,
        endpoint=fake.base_url,
        driver="azure",
        environments={"production": services},
        credentials={
            "key": {"env": "TEST_AZURE_CLIENT_ID"},
            "secret": {"env": "TEST_AZURE_SECRET"},
        },
        provider_options={
            "region": LOCATION,
            "tenant": TENANT,
            "subscription": SUBSCRIPTION,
            "resource_group": RESOURCE_GROUP,
            "network": "reconciler-vnet",
            "subnet": "default",
            "ssh_key": SSH_KEY,
        },
    )


@pytest.fixture
def desired(tmp_path: Path, fake: AzureCloud) -> Path:
    root = write(tmp_path / "desired", fake, SERVICES["production"])
    git_commit(root, "v1")
    return root


def live(fake: AzureCloud, service: str) -> list[dict[str, Any]]:
    return [vm for vm in fake.vms.values() if vm["body"]["tags"]["reconciler:service"] == service]


def test_apply_from_empty_creates_tagged_vms_with_custom_data(
    cli: Cli, desired: Path, fake: AzureCloud
) -> None:
    result = cli("-v", "apply", "--desired", str(desired))
    assert result.code == 0, result.stderr

    web = sorted(live(fake, "web"), key=lambda vm: vm["body"]["tags"]["Name"])
    assert [vm["body"]["tags"]["Name"] for vm in web] == [
        "production-web-g1-1",
        "production-web-g1-2",
        "production-web-g1-3",
    ]
    assert len(live(fake, "api")) == 2
    for vm in web:
        tags = vm["body"]["tags"]
        assert tags["reconciler:owner"] == "acme" and tags["reconciler:generation"] == "1"
        assert len(tags["reconciler:spec"]) == 16
        assert vm["name"].startswith(tags["Name"] + "-")
        assert fake.custom_data(vm["name"]) == "#!/bin/sh\necho booted\n"
        assert vm["body"]["properties"]["hardwareProfile"]["vmSize"] == "Standard_B1s"
    assert len({vm["body"]["tags"]["reconciler:op"] for vm in web}) == 3
    assert len(fake.nics) == 5  # one NIC per VM, nothing else
    # Each VM is one request, its NIC defined in it: no create leaves a NIC alone.
    assert {(m, p.split("/")[-2]) for m, p in fake.mutating_requests()} == {
        ("PUT", "virtualMachines")
    }
    # The secret was used (the fake checks it at login) and shown nowhere.
    assert CANARY not in result.stdout + result.stderr
    ledger = (desired.parent / "state" / "ledger.sqlite").read_bytes()
    assert CANARY.encode() not in ledger


def test_second_apply_lists_every_page_and_changes_nothing(
    cli: Cli, desired: Path, fake: AzureCloud
) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    before = len(fake.mutating_requests())
    pages_before = fake.list_pages("virtualMachines")

    again = cli("apply", "--desired", str(desired), "--json")
    assert again.code == 0, again.stderr
    assert json.loads(again.stdout)["actions"] == []
    assert len(fake.mutating_requests()) == before
    assert fake.list_pages("virtualMachines") - pages_before >= 3  # 5 VMs, 2 a page

    plan = cli("plan", "--desired", str(desired), "--detailed-exitcode")
    assert plan.code == 0, plan.stdout + plan.stderr
    assert len(fake.mutating_requests()) == before


def test_image_change_makes_a_new_generation(
    cli: Cli, desired: Path, fake: AzureCloud, tmp_path: Path
) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    services = json.loads(json.dumps(SERVICES["production"]))
    services["web"]["image"] = IMAGE_V2
    write(desired, fake, services)
    git_commit(desired, "web to v2")

    plan = cli("plan", "--desired", str(desired), "--json")
    assert plan.code == 0, plan.stderr
    actions = json.loads(plan.stdout)["actions"]
    assert {(a["service"], a["generation"]) for a in actions} == {("web", 2)}
    assert [a["kind"] for a in actions].count("create") == 3
    assert all(a["kind"] != "destroy" for a in actions)

    assert cli("apply", "--desired", str(desired)).code == 0
    rows = json.loads(cli("ledger", "generations", "--json").stdout)
    web = {r["number"]: r["state"] for r in rows if r["service"] == "web"}
    assert web == {1: "standby", 2: "active"}
    images = {
        vm["body"]["tags"]["reconciler:generation"]: image_urn(vm) for vm in live(fake, "web")
    }
    assert images == {"1": IMAGE_V1, "2": IMAGE_V2}
    # The new generation is observed as launched: a third pass has nothing to do.
    third = cli("apply", "--desired", str(desired), "--json")
    assert third.code == 0 and json.loads(third.stdout)["actions"] == []


def test_partial_listing_aborts_the_pass_without_mutating(
    cli: Cli, desired: Path, fake: AzureCloud
) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    fake.vms.pop(sorted(fake.vms)[0])  # one VM vanished: a full listing would replace it
    before = len(fake.mutating_requests())
    fake.partial_listing = True

    result = cli("apply", "--desired", str(desired))

    assert result.code != 0
    assert len(fake.mutating_requests()) == before
    assert "listing failed" in result.stdout + result.stderr


def test_a_deallocated_vm_is_replaced(cli: Cli, desired: Path, fake: AzureCloud) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    stopped = sorted(live(fake, "api"), key=lambda vm: vm["body"]["tags"]["Name"])[0]
    stopped["power"] = "deallocated"  # someone stopped it in the portal

    plan = cli("plan", "--desired", str(desired), "--json")

    assert plan.code == 0, plan.stderr
    actions = json.loads(plan.stdout)["actions"]
    stopped_id = (
        f"/subscriptions/{SUBSCRIPTION}/resourcegroups/{RESOURCE_GROUP}/providers"
        f"/microsoft.compute/virtualmachines/{stopped['name']}"
    )
    assert sorted((a["kind"], a["service"], a["slot"]) for a in actions) == [
        ("create", "api", 1),
        ("destroy", "api", 1),
    ]
    (create,) = [a for a in actions if a["kind"] == "create"]
    (destroy,) = [a for a in actions if a["kind"] == "destroy"]
    assert create["replaces"] == destroy["instance"] == stopped_id.lower()


def image_urn(vm: dict[str, Any]) -> str:
    ref = vm["body"]["properties"]["storageProfile"]["imageReference"]
    return ":".join(ref[k] for k in ("publisher", "offer", "sku", "version"))


def test_validation_asks_for_the_ssh_key_but_not_for_prices(
    cli: Cli, tmp_path: Path, fake: AzureCloud
) -> None:
    root = write(tmp_path / "desired", fake, SERVICES["production"])  # no price_per_hour
    assert cli("validate", "--desired", str(root)).code == 0

    config = yaml.safe_load((root / "reconciler.yaml").read_text())
    del config["providers"]["cloud"]["ssh_key"]
    (root / "reconciler.yaml").write_text(yaml.safe_dump(config))
    refused = cli("validate", "--desired", str(root))
    assert refused.code == 1
    assert "required key 'ssh_key' is missing" in refused.stdout + refused.stderr
    assert fake.requests == []  # validation never contacts the cloud
