"""The EC2 adapter against the sandbox: pagination, state mapping, tags, idempotency."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import libcloud.pricing
import pytest
from libcloud.compute.drivers.ec2 import NAMESPACE
from libcloud.utils.xml import findall

from reconciler.errors import ObservationIncomplete
from reconciler.model import InstanceState
from reconciler.providers.base import LaunchRequest, ownership_tags
from reconciler.providers.ec2 import adapter
from reconciler.providers.ec2.adapter import Ec2Provider
from reconciler.providers.sandbox import SANDBOX_KEY, SANDBOX_SECRET, SandboxServer, fetch_stats
from tests.support.desired_builder import IMAGE_V1


def provider(endpoint: str, **options: int) -> Ec2Provider:
    return Ec2Provider(
        "cloud",
        key=SANDBOX_KEY,
        secret=SANDBOX_SECRET,
        region="us-east-1",
        endpoint=endpoint,
        **options,
    )


def launch(p: Ec2Provider, *, owner: str, slot: int, op: str, service: str = "web") -> str:
    tags = ownership_tags(
        owner=owner,
        env="prod",
        service=service,
        generation=1,
        fingerprint="f" * 16,
        op=op,
        slot=slot,
    )
    request = LaunchRequest(name=tags["Name"], image=IMAGE_V1, size="t3.micro", tags=tags, op=op)
    return p.create_instance(request).id


def test_listing_follows_next_token_to_the_last_page(sandbox: SandboxServer) -> None:
    p = provider(sandbox.endpoint, page_size=25)
    ids = {launch(p, owner="acme", slot=n, op=f"op{n}") for n in range(1, 131)}
    launch(p, owner="other", slot=1, op="foreign")
    calls_before = fetch_stats(sandbox.endpoint)["calls"].get("DescribeInstances", 0)

    seen = p.list_owned("acme")

    pages = fetch_stats(sandbox.endpoint)["calls"]["DescribeInstances"] - calls_before
    assert {i.id for i in seen} == ids
    assert pages == 6  # 130 instances at 25 a page
    assert all(i.tags["reconciler:owner"] == "acme" for i in seen)


def test_a_look_up_asks_for_the_ids_alone_in_one_request(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The boot wait's listing: the server is asked for the given ids (so it describes a
    few instances, not the fleet); ids it does not show yet, or of another owner, are
    left out; more ids than one filter may hold fall back to the owner's listing."""
    p = provider(sandbox.endpoint)
    mine = [launch(p, owner="acme", slot=n, op=f"op{n}") for n in (1, 2, 3)]
    theirs = launch(p, owner="other", slot=1, op="foreign")
    asked: list[dict[str, str]] = []
    request = p._request
    monkeypatch.setattr(p, "_request", lambda params: asked.append(params) or request(params))

    found = p.look_up("acme", [mine[0], mine[2], theirs, "i-0123456789abcdef0"])

    assert sorted(i.id for i in found) == sorted([mine[0], mine[2]])
    (params,) = asked
    assert params["Filter.1.Name"] == "instance-id"
    values = {v for k, v in params.items() if k.startswith("Filter.1.Value.")}
    assert values == {mine[0], mine[2], theirs, "i-0123456789abcdef0"}
    assert "Filter.2.Name" not in params

    asked.clear()
    many = [mine[1], *(f"i-{n:017x}" for n in range(100))]
    assert [i.id for i in p.look_up("acme", many)] == [mine[1]]
    (params,) = asked
    assert (params["Filter.1.Name"], params["Filter.1.Value.1"]) == ("tag:reconciler:owner", "acme")

    asked.clear()
    assert p.look_up("acme", []) == [] and asked == []


def test_observed_instances_carry_identity_and_state(sandbox: SandboxServer) -> None:
    p = provider(sandbox.endpoint)
    keep = launch(p, owner="acme", slot=1, op="a")
    gone = launch(p, owner="acme", slot=2, op="b")
    p.destroy_instance(gone)
    p.destroy_instance(gone)  # destroying what is already gone is not an error

    seen = {i.id: i for i in p.list_owned("acme")}

    assert seen[keep].state in (InstanceState.PENDING, InstanceState.RUNNING)
    assert seen[gone].state is InstanceState.GONE
    assert (seen[keep].env, seen[keep].service, seen[keep].generation, seen[keep].slot) == (
        "prod",
        "web",
        1,
        1,
    )
    assert seen[keep].op == "a" and seen[keep].image == IMAGE_V1 and seen[keep].size == "t3.micro"
    assert p.find_by_op("acme", "a") is not None
    assert p.find_by_op("acme", "b") is None  # terminated instances do not count


def test_price_comes_from_libcloud_pricing_data(sandbox: SandboxServer) -> None:
    p = provider(sandbox.endpoint)
    assert p.price_per_hour("t3.micro") == 0.0104
    assert p.price_per_hour("no-such.size") is None


def test_an_image_name_is_resolved_to_its_ami_once(sandbox: SandboxServer) -> None:
    p = provider(sandbox.endpoint)
    name = "Windows_Server-2016-English-Nano-Base-2017.10.13"  # one of moto's stock AMIs
    assert p.resolve_image(name) == "ami-03cf127a"
    assert p.resolve_image(name) == "ami-03cf127a"
    assert fetch_stats(sandbox.endpoint)["calls"]["DescribeImages"] == 1
    assert p.resolve_image("ami-12c6146b") == "ami-12c6146b"
    import pytest

    from reconciler.errors import ProviderError

    with pytest.raises(ProviderError, match="no image named 'no-such-image'"):
        p.resolve_image("no-such-image")


def test_the_ec2_price_table_read_alone_is_libcloud_s_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table decoded from its offset in libcloud's pricing file equals the one
    libcloud's loader keeps after parsing the whole file; a file laid out otherwise is
    left to that loader."""
    compute = libcloud.pricing.PRICING_DATA["compute"]
    monkeypatch.delitem(compute, "ec2_linux", raising=False)
    adapter._load_price_table()
    ours = compute.pop("ec2_linux")
    theirs = libcloud.pricing.get_pricing("compute", "ec2_linux")
    assert ours == theirs and ours["t3.micro"]["us-east-1"] > 0

    compute.pop("ec2_linux")
    doubled = tmp_path / "pricing.json"
    doubled.write_text('{"compute": {"ec2_linux": {"t3.micro": {"us-east-1": 1}}},'
                       ' "storage": {"ec2_linux": {}}}')  # fmt: skip
    monkeypatch.setattr(adapter, "get_pricing_file_path", lambda: str(doubled))
    adapter._load_price_table()
    assert "ec2_linux" not in compute


def test_a_listed_instance_without_an_id_makes_the_listing_unreadable(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = provider(sandbox.endpoint)
    launch(p, owner="acme", slot=1, op="a")
    request = p._request

    def without_ids(params: dict[str, str]) -> Any:
        body = request(params)
        for item in findall(body, "reservationSet/item/instancesSet/item", NAMESPACE):
            item.remove(item.find(f"{{{NAMESPACE}}}instanceId"))
        return body

    monkeypatch.setattr(p, "_request", without_ids)
    with pytest.raises(ObservationIncomplete, match="unreadable instance"):
        p.list_owned("acme")


def test_the_volume_listing_pages_like_the_instance_listing(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both go through one pager: a server that repeats its page token, or answers with
    something that is not the call's listing, fails the volume listing as it fails the
    instance listing (a partial listing would read as volumes gone)."""
    p = provider(sandbox.endpoint)
    port = p.volumes()
    assert port is not None
    request = p._request

    def looping(params: dict[str, str]) -> Any:  # the first page again, whatever is asked
        body = request({k: v for k, v in params.items() if k != "NextToken"})
        token = ElementTree.SubElement(body, f"{{{NAMESPACE}}}nextToken")
        token.text = "same-page-again"
        return body

    monkeypatch.setattr(p, "_request", looping)
    for listing in (lambda: port.list_owned("acme"), lambda: p.list_owned("acme")):
        with pytest.raises(ObservationIncomplete, match="repeats a page token"):
            listing()

    monkeypatch.setattr(p, "_request", lambda params: ElementTree.Element("html"))
    for listing in (lambda: port.list_owned("acme"), lambda: p.list_owned("acme")):
        with pytest.raises(ObservationIncomplete, match="not an EC2 listing"):
            listing()
