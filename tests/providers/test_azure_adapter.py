"""The Azure adapter through the real libcloud ARM driver, over HTTP, against the fake
Azure of tests/azure_support.py: paging, tags, user data, leftovers, retries, prices."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any

import pytest
from libcloud.pricing import get_size_price

from reconciler.errors import ObservationIncomplete, ProviderError, TransientError
from reconciler.model import InstanceState
from reconciler.providers.azure.adapter import AzureProvider, _translate
from reconciler.providers.azure.resources import (
    image_of,
    image_reference,
    instance_state,
    vm_name,
)
from reconciler.providers.base import LaunchRequest, ownership_tags
from tests.support.azure_support import (
    CLIENT_ID,
    IMAGE_V1,
    LOCATION,
    RESOURCE_GROUP,
    SSH_KEY,
    SUBSCRIPTION,
    TENANT,
    AzureCloud,
)
from tests.support.fakecloud import serving

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
    # Power states from the subscription's status listing, paged too (7 VMs with the one
    # of another resource group).
    assert fake.list_pages("statuses") == 4
    assert all(i.state is InstanceState.RUNNING for i in owned)
    assert all(i.private_ip and i.private_ip.startswith("10.0.") for i in owned)
    assert all(i.image == IMAGE_V1 and i.size == "Standard_B1s" for i in owned)
    assert all(i.launched_at is not None for i in owned)
    assert [i.name for i in p.list_unowned("acme")] == [None]
    # Ids as the ledger recorded them, though the listing upper-cases the resource group.
    assert all(i.id == i.id.lower() for i in owned)
    # Nothing per VM (libcloud's list_nodes makes three requests per VM): no instance
    # view, no VM or NIC by id.
    assert not [
        path
        for method, path in fake.requests
        if method == "GET" and re.search(r"/(virtualMachines|networkInterfaces)/[^/]+", path)
    ]


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
    assert [nic["properties"]["virtualMachine"]["id"] for nic in fake.nics.values()] == [keep.id]
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


def test_a_create_is_one_vm_put_that_defines_its_nic(fake: AzureCloud) -> None:
    p = provider(fake)
    fake.throttle(1)  # a retried create still makes one VM and one NIC

    created = p.create_instance(request(op="7" * 32))

    name = vm_name("prod-web-g1-1", "7" * 32)
    group = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
    vm_path = f"{group}/providers/Microsoft.Compute/virtualMachines/{name}"
    assert fake.mutating_requests() == [("PUT", vm_path)] * 2  # throttled, then made
    assert fake.vm_put_versions == ["2021-11-01"]
    network = fake.vm_puts[0]["properties"]["networkProfile"]
    assert "networkInterfaces" not in network and network["networkApiVersion"] == "2020-11-01"
    (nic,) = network["networkInterfaceConfigurations"]
    assert nic["properties"]["deleteOption"] == "Delete"
    (ip,) = nic["properties"]["ipConfigurations"]
    assert ip["properties"]["subnet"]["id"].endswith(
        f"/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Network/virtualNetworks"
        "/reconciler-vnet/subnets/default"
    )
    (seen,) = p.list_owned("acme")  # the NIC Azure named is found by the VM it names
    assert seen.id == created.id and seen.private_ip == "10.0.0.4"


def test_a_create_that_keeps_failing_leaves_nothing_behind(fake: AzureCloud) -> None:
    p = provider(fake, retry_attempts=2)
    fake.failing_vm_puts = 5

    with pytest.raises(TransientError):
        p.create_instance(request(op="8" * 32))

    assert fake.vms == {} and fake.nics == {} and fake.disks == set()
    assert {method for method, _ in fake.mutating_requests()} == {"PUT"}
    assert all("/virtualMachines/" in path for _, path in fake.mutating_requests())


def test_power_state_decides_whether_a_vm_runs(fake: AzureCloud) -> None:
    p = provider(fake)
    made = {
        slot: p.create_instance(request(slot=slot, op=f"{slot:032x}")).id for slot in range(1, 7)
    }
    cases = {  # slot: (provisioningState, power state or None: not in the status listing)
        1: ("Succeeded", "deallocated"),
        2: ("Failed", "running"),
        3: ("Failed", "stopped"),
        4: ("Succeeded", "starting"),
        5: ("Creating", None),
        6: ("Succeeded", None),
    }
    for slot, (provisioning, power) in cases.items():
        vm = fake.vms[vm_name(f"prod-web-g1-{slot}", f"{slot:032x}")]
        vm["provisioning"], vm["power"] = provisioning, power

    states = {i.slot: i.state for i in p.list_owned("acme")}

    assert states == {
        1: InstanceState.STOPPED,  # deallocated: serves nothing, must be replaced
        2: InstanceState.RUNNING,  # its last operation failed, but it runs
        3: InstanceState.STOPPED,
        4: InstanceState.PENDING,
        5: InstanceState.PENDING,  # just created: provisioningState alone
        6: InstanceState.RUNNING,
    }
    assert {i.id for i in p.list_owned("acme")} == set(made.values())


@pytest.mark.parametrize(
    ("provisioning", "power", "state"),
    [
        ("Succeeded", "running", InstanceState.RUNNING),
        ("Updating", "running", InstanceState.RUNNING),
        ("Succeeded", "stopping", InstanceState.STOPPED),
        ("Succeeded", "stopped", InstanceState.STOPPED),
        ("Succeeded", "deallocating", InstanceState.STOPPED),
        ("Succeeded", "deallocated", InstanceState.STOPPED),
        ("Succeeded", "starting", InstanceState.PENDING),
        ("Creating", "running", InstanceState.PENDING),
        ("Deleting", "running", InstanceState.GONE),
        ("Failed", "running", InstanceState.RUNNING),
        ("Failed", "deallocated", InstanceState.STOPPED),
        ("Failed", None, InstanceState.STOPPED),
        ("Succeeded", None, InstanceState.RUNNING),
        ("Creating", None, InstanceState.PENDING),
        ("Succeeded", "unknown", InstanceState.RUNNING),
    ],
)
def test_instance_state(provisioning: str, power: str | None, state: InstanceState) -> None:
    assert instance_state(provisioning, power) is state


def test_a_partial_status_listing_is_refused(fake: AzureCloud) -> None:
    p = provider(fake)
    for n in range(1, 4):
        p.create_instance(request(slot=n, op=f"{n:032x}"))
    fake.partial_status_listing = True  # 4 statuses: the second page cannot be read

    with pytest.raises(ObservationIncomplete, match="listing failed"):
        p.list_owned("acme")
    with pytest.raises(ObservationIncomplete):
        p.find_by_op("acme", f"{1:032x}")


def test_an_unreadable_status_listing_is_refused(fake: AzureCloud) -> None:
    p = provider(fake)
    p.create_instance(request(op="9" * 32))
    fake.garbled_statuses = True

    with pytest.raises(ObservationIncomplete, match="unreadable"):
        p.list_owned("acme")


def test_unreadable_user_data_is_a_provider_error(fake: AzureCloud) -> None:
    p = provider(fake)
    created = p.create_instance(request(op="a1" * 16, user_data="#!/bin/sh\n"))
    fake.vms[vm_name("prod-web-g1-1", "a1" * 16)]["body"]["properties"]["userData"] = "%%%"

    with pytest.raises(ProviderError, match="not base64"):
        p.user_data_of(created.id)


def test_only_our_errors_leave_a_call() -> None:
    class Surprise(Exception):
        pass

    error = _translate(Surprise("https://user:secret@example/"), "GET virtualMachines")

    assert isinstance(error, TransientError)  # the outcome of the call is unknown
    assert "secret" not in str(error) and "Surprise" in str(error)
    incomplete = ObservationIncomplete("x")
    assert _translate(incomplete, "GET virtualMachines") is incomplete


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

    assert heard == ["GET virtualMachines", "GET networkInterfaces", "GET virtualMachines"]


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


def test_a_throttled_put_is_resent_no_sooner_than_retry_after(fake: AzureCloud) -> None:
    p = provider(fake)
    fake.retry_after = "1"
    fake.throttle(1)

    p.create_instance(request(op="e" * 32))

    (gap,) = fake.gaps("PUT", "")  # refused, then resent once
    assert gap >= 1.0


def test_a_vm_without_an_image_reference_reads_as_image_unknown(fake: AzureCloud) -> None:
    p = provider(fake)
    created = p.create_instance(request(op="d" * 32))
    (vm,) = fake.vms.values()
    vm["from_disk"] = True

    (seen,) = p.list_owned("acme")

    assert seen.id == created.id and seen.image == ""
