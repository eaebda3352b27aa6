"""End to end through the CLI against the fake OpenStack: a real subprocess, the real
libcloud OpenStack driver authenticating with Keystone v3 and following its catalog to
Nova and Glance over HTTP, a real SQLite ledger and real git commits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.support.desired_builder import git_commit
from tests.support.openstack_support import (
    IMAGE_V1,
    IMAGE_V2,
    PASSWORD,
    USER,
    FakeOpenStack,
    credentials_env,
    decoded_user_data,
    fake_openstack,
    write_openstack_desired,
)

BOOT_SCRIPT = "#!/bin/sh\necho booted\n"  # what write_desired puts in userdata/boot.sh


def services(web_image: str = IMAGE_V1) -> dict[str, dict[str, dict[str, Any]]]:
    return {
        "production": {
            "web": {
                "image": web_image,
                "size": "m1.small",
                "count": 3,
                "user_data": "userdata/boot.sh",
                "price_per_hour": 0.05,
            },
            # An image by name: Glance resolves it to the newest upload of that name.
            "api": {"image": "ubuntu-24.04", "size": "m1.tiny", "count": 2, "price_per_hour": 0.02},
        }
    }


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenStack]:
    for name, value in credentials_env().items():
        monkeypatch.setenv(name, value)
    with fake_openstack() as fake:
        yield fake


@pytest.fixture
def desired(tmp_path: Path, cloud: FakeOpenStack) -> Path:
    root = write_openstack_desired(tmp_path / "desired", cloud, environments=services())
    git_commit(root, "v1")
    return root


def generation_states(cli: Cli, *, env: str, service: str) -> dict[int, str]:
    result = cli("ledger", "generations", "--json")
    assert result.code == 0, result.stderr
    return {
        row["number"]: row["state"]
        for row in json.loads(result.stdout)
        if (row["env"], row["service"]) == (env, service)
    }


def list_pages(cloud: FakeOpenStack) -> int:
    return sum(1 for m, p in cloud.requests if (m, p) == ("GET", "/compute/v2.1/servers/detail"))


def test_apply_from_empty_creates_servers_with_metadata_and_user_data(
    cli: Cli, desired: Path, cloud: FakeOpenStack, tmp_path: Path
) -> None:
    result = cli("-v", "apply", "--desired", str(desired))
    assert result.code == 0, result.stderr

    by_service: dict[str, list[Any]] = {}
    for server in cloud.live():
        by_service.setdefault(server.metadata["reconciler:service"], []).append(server)
    assert {k: len(v) for k, v in by_service.items()} == {"web": 3, "api": 2}
    web = sorted(by_service["web"], key=lambda s: s.name)
    assert [s.name for s in web] == [f"production-web-g1-{n}" for n in (1, 2, 3)]
    for server in web:
        # Our tags are the server's metadata, under our own key names, set by the create.
        assert set(server.metadata) == {
            "reconciler:owner",
            "reconciler:env",
            "reconciler:service",
            "reconciler:generation",
            "reconciler:spec",
            "reconciler:op",
            "Name",
        }
        assert server.metadata["reconciler:owner"] == "acme"
        assert server.metadata["Name"] == server.name
        assert (server.image_id, server.flavor_id) == (IMAGE_V1, "2")  # m1.small is id 2
        assert decoded_user_data(server) == BOOT_SCRIPT
        assert not server.config_drive
    assert {s.image_id for s in by_service["api"]} == {IMAGE_V2}
    assert all(s.user_data is None for s in by_service["api"])
    assert len({s.metadata["reconciler:op"] for s in cloud.live()}) == 5
    assert generation_states(cli, env="production", service="web") == {1: "active"}
    # Five servers at two a page: every listing walked three pages.
    assert list_pages(cloud) >= 3

    # The password went to Keystone only: not to stdout/stderr (-v), not to the ledger.
    assert cloud.auth_bodies[0]["auth"]["identity"]["password"]["user"]["name"] == USER
    assert PASSWORD not in result.stdout + result.stderr
    assert "Adm1nPassFromNova" not in result.stdout + result.stderr  # Nova's adminPass
    for path in (tmp_path / "state").iterdir():
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path.name


def test_second_apply_finds_them_across_pages_and_changes_nothing(
    cli: Cli, desired: Path, cloud: FakeOpenStack
) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    mutations, pages = len(cloud.mutating_requests()), list_pages(cloud)

    again = cli("apply", "--desired", str(desired), "--json")
    assert again.code == 0, again.stderr
    assert json.loads(again.stdout)["actions"] == []
    assert len(cloud.mutating_requests()) == mutations
    assert list_pages(cloud) - pages >= 3  # the listing went to the last page

    plan = cli("plan", "--desired", str(desired), "--detailed-exitcode")
    assert plan.code == 0, plan.stderr
    assert len(cloud.mutating_requests()) == mutations


def test_an_image_change_makes_a_new_generation(
    cli: Cli, desired: Path, cloud: FakeOpenStack
) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    write_openstack_desired(desired, cloud, environments=services(web_image="ubuntu-24.04"))
    git_commit(desired, "web to ubuntu-24.04")

    plan = cli("plan", "--desired", str(desired), "--detailed-exitcode", "--json")
    assert plan.code == 2, plan.stderr
    document = json.loads(plan.stdout)
    assert document["summary"]["create"] == 3
    assert {(a["service"], a["generation"]) for a in document["actions"]} == {("web", 2)}

    assert cli("apply", "--desired", str(desired)).code == 0
    assert generation_states(cli, env="production", service="web") == {1: "standby", 2: "active"}
    assert generation_states(cli, env="production", service="api") == {1: "active"}
    web2 = [s for s in cloud.live() if s.metadata["reconciler:generation"] == "2"]
    assert len(web2) == 3 and {s.image_id for s in web2} == {IMAGE_V2}

    # The name resolved to an id, and the id is what listing reports: no replacement.
    before = len(cloud.mutating_requests())
    assert cli("plan", "--desired", str(desired), "--detailed-exitcode").code == 0
    assert len(cloud.mutating_requests()) == before


def test_a_server_nova_is_still_deleting_is_neither_destroyed_again_nor_serving(
    cli: Cli, desired: Path, cloud: FakeOpenStack
) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    wanted = services()
    wanted["production"]["web"]["count"] = 2
    write_openstack_desired(desired, cloud, environments=wanted)
    git_commit(desired, "web to two")
    cloud.delete_lingers = 3  # Nova takes its time: still listed on the next passes

    assert cli("apply", "--desired", str(desired)).code == 0
    (deleting,) = cloud.deleting()
    assert deleting.task_state == "deleting"
    mutations, lingers = len(cloud.mutating_requests()), deleting.lingers

    again = cli("apply", "--desired", str(desired), "--json")

    assert again.code == 0, again.stderr
    assert json.loads(again.stdout)["actions"] == []  # 2 serving, as wanted: no more deletes
    assert len(cloud.mutating_requests()) == mutations
    assert cloud.deleting() == [deleting] and deleting.lingers < lingers  # it was listed

    # Had it counted as serving, scaling back to three would create nothing.
    write_openstack_desired(desired, cloud, environments=services())
    git_commit(desired, "web back to three")
    plan = cli("plan", "--desired", str(desired), "--json")
    assert plan.code == 0, plan.stderr
    assert json.loads(plan.stdout)["summary"]["create"] == 1


def test_a_partial_listing_aborts_the_pass_with_no_mutation(
    cli: Cli, desired: Path, cloud: FakeOpenStack
) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    write_openstack_desired(desired, cloud, environments=services(web_image=IMAGE_V2))
    git_commit(desired, "web to v2")
    before = len(cloud.mutating_requests())
    # The second page's marker vanished between pages: Nova answers 400 for the page.
    cloud.partial_listing = True

    result = cli("apply", "--desired", str(desired))

    assert result.code != 0
    assert "ListServers" in result.stderr
    assert len(cloud.mutating_requests()) == before
    assert len(cloud.live()) == 5


def test_a_flavor_the_cloud_does_not_list_fails_the_plan_not_the_apply(
    cli: Cli, tmp_path: Path, cloud: FakeOpenStack
) -> None:
    wanted = services()
    wanted["production"]["web"]["size"] = "m1.huge"
    root = write_openstack_desired(tmp_path / "desired", cloud, environments=wanted)

    result = cli("plan", "--desired", str(root))

    assert result.code == 1
    assert "does not offer size 'm1.huge'" in result.stderr
    assert cloud.mutating_requests() == []


def test_validation_requires_price_per_hour_for_openstack(
    cli: Cli, tmp_path: Path, cloud: FakeOpenStack
) -> None:
    wanted = services()
    del wanted["production"]["api"]["price_per_hour"]
    root = write_openstack_desired(tmp_path / "desired", cloud, environments=wanted)

    result = cli("validate", "--desired", str(root))

    assert result.code == 1
    assert "price_per_hour: is required: provider cloud (driver openstack) has no prices" in (
        result.stdout + result.stderr
    )
    assert cloud.requests == []  # validation never contacts the cloud
