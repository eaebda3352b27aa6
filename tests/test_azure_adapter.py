"""The Azure adapter through the real libcloud ARM driver, over HTTP, against the fake
Azure of tests/azure_support.py: paging, tags, user data, leftovers, retries, prices."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from libcloud.pricing import get_size_price

from reconciler.errors import ObservationIncomplete, ProviderError
from reconciler.model import InstanceState
from reconciler.providers.azure import AzureProvider
from reconciler.providers.azure_resources import image_of, image_reference, vm_name
from reconciler.providers.base import LaunchRequest, ownership_tags
from tests.azure_support import (
    CLIENT_ID,
    IMAGE_V1,
    LOCATION,
    RESOURCE_GROUP,
    SSH_KEY,
    SUBSCRIPTION,
    TENANT,
    AzureCloud,
)
from tests.fakecloud import serving

SECRET = "canary-client-secret-4d1e"


@pytest.fixture
def fake() -> Iterator[AzureCloud]:
    with serving(AzureCloud(client_secret=SECRET)) as cloud:
        yield cloud


def provider(fake: AzureCloud, *, secret: str = SECRET, **options: Any) -> AzureProvider:
    return AzureProvider(
        "cloud",
        client_id=CLIENT_ID,
        client_secret=secret,
        tenant=TENANT,
        subscription=SUBSCRIPTION,
        resource_group=RESOURCE_GROUP,
        network="reconciler-vnet",
        subnet="default",
        location=LOCATION,
        ssh_key=SSH_KEY,
        endpoint=fake.base_url,
        **options,
    )


def request(
    *, owner: str = "acme", slot: int = 1, op: str, size: str = "Standard_B1s", **extra: Any
) -> LaunchRequest:
    tags = ownership_tags(owner=owner, env="prod", service="web", generation=1,
                          fingerprint="f" * 16, op=op, slot=slot)  # fmt: skip
    return LaunchRequest(name=tags["Name"], image=IMAGE_V1, size=size, tags=tags, op=op, **extra)


def test_listing_follows_every_next_link_and_joins_nic_addresses(fake: AzureCloud) -> None:
    p = provider(fake)
    ids = {p.create_instance(request(slot=n, op=f"{n:032x}")).id for n in range(1, 6)}
    fake.add_foreign_vm("someones-vm", {"team": "data"})

    owned = p.list_owned("acme")

    assert {i.id for i in owned} == ids
    assert fake.list_pages("virtualMachines") == 3  # 6 VMs, 2 a page
    assert all(i.state is InstanceState.RUNNING for i in owned)
    assert all(i.private_ip and i.private_ip.startswith("10.0.") for i in owned)
    assert all(i.image == IMAGE_V1 and i.size == "Standard_B1s" for i in owned)
    assert all(i.launched_at is not None for i in owned)
    assert [i.name for i in p.list_unowned("acme")] == [None]
    # No per-VM requests: no instance view, no NIC by id (libcloud's list_nodes makes both).
    assert not [path for method, path in fake.requests if "instanceView" in path.lower()]
    assert not [p for m, p in fake.requests if m == "GET" and p.endswith("-nic")]


def test_partial_listing_is_refused_not_returned(fake: AzureCloud) -> None:
    p = provider(fake)
    for n in range(1, 4):
        p.create_instance(request(slot=n, op=f"{n:032x}"))
    fake.partial_listing = True  # the first page reads; the next cannot

    with pytest.raises(ObservationIncomplete, match="listing failed"):
        p.list_owned("acme")


def test_tags_are_written_and_read_back_under_our_own_names(fake: AzureCloud) -> None:
    p = provider(fake)
    launch = request(op="a" * 32)

    created = p.create_instance(launch)

    assert fake.vm_puts[0]["tags"] == dict(launch.tags)  # in the create call itself
    (seen,) = p.list_owned("acme")
    assert seen.tags == created.tags == dict(launch.tags)
    assert (seen.env, seen.service, seen.generation, seen.slot, seen.op, seen.fingerprint) == (
        "prod", "web", 1, 1, "a" * 32, "f" * 16,
    )  # fmt: skip
    assert seen.image == created.image  # the tamper rule compares these


def test_user_data_rides_as_custom_data_and_reads_back(fake: AzureCloud) -> None:
    p = provider(fake)
    script = "#!/bin/sh\necho booted\n"

    created = p.create_instance(request(op="b" * 32, user_data=script))

    name = vm_name("prod-web-g1-1", "b" * 32)
    assert fake.custom_data(name) == script
    os_profile = fake.vm_puts[0]["properties"]["osProfile"]
    assert os_profile["linuxConfiguration"]["disablePasswordAuthentication"] is True
    assert os_profile["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"] == SSH_KEY
    assert "adminPassword" not in os_profile
    assert p.user_data_of(created.id) == script
    bare = p.create_instance(request(slot=2, op="c" * 32))
    assert p.user_data_of(bare.id) is None


def test_destroy_takes_the_nic_and_disk_with_the_vm_and_repeats_harmlessly(
    fake: AzureCloud,
) -> None:
    p = provider(fake)
    keep = p.create_instance(request(slot=1, op="d" * 32))
    gone = p.create_instance(request(slot=2, op="e" * 32))
    assert len(fake.nics) == 2 and len(fake.disks) == 2

    p.destroy_instance(gone.id)
    p.destroy_instance(gone.id)  # already gone: not an error

    assert [i.id for i in p.list_owned("acme")] == [keep.id]
    assert list(fake.nics) == [vm_name("prod-web-g1-1", "d" * 32) + "-nic"]
    assert fake.disks == {vm_name("prod-web-g1-1", "d" * 32) + "-osdisk"}


def test_throttling_is_retried(fake: AzureCloud) -> None:
    p = provider(fake)
    fake.throttle(2)
    created = p.create_instance(request(op="f" * 32))
    fake.throttle(2)

    assert [i.id for i in p.list_owned("acme")] == [created.id]
    assert len(fake.vms) == 1


def test_a_create_whose_answer_was_lost_is_found_by_name_not_sent_again(
    fake: AzureCloud,
) -> None:
    p = provider(fake)
    fake.lose_next_vm_response = True  # the VM is made, the answer is a 500

    created = p.create_instance(request(op="0" * 32))

    assert len(fake.vms) == 1 and len(fake.vm_puts) == 1
    assert created.op == "0" * 32


def test_a_refused_create_leaves_no_nic_behind(fake: AzureCloud) -> None:
    p = provider(fake)

    with pytest.raises(ProviderError, match="InvalidParameter"):
        p.create_instance(request(op="1" * 32, size="Standard_Nope"))

    assert fake.vms == {} and fake.nics == {}


def test_find_by_op(fake: AzureCloud) -> None:
    p = provider(fake)
    first = p.create_instance(request(slot=1, op="2" * 32))
    p.create_instance(request(slot=2, op="3" * 32))

    found = p.find_by_op("acme", "2" * 32)

    assert found is not None and found.id == first.id
    assert p.find_by_op("acme", "9" * 32) is None
    assert p.find_by_op("someone-else", "2" * 32) is None


def test_known_sizes_are_listed_once(fake: AzureCloud) -> None:
    p = provider(fake)

    assert p.known_sizes() == {"Standard_B1s", "Standard_B2s", "Standard_D2s_v3"}
    assert p.known_sizes() == {"Standard_B1s", "Standard_B2s", "Standard_D2s_v3"}
    assert sum(1 for _, path in fake.requests if path.endswith("/vmSizes")) == 1


def test_prices_come_from_libclouds_azure_linux_data() -> None:
    p = AzureProvider("cloud", client_id="x", client_secret="y", tenant="t", subscription="s",
                      resource_group="g", network="n", subnet="d", location="West Europe",
                      ssh_key=SSH_KEY)  # fmt: skip
    expected = get_size_price("compute", "azure_linux", "standardd2sv3", region="westeurope")

    assert expected and p.price_per_hour("Standard_D2s_v3") == expected
    assert p.price_per_hour("Standard_Imaginary_v9") is None


def test_rejected_credentials_are_a_provider_error_that_does_not_echo_them(
    fake: AzureCloud,
) -> None:
    p = provider(fake, secret="wrong-secret-value-55aa", retry_attempts=1)

    with pytest.raises(ObservationIncomplete) as caught:
        p.list_owned("acme")

    assert "AADSTS7000215" in str(caught.value)
    assert "wrong-secret-value-55aa" not in str(caught.value)
    assert CLIENT_ID not in str(caught.value)


def test_every_request_is_reported_by_resource_type(fake: AzureCloud) -> None:
    heard: list[str] = []
    p = provider(fake, on_call=lambda _provider, action: heard.append(action))
    p.create_instance(request(op="4" * 32))
    heard.clear()

    p.list_owned("acme")

    assert heard == ["GET virtualMachines", "GET networkInterfaces"]


def test_images_and_names() -> None:
    assert image_of(image_reference(IMAGE_V1)) == IMAGE_V1
    gallery = (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/img/providers/Microsoft.Compute/images/web"
    )
    assert image_of(image_reference(gallery)) == gallery
    with pytest.raises(ProviderError, match="publisher:offer:sku:version"):
        image_reference("ami-03cf127a")
    long = vm_name("a-very-long-environment-name-production-" * 3 + "g1-1", "5" * 32)
    assert len(long) <= 64 and long.endswith("-" + "5" * 12)
    assert vm_name("prod_web.g1-1", "ab-cd") == "prod-web-g1-1-abcd"


def test_user_data_is_base64_in_both_fields(fake: AzureCloud) -> None:
    provider(fake).create_instance(request(op="6" * 32, user_data="ünïcode ✓"))

    properties = fake.vm_puts[0]["properties"]
    decoded = base64.b64decode(properties["userData"]).decode()
    assert decoded == base64.b64decode(properties["osProfile"]["customData"]).decode()
    assert decoded == "ünïcode ✓"


def test_libclouds_own_listing_would_give_up_silently(
    fake: AzureCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the adapter pages itself: libcloud's list_nodes stops at a deadline
    (LIST_NODES_PAGINATION_TIMEOUT) and returns what it has, without an error."""
    from libcloud.compute.drivers import azure_arm

    p = provider(fake)
    for n in range(1, 4):
        p.create_instance(request(slot=n, op=f"{n:032x}"))
    monkeypatch.setattr(azure_arm, "LIST_NODES_PAGINATION_TIMEOUT", 0)  # the deadline, reached

    assert p._driver.list_nodes(ex_resource_group=RESOURCE_GROUP) == []  # no error raised
    assert len(p.list_owned("acme")) == 3


def test_an_authorization_failure_is_reported_without_the_client_id(fake: AzureCloud) -> None:
    p = provider(fake)
    fake.forbidden = True

    with pytest.raises(ObservationIncomplete, match="AuthorizationFailed") as caught:
        p.list_owned("acme")

    assert CLIENT_ID not in str(caught.value) and "[redacted]" in str(caught.value)
