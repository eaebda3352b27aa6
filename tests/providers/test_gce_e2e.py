"""End to end through the CLI with `driver: gce`: a real subprocess, the real libcloud
GCE connection (JWT, token exchange, JSON API) over HTTP against the fake GCE."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.providers.gce.labels import tags_from
from tests.conftest import Cli
from tests.support.desired_builder import git_commit
from tests.support.fakecloud import serving
from tests.support.gce_support import (
    EMAIL,
    PROJECT,
    TOKEN,
    FakeGce,
    pem_canaries,
    service_account_key,
    write_gce_desired,
)

IMAGE_V1 = "debian-12-web-v1"
IMAGE_V2 = "projects/debian-cloud/global/images/debian-12-bookworm-v20240515"
SERVICES = {
    "production": {
        "web": {"image": IMAGE_V1, "count": 3, "size": "e2-small", "user_data": "userdata/boot.sh"},
        "api": {"image": IMAGE_V1, "count": 2},
    },
    "staging": {"web": {"image": IMAGE_V1, "count": 1, "size": "n1-standard-1"}},
}


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGce]:
    pem, _ = service_account_key()
    monkeypatch.setenv("TEST_GCE_EMAIL", EMAIL)
    monkeypatch.setenv("TEST_GCE_KEY", pem)  # the Cli fixture passes the environment on
    with serving(FakeGce()) as fake:
        yield fake


@pytest.fixture
def desired(tmp_path: Path, cloud: FakeGce) -> Path:
    root = write_gce_desired(tmp_path / "desired", endpoint=cloud.base_url, environments=SERVICES)
    git_commit(root, "v1")
    return root


def owned(cloud: FakeGce) -> dict[str, dict[str, str]]:
    """Instance name -> our tags, read from the fake's labels with the adapter's mapping."""
    return {name: tags_from(i["labels"]) for name, i in cloud.instances.items()}


def states(cli: Cli, env: str, service: str) -> dict[int, str]:
    result = cli("ledger", "generations", "--json")
    assert result.code == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return {r["number"]: r["state"] for r in rows if (r["env"], r["service"]) == (env, service)}


def test_apply_from_empty_creates_labelled_instances_with_the_startup_script(
    cli: Cli, desired: Path, cloud: FakeGce, tmp_path: Path
) -> None:
    plan = cli("plan", "--desired", str(desired), "--json")
    assert plan.code == 0, plan.stderr
    assert json.loads(plan.stdout)["summary"]["create"] == 6
    assert cloud.mutating_requests() == []

    result = cli("-v", "apply", "--desired", str(desired))
    assert result.code == 0, result.stderr

    tags = owned(cloud)
    by_service: dict[tuple[str, str], list[str]] = {}
    for name, t in tags.items():
        by_service.setdefault((t["reconciler:env"], t["reconciler:service"]), []).append(name)
    assert {k: len(v) for k, v in by_service.items()} == {
        ("production", "web"): 3,
        ("production", "api"): 2,
        ("staging", "web"): 1,
    }
    web = sorted(by_service[("production", "web")], key=lambda n: tags[n]["Name"])
    assert [tags[n]["Name"] for n in web] == [f"production-web-g1-{n}" for n in (1, 2, 3)]
    assert len({tags[n]["reconciler:op"] for n in web}) == 3
    for name in web:
        assert name.startswith(tags[name]["Name"] + "-")
        assert tags[name]["reconciler:owner"] == "acme"
        assert cloud.metadata(name)["startup-script"] == "#!/bin/sh\necho booted\n"
        assert cloud.instances[name]["machineType"].endswith("/machineTypes/e2-small")
    assert "startup-script" not in cloud.metadata(by_service[("production", "api")][0])
    assert states(cli, "production", "web") == {1: "active"}

    # Credentials and the access token never reach output or the ledger.
    ledger = (tmp_path / "state" / "ledger.sqlite").read_bytes().decode("latin-1")
    for text in (result.stdout + result.stderr + plan.stderr, ledger):
        assert TOKEN not in text
        assert not any(line in text for line in pem_canaries())
    assert cloud.token_requests == 2  # one per process


def test_second_apply_finds_everything_across_pages_and_changes_nothing(
    cli: Cli, desired: Path, cloud: FakeGce
) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    before = len(cloud.mutating_requests())
    listings_before = len(cloud.list_filters)

    again = cli("apply", "--desired", str(desired), "--json")
    assert again.code == 0, again.stderr
    assert json.loads(again.stdout)["actions"] == []
    assert len(cloud.mutating_requests()) == before
    assert len(cloud.list_filters) - listings_before == 3  # six instances, two a page

    plan = cli("plan", "--desired", str(desired), "--detailed-exitcode")
    assert plan.code == 0, plan.stdout + plan.stderr
    assert len(cloud.mutating_requests()) == before


def test_image_change_makes_a_new_generation(cli: Cli, desired: Path, cloud: FakeGce) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    services = json.loads(json.dumps(SERVICES))
    services["production"]["web"]["image"] = IMAGE_V2
    write_gce_desired(desired, endpoint=cloud.base_url, environments=services)
    git_commit(desired, "web to bookworm")

    result = cli("apply", "--desired", str(desired), "--json")
    assert result.code == 0, result.stderr
    created = [a for a in json.loads(result.stdout)["actions"] if a["kind"] == "create"]
    assert {(a["service"], a["generation"]) for a in created} == {("web", 2)} and len(created) == 3
    assert states(cli, "production", "web") == {1: "standby", 2: "active"}
    assert states(cli, "production", "api") == {1: "active"}
    new = [b for b in cloud.bodies if b["labels"]["reconciler_generation"] == "2"]
    assert {b["disks"][0]["initializeParams"]["sourceImage"] for b in new} == {IMAGE_V2}
    assert cli("plan", "--desired", str(desired), "--detailed-exitcode").code == 0


def test_partial_listing_aborts_the_pass_without_mutation(
    cli: Cli, desired: Path, cloud: FakeGce
) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    services = json.loads(json.dumps(SERVICES))
    services["production"]["web"]["image"] = IMAGE_V2
    write_gce_desired(desired, endpoint=cloud.base_url, environments=services)
    git_commit(desired, "web to bookworm")
    before = len(cloud.mutating_requests())
    cloud.partial_listing = True

    result = cli("apply", "--desired", str(desired))

    assert result.code != 0
    assert "UNREACHABLE" in result.stderr
    assert len(cloud.mutating_requests()) == before


def test_a_size_the_zone_does_not_offer_fails_before_any_change(
    cli: Cli, desired: Path, cloud: FakeGce
) -> None:
    services = json.loads(json.dumps(SERVICES))
    services["staging"]["web"]["size"] = "t3.micro"
    write_gce_desired(desired, endpoint=cloud.base_url, environments=services)

    result = cli("apply", "--desired", str(desired))

    assert result.code != 0
    assert "does not offer size 't3.micro'" in result.stderr
    assert cloud.mutating_requests() == []


def test_a_size_libcloud_cannot_price_needs_price_per_hour_before_any_change(
    cli: Cli, desired: Path, cloud: FakeGce
) -> None:
    services = json.loads(json.dumps(SERVICES))
    services["staging"]["web"]["size"] = "t2d-standard-1"  # listed by the zone, not priced
    write_gce_desired(desired, endpoint=cloud.base_url, environments=services)

    refused = cli("plan", "--desired", str(desired))

    assert refused.code != 0
    assert "services.web.price_per_hour" in refused.stderr
    assert "no price for size 't2d-standard-1'" in refused.stderr
    assert cloud.mutating_requests() == []

    services["staging"]["web"]["price_per_hour"] = 0.042
    write_gce_desired(desired, endpoint=cloud.base_url, environments=services)
    assert cli("apply", "--desired", str(desired)).code == 0
    costs = json.loads(cli("ledger", "cost", "--by", "service", "--json").stdout)
    staging = [row for row in costs["rows"] if row["env"] == "staging"]
    assert staging and staging[0]["cost"] > 0  # priced at the given rate, not free


def test_a_family_is_recorded_as_its_image_so_a_generation_never_mixes_images(
    cli: Cli, desired: Path, cloud: FakeGce
) -> None:
    cloud.families[(PROJECT, "web")] = "web-v1"
    services = json.loads(json.dumps(SERVICES))
    services["production"]["web"]["image"] = "family/web"
    write_gce_desired(desired, endpoint=cloud.base_url, environments=services)
    git_commit(desired, "web from its family")
    assert cli("apply", "--desired", str(desired)).code == 0
    v1 = f"projects/{PROJECT}/global/images/web-v1"
    web = [n for n, t in owned(cloud).items() if t["reconciler:service"] == "web"
           and t["reconciler:env"] == "production"]  # fmt: skip
    assert {cloud.metadata(n)["reconciler-image"] for n in web} == {v1}

    # The family moves on, and one instance of the generation is lost: its replacement
    # is the generation's image, not the family's new one.
    cloud.families[(PROJECT, "web")] = "web-v2"
    del cloud.instances[web[0]]
    result = cli("apply", "--desired", str(desired), "--json")
    assert result.code == 0, result.stderr
    created = [a for a in json.loads(result.stdout)["actions"] if a["kind"] == "create"]
    assert [(a["service"], a["generation"]) for a in created] == [("web", 1)]
    assert cloud.bodies[-1]["disks"][0]["initializeParams"]["sourceImage"] == v1
    assert cli("plan", "--desired", str(desired), "--detailed-exitcode").code == 0


def test_a_deleted_instance_still_listed_stopping_is_neither_destroyed_again_nor_counted(
    cli: Cli, desired: Path, cloud: FakeGce
) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    services = json.loads(json.dumps(SERVICES))
    services["production"]["web"]["count"] = 2
    write_gce_desired(desired, endpoint=cloud.base_url, environments=services)
    git_commit(desired, "web: two")
    shrink = cli("apply", "--desired", str(desired), "--json")
    assert shrink.code == 0, shrink.stderr
    (destroy,) = [a for a in json.loads(shrink.stdout)["actions"] if a["kind"] == "destroy"]
    stopping = destroy["instance"]
    before, shown = len(cloud.mutating_requests()), len(cloud.listed_stopping)

    again = cli("apply", "--desired", str(desired), "--json")

    assert again.code == 0, again.stderr
    assert cloud.listed_stopping[shown:] == [stopping]  # this pass saw it, STOPPING
    assert json.loads(again.stdout)["actions"] == []  # no destroy, and no create either:
    assert len(cloud.mutating_requests()) == before  # two serve, as desired


def test_an_instance_deleted_by_the_last_pass_does_not_read_as_alive_again(
    cli: Cli, desired: Path, cloud: FakeGce
) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    services = {**SERVICES, "production": {**SERVICES["production"],
                                           "api": {"image": IMAGE_V1, "count": 1}}}  # fmt: skip
    write_gce_desired(desired, endpoint=cloud.base_url, environments=services)
    git_commit(desired, "api: one instance")
    cloud.deleted_listed_running = 2  # the next two listings still say RUNNING
    scaled = cli("apply", "--desired", str(desired))
    assert scaled.code == 0, scaled.stderr
    before = len(cloud.mutating_requests())

    # A new process: the adapter that deleted it is gone, the ledger remembers.
    again = cli("apply", "--desired", str(desired))

    assert again.code == 0, again.stderr
    assert len(cloud.mutating_requests()) == before


@pytest.mark.parametrize("status", ["HIBERNATING", "SOMETHING_NEW"])
def test_a_status_nobody_knows_is_not_serving_and_is_reported(
    cli: Cli, desired: Path, cloud: FakeGce, status: str
) -> None:
    assert cli("apply", "--desired", str(desired)).code == 0
    odd = next(n for n, t in owned(cloud).items() if t["reconciler:service"] == "api")
    cloud.instances[odd]["status"] = status

    result = cli("apply", "--desired", str(desired))

    assert result.code == 0, result.stderr
    events = json.loads(cli("ledger", "events", "--json").stdout)
    (event,) = [e for e in events if e["kind"] == "instance_state_unknown"]
    assert event["instance"] == odd and status in json.dumps(event["detail"])
    # Not counted as serving: its slot got a new instance.
    api = [n for n, t in owned(cloud).items() if t["reconciler:service"] == "api"]
    assert len(api) == 3


@pytest.mark.parametrize(("state", "exit_code", "said"), [
    ("DEPRECATED", 0, "machine type e2-small is DEPRECATED"),
    ("OBSOLETE", 1, "does not offer size 'e2-small'"),
    ("DELETED", 1, "does not offer size 'e2-small'"),
])  # fmt: skip
def test_plan_warns_of_a_deprecated_machine_type_and_refuses_an_obsolete_one(
    cli: Cli, desired: Path, cloud: FakeGce, state: str, exit_code: int, said: str
) -> None:
    cloud.deprecated_types = {"e2-small": (state, "e2-medium")}

    result = cli("plan", "--desired", str(desired))

    assert result.code == exit_code, result.stderr
    assert said in result.stderr
    assert cloud.mutating_requests() == []
