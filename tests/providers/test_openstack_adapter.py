"""The OpenStack adapter against the fake OpenStack, through the real libcloud driver:
tags as metadata, paging, throttling, idempotent creates, destroy, state mapping,
flavors and images, settings, and secrets kept out of messages."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from libcloud.common.exceptions import BaseHTTPError

from reconciler.errors import (
    ConfigurationError,
    ObservationIncomplete,
    OutcomeUnknown,
    ProviderError,
    Throttled,
    TransientError,
)
from reconciler.model import InstanceState, ProviderProfile, SecretRef
from reconciler.providers.base import LaunchRequest, ownership_tags
from reconciler.providers.openstack.adapter import OpenStackProvider, build, translate
from reconciler.providers.openstack.nova import normalized_auth_url
from reconciler.providers.registry import build_provider
from tests.support.openstack_support import (
    IMAGE_V1,
    IMAGE_V1_NEWER,
    IMAGE_V2,
    NETWORK_ID,
    PASSWORD,
    PROJECT,
    USER,
    FakeOpenStack,
    decoded_user_data,
    fake_openstack,
)


@pytest.fixture
def cloud() -> Iterator[FakeOpenStack]:
    with fake_openstack() as fake:
        yield fake


def provider(cloud: FakeOpenStack, **options: Any) -> OpenStackProvider:
    settings: dict[str, Any] = {"user": USER, "password": PASSWORD, "tenant": PROJECT}
    settings.update(options)
    return OpenStackProvider("cloud", auth_url=cloud.auth_url, **settings)


def launch(
    p: OpenStackProvider,
    *,
    slot: int,
    op: str,
    owner: str = "acme",
    image: str = IMAGE_V1,
    user_data: str | None = None,
) -> str:
    tags = ownership_tags(
        owner=owner, env="prod", service="web", generation=1, fingerprint="f" * 16, op=op, slot=slot
    )
    request = LaunchRequest(
        name=tags["Name"], image=image, size="m1.small", tags=tags, op=op, user_data=user_data
    )
    return p.create_instance(request).id


def count(cloud: FakeOpenStack, request: str) -> int:
    """How many times `request` ("METHOD /path" under Nova's root) was sent."""
    method, path = request.split(" ", 1)
    return sum(1 for m, p in cloud.requests if (m, p) == (method, "/compute/v2.1" + path))


def test_tags_round_trip_as_server_metadata_under_our_own_names(cloud: FakeOpenStack) -> None:
    p = provider(cloud)
    tags = ownership_tags(
        owner="acme", env="prod", service="web", generation=4, fingerprint="0123456789abcdef",
        op="op-7", slot=2,
    )  # fmt: skip
    request = LaunchRequest(
        name=tags["Name"], image=IMAGE_V1, size="m1.small", tags=tags, op="op-7"
    )
    created = p.create_instance(request)

    assert cloud.servers[created.id].metadata == tags  # no mapping: Nova takes our keys
    (seen,) = p.list_owned("acme")
    assert seen.tags == tags
    assert (seen.env, seen.service, seen.generation, seen.slot, seen.op, seen.name) == (
        "prod", "web", 4, 2, "op-7", "prod-web-g4-2",
    )  # fmt: skip
    # Image and size read back exactly as create reported them (the tamper check).
    assert (seen.image, seen.size) == (created.image, created.size) == (IMAGE_V1, "m1.small")
    assert seen.state is InstanceState.RUNNING and created.state is InstanceState.PENDING
    assert seen.private_ip and seen.launched_at is not None


def test_metadata_nova_would_refuse_is_refused_before_any_request(cloud: FakeOpenStack) -> None:
    p = provider(cloud)
    tags = {"reconciler:owner": "acme", "Name": "x" * 256}
    with pytest.raises(ProviderError, match="longer than Nova's 255"):
        p.create_instance(
            LaunchRequest(name="x", image=IMAGE_V1, size="m1.small", tags=tags, op="o")
        )
    assert cloud.requests == []


def test_listing_follows_next_links_to_the_last_page_and_filters_owner(
    cloud: FakeOpenStack,
) -> None:
    p = provider(cloud)
    ids = {launch(p, slot=n, op=f"op{n}") for n in range(1, 8)}
    foreign = launch(p, slot=1, op="foreign", owner="other")
    pages_before = count(cloud, "GET /servers/detail")

    seen = p.list_owned("acme")

    assert {i.id for i in seen} == ids
    # 8 servers, 2 a page: four full pages, each with a next link, then an empty one.
    assert count(cloud, "GET /servers/detail") - pages_before == 5
    assert [i.id for i in p.list_unowned("acme")] == [foreign]


@pytest.mark.parametrize(
    "fault", ["partial_listing", "repeat_next_link", "fail_later_pages"], ids=str
)
def test_a_listing_that_cannot_be_read_to_the_end_is_incomplete(
    cloud: FakeOpenStack, fault: str
) -> None:
    p = provider(cloud, retry_attempts=2)
    for n in range(1, 6):
        launch(p, slot=n, op=f"op{n}")
    setattr(cloud, fault, True)

    with pytest.raises(ObservationIncomplete, match="cloud: listing"):
        p.list_owned("acme")
    with pytest.raises(ObservationIncomplete):
        p.find_by_op("acme", "op1")


@pytest.mark.parametrize("status", [429, 413])
def test_throttling_is_retried_after_retry_after(cloud: FakeOpenStack, status: int) -> None:
    p = provider(cloud)
    launch(p, slot=1, op="a")
    cloud.throttle_status = status
    cloud.throttle(2)
    before = count(cloud, "GET /servers/detail")

    assert len(p.list_owned("acme")) == 1
    assert count(cloud, "GET /servers/detail") - before == 3  # two refused, one answered

    cloud.throttle(2)
    launch(p, slot=2, op="b")  # a throttled create was never executed: sent again
    assert len(cloud.servers) == 2


def test_errors_are_translated_by_what_to_do() -> None:
    limited = translate(BaseHTTPError(413, "413 overLimit", {"retry-after": "7"}), "X", region="R")
    assert isinstance(limited, Throttled) and limited.retry_after == 7.0
    # 413 without Retry-After is a request too large or over quota: retrying won't help.
    assert type(translate(BaseHTTPError(413, "413 big", {}), "X", region="R")) is ProviderError
    assert type(translate(BaseHTTPError(403, "403 Quota exceeded", {}), "X", region="R")) is (
        ProviderError
    )


def test_a_create_whose_answer_was_lost_is_found_by_its_op_not_sent_twice(
    cloud: FakeOpenStack,
) -> None:
    p = provider(cloud)
    cloud.create_fails_after_commit = 1  # Nova made the server, then answered 500

    server_id = launch(p, slot=1, op="op-lost")

    assert list(cloud.servers) == [server_id]
    assert count(cloud, "POST /servers") == 1
    assert p.find_by_op("acme", "op-lost") is not None
    assert p.find_by_op("acme", "no-such-op") is None


@pytest.mark.parametrize("soft_delete", [False, True], ids=["deleting", "soft-deleted"])
def test_a_destroyed_server_still_listed_reads_as_gone_until_nova_drops_it(
    cloud: FakeOpenStack, soft_delete: bool
) -> None:
    p = provider(cloud)
    keep, gone = launch(p, slot=1, op="a"), launch(p, slot=2, op="b")
    p.list_owned("acme")  # both ACTIVE now
    cloud.soft_delete = soft_delete

    p.destroy_instance(gone)
    p.destroy_instance(gone)  # accepted again while Nova tears it down

    # Nova still lists it ("deleting", or SOFT_DELETED): gone, not serving, not found by op.
    states = {i.id: i.state for i in p.list_owned("acme")}
    assert states == {keep: InstanceState.RUNNING, gone: InstanceState.GONE}
    assert p.find_by_op("acme", "b") is None
    assert [i.id for i in p.list_owned("acme")] == [keep]
    p.destroy_instance(gone)  # 404: already gone, the goal of a destroy is met
    assert count(cloud, f"DELETE /servers/{gone}") == 3


def test_a_server_libcloud_cannot_read_makes_the_listing_incomplete(cloud: FakeOpenStack) -> None:
    p = provider(cloud)
    for n in range(1, 4):
        launch(p, slot=n, op=f"op{n}")
    list(cloud.servers.values())[1].self_link = False  # libcloud's _to_node: StopIteration

    with pytest.raises(ObservationIncomplete, match=r"unreadable server \(StopIteration\)"):
        p.list_owned("acme")
    with pytest.raises(ObservationIncomplete):
        p.list_unowned("acme")
    with pytest.raises(ObservationIncomplete):
        p.find_by_op("acme", "op1")
    # A create whose answer was lost cannot be checked either: it is not sent again.
    cloud.create_fails_after_commit = 1
    with pytest.raises(TransientError):
        launch(provider(cloud, retry_attempts=2), slot=4, op="op4")
    assert count(cloud, "POST /servers") == 4


def test_any_other_failure_leaves_as_our_error_without_its_text() -> None:
    for failure in (StopIteration(), RuntimeError("body: canary-9f8e"), IndexError("canary-9f8e")):
        error = translate(failure, "ListServers", region="R")
        assert isinstance(error, OutcomeUnknown), failure
        assert "canary" not in str(error) and type(failure).__name__ in str(error)
    incomplete = ObservationIncomplete("x")
    assert translate(incomplete, "ListServers", region="R") is incomplete


def test_a_malformed_answer_leaves_as_our_error(cloud: FakeOpenStack) -> None:
    p = provider(cloud)
    server_id = launch(p, slot=1, op="a")
    cloud.mangle = {
        "/compute/v2.1/flavors/detail": lambda body: {"flavors": [{"id": "1"}]},
        "/image/v2/images": lambda body: {"images": [None]},
        f"/compute/v2.1/servers/{server_id}": lambda body: {
            "server": {"OS-EXT-SRV-ATTR:user_data": "not base64!"}
        },
    }

    fresh = provider(cloud, retry_attempts=1)
    with pytest.raises(ObservationIncomplete, match=r"ListFlavors: unreadable .*\(KeyError\)"):
        fresh.known_sizes()
    with pytest.raises(ObservationIncomplete, match="ListFlavors"):
        fresh.list_owned("acme")
    with pytest.raises(ProviderError, match=r"ListImages: unreadable .*\(AttributeError\)"):
        fresh.resolve_image("ubuntu-24.04")
    with pytest.raises(ProviderError, match=r"ShowServer: unreadable .*\(Error\)"):
        fresh.user_data_of(server_id)


@pytest.mark.parametrize("status", [403, 413])
def test_a_create_over_quota_fails_at_once_and_is_not_retried(
    cloud: FakeOpenStack, status: int
) -> None:
    p = provider(cloud)
    cloud.quota_status = status  # 413 without Retry-After: old Nova's quota answer

    with pytest.raises(ProviderError, match="Quota exceeded"):
        launch(p, slot=1, op="a")

    assert count(cloud, "POST /servers") == 1 and cloud.servers == {}


def test_later_pages_follow_the_next_links_query_not_its_host(cloud: FakeOpenStack) -> None:
    p = provider(cloud, page_size=1000)
    for n in range(1, 4):
        launch(p, slot=n, op=f"op{n}")
    first = len(cloud.requests)

    assert len(p.list_owned("acme")) == 3

    # Nova caps the page at 2 and links to the next one on a host this client cannot
    # reach; the query (our limit, its marker) is what the next request sends.
    pages = [
        query
        for (_, path), query in zip(cloud.requests[first:], cloud.queries[first:], strict=True)
        if path == "/compute/v2.1/servers/detail"
    ]
    assert [sorted(q) for q in pages] == [["limit"], ["limit", "marker"]]
    assert {q["limit"][0] for q in pages} == {"1000"}


@pytest.mark.parametrize(
    ("status", "task_state", "expected"),
    [
        ("ACTIVE", None, InstanceState.RUNNING),
        ("BUILD", "spawning", InstanceState.PENDING),
        ("REBOOT", "rebooting", InstanceState.PENDING),
        ("SHUTOFF", None, InstanceState.STOPPED),
        ("ERROR", None, InstanceState.STOPPED),
        ("SHELVED_OFFLOADED", None, InstanceState.STOPPED),
        ("SOFT_DELETED", None, InstanceState.GONE),
        ("DELETED", None, InstanceState.GONE),
        ("ACTIVE", "deleting", InstanceState.GONE),
    ],
)
def test_nova_statuses_map_to_what_planning_needs(
    cloud: FakeOpenStack, status: str, task_state: str | None, expected: InstanceState
) -> None:
    p = provider(cloud)
    server = cloud.servers[launch(p, slot=1, op="a")]
    server.status, server.task_state = status, task_state
    cloud.boots = False  # the server stays as set

    (seen,) = p.list_owned("acme")

    assert seen.state is expected


def test_known_sizes_are_enabled_flavor_names_read_once(cloud: FakeOpenStack) -> None:
    p = provider(cloud)
    assert p.known_sizes() == frozenset({"m1.tiny", "m1.small", "m1.medium"})
    launch(p, slot=1, op="a")
    p.list_owned("acme")
    assert p.known_sizes() == frozenset({"m1.tiny", "m1.small", "m1.medium"})
    assert count(cloud, "GET /flavors/detail") == 1
    assert p.price_per_hour("m1.small") is None  # libcloud has no OpenStack prices
    with pytest.raises(ProviderError, match=r"no flavor named 'm1\.retired'"):
        p.create_instance(
            LaunchRequest(
                name="x",
                image=IMAGE_V1,
                size="m1.retired",
                tags={"reconciler:owner": "acme"},
                op="o",
            )
        )


def test_an_image_name_resolves_to_the_newest_upload_once(cloud: FakeOpenStack) -> None:
    p = provider(cloud)
    assert p.resolve_image("ubuntu-22.04") == IMAGE_V1_NEWER
    assert p.resolve_image("ubuntu-22.04") == IMAGE_V1_NEWER
    assert p.resolve_image(IMAGE_V2) == IMAGE_V2  # an id passes through
    assert sum(1 for _, path in cloud.requests if path == "/image/v2/images") == 1
    with pytest.raises(ProviderError, match="no active image named 'centos-7'"):
        p.resolve_image("centos-7")


def test_user_data_and_config_drive_and_network_from_the_profile(
    cloud: FakeOpenStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OS_U", USER)
    monkeypatch.setenv("OS_P", PASSWORD)
    profile = ProviderProfile(
        name="cloud",
        driver="openstack",
        region="RegionOne",
        credentials={"key": SecretRef("env", "OS_U"), "secret": SecretRef("env", "OS_P")},
        options={
            "auth_url": cloud.auth_url + "/v3/",  # written the usual way, with its version
            "tenant": PROJECT,
            "network": "private",  # a name, looked up in Neutron
            "config_drive": "true",
        },
    )
    calls: list[tuple[str, str]] = []
    p = build_provider(profile, on_call=lambda provider, action: calls.append((provider, action)))
    assert isinstance(p, OpenStackProvider)  # the registry found this adapter

    server_id = launch(p, slot=1, op="a", user_data="#!/bin/sh\necho hello\n")

    server = cloud.servers[server_id]
    assert decoded_user_data(server) == "#!/bin/sh\necho hello\n"
    assert server.config_drive and server.networks == [NETWORK_ID]
    assert p.user_data_of(server_id) == "#!/bin/sh\necho hello\n"
    names = [action for _, action in calls]
    assert {"Authenticate", "ListFlavors", "ListNetworks", "CreateServer", "ShowServer"} <= set(
        names
    )
    assert names.count("CreateServer") == 1


def test_an_endpoint_replaces_the_catalogs_compute_endpoint_only(cloud: FakeOpenStack) -> None:
    p = provider(cloud, endpoint=cloud.base_url + "/compute/v2.1/")
    launch(p, slot=1, op="a", image="ubuntu-24.04")  # Glance still found through the catalog
    assert len(p.list_owned("acme")) == 1

    elsewhere = provider(cloud, region="RegionTwo")  # the catalog's RegionTwo Nova
    with pytest.raises(ObservationIncomplete):
        elsewhere.list_owned("acme")
    assert ("GET", "/region-two/compute/v2.1/flavors/detail") in cloud.requests

    nowhere = provider(cloud, region="RegionNine")
    with pytest.raises(ProviderError, match=r"no single public endpoint .* 'RegionNine'"):
        nowhere.known_sizes()


def test_a_wrong_password_is_reported_without_it(cloud: FakeOpenStack) -> None:
    p = provider(cloud, password="canary-wrong-9d8e7f")
    with pytest.raises(ObservationIncomplete) as caught:
        p.list_owned("acme")
    assert "rejected the credentials" in str(caught.value)
    assert "canary-wrong-9d8e7f" not in str(caught.value) + repr(caught.value) + repr(p)


def test_settings_are_checked_when_the_adapter_is_built() -> None:
    with pytest.raises(ConfigurationError, match="auth_url must be an http"):
        normalized_auth_url("keystone.example:5000")
    assert normalized_auth_url("https://keystone.example:5000/v3/") == (
        "https://keystone.example:5000"
    )
    profile = ProviderProfile(name="cloud", driver="openstack", options={"tenant": PROJECT})
    with pytest.raises(ConfigurationError, match=r"credentials\.key is required"):
        build(profile)


def test_keystone_is_asked_for_a_project_scoped_token_in_the_given_domains(
    cloud: FakeOpenStack,
) -> None:
    p = provider(cloud, domain="corp", project_domain_id="4f1e2d3c")
    p.known_sizes()

    (body,) = cloud.auth_bodies
    identity = body["auth"]["identity"]
    assert identity["methods"] == ["password"]
    assert identity["password"]["user"]["domain"] == {"name": "corp"}
    assert body["auth"]["scope"]["project"] == {"domain": {"id": "4f1e2d3c"}, "name": PROJECT}


def test_a_throttled_listing_is_resent_no_sooner_than_retry_after(cloud: FakeOpenStack) -> None:
    p = provider(cloud)
    launch(p, slot=1, op="a")
    cloud.retry_after = "1"
    cloud.throttle(1)

    p.list_owned("acme")

    (gap,) = cloud.gaps("GET", "/servers/detail")  # refused, then resent once
    assert gap >= 1.0


def test_a_catalog_without_service_names_is_followed_by_service_type(
    cloud: FakeOpenStack,
) -> None:
    cloud.catalog_without_names = True  # as in libcloud's own recorded v3 token
    p = provider(cloud)
    launch(p, slot=1, op="nameless")
    assert len(p.list_owned("acme")) == 1


def test_two_compute_services_are_told_apart_by_name(cloud: FakeOpenStack) -> None:
    cloud.second_compute_named = "other-compute"
    p = provider(cloud)
    launch(p, slot=1, op="two")
    assert len(p.list_owned("acme")) == 1
    assert not any("/other/" in path for _, path in cloud.requests)


def test_a_server_in_an_unreachable_cell_makes_the_listing_incomplete(
    cloud: FakeOpenStack,
) -> None:
    p = provider(cloud)
    launch(p, slot=1, op="cells")
    cloud.down_cell_servers = ["0f0e0d0c-0000-4000-8000-00000000cell"]
    with pytest.raises(ObservationIncomplete, match="cells Nova cannot reach"):
        p.list_owned("acme")


def test_a_nova_older_than_2_69_is_refused_not_trusted(cloud: FakeOpenStack) -> None:
    # Below 2.69 the server of an unreachable cell would simply be missing from the
    # listing, and read as gone.
    cloud.max_microversion = (2, 60)
    cloud.down_cell_servers = ["0f0e0d0c-0000-4000-8000-00000000cell"]
    p = provider(cloud)
    with pytest.raises(ObservationIncomplete, match=r"microversion 2\.69"):
        p.list_owned("acme")
