"""The GCE adapter through the real libcloud GCE connection, against the fake GCE
(tests/gce_support.py): labels, pagination, retries, idempotency, sizes and prices."""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.errors import (
    ConfigurationError,
    GceValueError,
    ObservationIncomplete,
    ProviderError,
    TransientError,
)
from reconciler.model import InstanceState, ProviderProfile, SecretRef
from reconciler.providers.base import LaunchRequest, ownership_tags
from reconciler.providers.gce.adapter import GceProvider
from reconciler.providers.gce.connection import endpoint_parts, new_token
from reconciler.providers.gce.labels import (
    METADATA_VALUE_LIMIT,
    decode_value,
    encode_value,
    gce_instance_name,
    image_reference,
    labels_for,
    metadata_problem,
    owner_problem,
    scrubbed_message,
    tags_from,
)
from reconciler.providers.registry import build_provider
from tests.support.fakecloud import Response, serving
from tests.support.gce_support import (
    EMAIL,
    PROJECT,
    TOKEN,
    ZONE,
    FakeGce,
    pem_canaries,
    service_account_key,
)

_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_RFC1035 = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


@pytest.fixture
def cloud() -> Iterator[FakeGce]:
    with serving(FakeGce()) as fake:
        yield fake


def provider(cloud: FakeGce, **options: Any) -> GceProvider:
    pem, _ = service_account_key()
    return GceProvider(
        "cloud",
        email=EMAIL,
        private_key=pem,
        project=PROJECT,
        zone=ZONE,
        endpoint=cloud.base_url,
        **options,
    )


def _request(*, image: str, slot: int, op: str) -> LaunchRequest:
    tags = ownership_tags(
        owner="acme", env="prod", service="web", generation=1, fingerprint="f" * 16, op=op,
        slot=slot,
    )  # fmt: skip
    return LaunchRequest(name=tags["Name"], image=image, size="e2-small", tags=tags, op=op)


def launch(
    p: GceProvider,
    *,
    owner: str = "acme",
    slot: int = 1,
    op: str = "op1",
    image: str = "debian-12-v1",
    user_data: str | None = "#!/bin/sh\necho booted\n",
) -> str:
    tags = ownership_tags(
        owner=owner, env="prod", service="web", generation=1, fingerprint="f" * 16, op=op, slot=slot
    )
    request = LaunchRequest(
        name=tags["Name"], image=image, size="e2-small", tags=tags, op=op, user_data=user_data
    )
    return p.create_instance(request).id


# ---------------------------------------------------------------- labels (pure)


@given(st.text(max_size=20))
def test_label_values_round_trip_and_stay_in_gce_syntax(value: str) -> None:
    try:
        encoded = encode_value(value)
    except GceValueError:
        return  # too long once escaped: refused, never truncated
    assert _LABEL_VALUE.fullmatch(encoded)
    assert decode_value(encoded) == value


def test_identity_tags_round_trip_through_labels() -> None:
    tags = ownership_tags(
        owner="Acme.Corp_EU", env="prod", service="web", generation=12,
        fingerprint="0123456789abcdef", op="5f0c8e2a9b7d4e61a3c2b1d0e9f8a7b6", slot=3,
    )  # fmt: skip
    labels = labels_for(tags)
    assert all(_LABEL_KEY.fullmatch(k) and _LABEL_VALUE.fullmatch(v) for k, v in labels.items())
    assert labels["reconciler_owner"] == "_41cme_2e_43orp_5f_45_55"
    assert labels["reconciler_slot"] == "3"
    assert tags_from(labels) == tags
    # Labels someone else set come back untouched; a hand-edited value is kept as is.
    assert tags_from({"team": "payments", "reconciler_env": "Bad_zz"}) == {
        "team": "payments",
        "reconciler:env": "Bad_zz",
    }


def test_instance_names_are_rfc1035_unique_per_operation_and_stable() -> None:
    long_name = "e" * 31 + "-" + "s" * 31 + "-g12-3"
    names = {
        gce_instance_name(n, owner="acme", op=op)
        for n in ("prod-web-g1-1", "9lives-web-g1-1", long_name)
        for op in ("a", "b")
    }
    assert len(names) == 6 and all(_RFC1035.fullmatch(n) for n in names)
    assert gce_instance_name("prod-web-g1-1", owner="acme", op="a") == gce_instance_name(
        "prod-web-g1-1", owner="acme", op="a"
    )


def test_image_references_an_operator_may_write() -> None:
    assert (
        image_reference("debian-12-v1", PROJECT) == f"projects/{PROJECT}/global/images/debian-12-v1"
    )
    assert image_reference("family/web", PROJECT) == f"projects/{PROJECT}/global/images/family/web"
    full = "projects/debian-cloud/global/images/family/debian-12"
    assert image_reference(full, PROJECT) == full
    url = "https://www.googleapis.com/compute/v1/projects/debian-cloud/global/images/debian-12-x"
    assert image_reference(url, PROJECT) == "projects/debian-cloud/global/images/debian-12-x"
    for bad in ("ami-0abc/../x", "projects/p/zones/z/disks/d", "Debian_12"):
        with pytest.raises(GceValueError):
            image_reference(bad, PROJECT)


def test_owner_problem_says_when_an_owner_is_too_long_for_a_label() -> None:
    assert owner_problem("acme") is None
    assert owner_problem("a" * 63) is None
    assert owner_problem("a" * 64) == (
        "is 64 characters as a GCE label value (at most 63; every byte other than a-z, 0-9 "
        "and '-' takes 3)"
    )
    assert owner_problem("Acme" * 10) is None  # 40 characters, 60 escaped
    assert owner_problem("Acme" * 11) is not None  # 44 characters, 66 escaped
    for owner in ("a" * 64, "Acme" * 10, "Acme" * 11, "ü" * 10, "ü" * 11):
        assert (owner_problem(owner) is None) == _encodes(owner)


def _encodes(owner: str) -> bool:
    try:
        encode_value(owner)
    except GceValueError:
        return False
    return True


def test_error_text_keeps_field_names_and_drops_quoted_values() -> None:
    echo = """Invalid value for field 'resource.metadata': '{"items": [{"key": "startup-script",
    "value": "export TOKEN='s3cret'"}]}'. Metadata too large."""
    assert scrubbed_message(echo) == (
        "Invalid value for field 'resource.metadata': <value removed>. Metadata too large."
    )
    assert scrubbed_message("Quota 'CPUS' exceeded. Limit: 24.0 in region us-central1.") == (
        "Quota 'CPUS' exceeded. Limit: 24.0 in region us-central1."
    )
    assert scrubbed_message("Invalid value 's3cret") == "Invalid value <value removed>"
    # Text that looks like the placeholders used inside is only text.
    assert scrubbed_message("field 'x': \x009\x00 'y'") == "field 'x': 9 <value removed>"
    assert len(scrubbed_message("x" * 1000)) == 200


def test_metadata_limits() -> None:
    assert metadata_problem({"startup-script": "x" * METADATA_VALUE_LIMIT}) is None
    too_big = metadata_problem({"startup-script": "é" * (METADATA_VALUE_LIMIT // 2 + 1)})
    assert too_big == "metadata 'startup-script' is 262146 bytes (GCE takes at most 262144)"
    three = {f"k{n}": "x" * (METADATA_VALUE_LIMIT - 2) for n in range(3)}
    assert metadata_problem(three) == "metadata is 786432 bytes in all (GCE takes at most 524288)"


# ---------------------------------------------------------------- against the fake


def test_listing_follows_page_tokens_and_filters_by_owner_on_the_server(cloud: FakeGce) -> None:
    p = provider(cloud)
    ids = {launch(p, slot=n, op=f"op{n}") for n in range(1, 6)}
    launch(p, owner="other", slot=1, op="foreign")
    cloud.add_foreign("pet", labels={"team": "payments"})
    listings_before = cloud.api_requests().count(("GET", _instances_path()))

    seen = p.list_owned("acme")

    assert {i.id for i in seen} == ids
    assert cloud.api_requests().count(("GET", _instances_path())) - listings_before == 3  # 5 at 2
    assert cloud.list_filters[-1] == '(labels.reconciler_owner = "acme")'
    unowned = {i.id for i in p.list_unowned("acme")}
    assert "pet" in unowned and not unowned & ids and len(unowned) == 2


def test_a_launch_carries_labels_user_data_and_image_and_reads_back_the_same(
    cloud: FakeGce,
) -> None:
    p = provider(cloud)
    tags = ownership_tags(
        owner="acme", env="prod", service="web", generation=1, fingerprint="f" * 16, op="op1",
        slot=2,
    )  # fmt: skip
    request = LaunchRequest(name=tags["Name"], image="debian-12-v1", size="e2-small", tags=tags,
                            op="op1", user_data="#!/bin/sh\necho booted\n")  # fmt: skip
    created = p.create_instance(request)

    body = cloud.bodies[-1]
    assert _RFC1035.fullmatch(body["name"]) and body["name"].startswith("prod-web-g1-2-")
    assert body["labels"]["reconciler_op"] == "op1"
    assert body["disks"][0]["initializeParams"]["sourceImage"] == (
        f"projects/{PROJECT}/global/images/debian-12-v1"
    )
    assert body["machineType"] == f"zones/{ZONE}/machineTypes/e2-small"
    assert cloud.metadata(created.id)["startup-script"] == "#!/bin/sh\necho booted\n"
    assert p.user_data_of(created.id) == "#!/bin/sh\necho booted\n"

    (seen,) = p.list_owned("acme")
    # The planner's tamper rule compares these: launch and listing must agree.
    assert (seen.id, seen.image, seen.size) == (created.id, created.image, created.size)
    assert seen.tags == created.tags == tags
    assert (seen.env, seen.service, seen.generation, seen.slot, seen.op, seen.name) == (
        "prod", "web", 1, 2, "op1", "prod-web-g1-2",
    )  # fmt: skip
    assert seen.state is InstanceState.RUNNING and seen.private_ip and seen.launched_at


def test_an_image_family_is_launched_and_reported_as_the_image_it_points_at(
    cloud: FakeGce,
) -> None:
    cloud.families[("debian-cloud", "debian-12")] = "debian-12-bookworm-v20240515"
    concrete = "projects/debian-cloud/global/images/debian-12-bookworm-v20240515"
    p = provider(cloud)
    family = "projects/debian-cloud/global/images/family/debian-12"

    created = p.create_instance(_request(image=family, slot=1, op="a"))
    cloud.families[("debian-cloud", "debian-12")] = "debian-12-bookworm-v20240601"
    second = p.create_instance(_request(image=family, slot=2, op="b"))  # same pass

    assert created.image == second.image == concrete
    assert {b["disks"][0]["initializeParams"]["sourceImage"] for b in cloud.bodies} == {concrete}
    assert {i.image for i in provider(cloud).list_owned("acme")} == {concrete}
    family_path = "/compute/v1/projects/debian-cloud/global/images/family/debian-12"
    assert cloud.api_requests().count(("GET", family_path)) == 1  # once per adapter
    # A family of the profile's own project, written short; and one that does not exist.
    cloud.families[(PROJECT, "web")] = "web-v7"
    assert launch(p, image="family/web", slot=3, op="c")
    assert cloud.bodies[-1]["disks"][0]["initializeParams"]["sourceImage"] == (
        f"projects/{PROJECT}/global/images/web-v7"
    )
    with pytest.raises(ProviderError, match=r"image family .*family/nope not found"):
        launch(p, image="family/nope", slot=4, op="d")


def test_an_insert_refused_with_its_metadata_quoted_does_not_repeat_it(cloud: FakeGce) -> None:
    canary = "canary-startup-secret-8b2f"
    cloud.echo_metadata = True
    with pytest.raises(ProviderError) as info:
        launch(provider(cloud), user_data=f"#!/bin/sh\nexport API_KEY='{canary}'\n")
    assert canary in json.dumps(cloud.bodies[-1])  # it was sent and quoted back
    assert canary not in str(info.value)
    assert "invalid" in str(info.value) and "field 'resource.metadata'" in str(info.value)


def test_user_data_over_gce_limits_is_refused_before_sending(cloud: FakeGce) -> None:
    with pytest.raises(ProviderError, match="'startup-script' is 262145 bytes") as info:
        launch(provider(cloud), user_data="#" * (METADATA_VALUE_LIMIT + 1))
    assert "###" not in str(info.value)
    assert cloud.mutating_requests() == []


_OURS = (TransientError, ProviderError, ObservationIncomplete, ConfigurationError)


@pytest.mark.parametrize(
    ("method", "path_end", "call"),
    [
        ("GET", "/instances", lambda p: p.list_owned("acme")),
        ("GET", "/machineTypes", lambda p: p.known_sizes()),
        ("GET", "/instances/x1", lambda p: p.user_data_of("x1")),
        ("DELETE", "/instances/x1", lambda p: p.destroy_instance("x1")),
        ("POST", "/instances", lambda p: launch(p)),
    ],
)
@pytest.mark.parametrize(
    "answer",
    [
        Response.of_json({"error": "backendError"}),  # libcloud's parser: AttributeError
        Response.of_json(["not", "an", "object"]),
        Response(body=b"<html>gateway</html>", headers={"Content-Type": "text/html"}),
    ],
)
def test_only_our_errors_leave_the_adapter(
    cloud: FakeGce, method: str, path_end: str, call: Callable[[GceProvider], Any], answer: Response
) -> None:
    p = provider(cloud, retry_attempts=2, retry_seconds=5)
    cloud.answer_next(method, path_end, answer, times=2)
    with contextlib.suppress(*_OURS):  # anything else fails the test
        call(p)


def test_an_unreadable_instance_makes_the_listing_incomplete(cloud: FakeGce) -> None:
    p = provider(cloud)
    launch(p)
    next(iter(cloud.instances.values()))["creationTimestamp"] = "yesterday"
    with pytest.raises(ObservationIncomplete, match="unreadable instance"):
        p.list_owned("acme")


def test_throttling_is_retried(cloud: FakeGce) -> None:
    p = provider(cloud)
    launch(p)
    cloud.throttle(1)
    before = len(cloud.api_requests())

    assert len(p.list_owned("acme")) == 1
    assert len(cloud.api_requests()) - before == 2  # the throttled page, then the real one


def test_a_lost_insert_answer_is_resent_with_the_same_request_id(cloud: FakeGce) -> None:
    p = provider(cloud)
    cloud.lose_insert_responses = 1

    instance_id = launch(p)

    inserts = [r for r in cloud.mutating_requests() if r[0] == "POST"]
    assert len(inserts) == 2 and list(cloud.instances) == [instance_id]
    assert len(cloud.request_ids) == 1


def test_an_insert_whose_name_exists_returns_the_earlier_launch(cloud: FakeGce) -> None:
    p = provider(cloud)
    first = launch(p)
    cloud.request_ids.clear()  # an endpoint that ignores requestId: the name still guards

    assert launch(p) == first
    assert list(cloud.instances) == [first]


@pytest.mark.parametrize("pending", [False, True], ids=["done-at-once", "done-when-read"])
def test_an_insert_whose_operation_ends_already_exists_adopts_the_earlier_launch(
    cloud: FakeGce, pending: bool
) -> None:
    p = provider(cloud)
    first = launch(p)
    cloud.request_ids.clear()  # the requestId was forgotten: the name still guards
    cloud.exists_in_operation = True
    cloud.pending_operations = pending

    assert launch(p) == first
    assert list(cloud.instances) == [first]


def test_a_failed_operation_is_a_provider_error(cloud: FakeGce) -> None:
    p = provider(cloud)
    cloud.fail_operations = True
    with pytest.raises(ProviderError, match="QUOTA_EXCEEDED"):
        launch(p)


def test_a_running_operation_is_awaited(cloud: FakeGce) -> None:
    p = provider(cloud)
    cloud.pending_operations = True
    launch(p)
    assert any("/operations/" in path for _, path in cloud.api_requests())


def test_destroy_and_destroy_again(cloud: FakeGce) -> None:
    p = provider(cloud)
    keep, gone = launch(p, slot=1, op="a"), launch(p, slot=2, op="b")
    p.destroy_instance(gone)
    p.destroy_instance(gone)  # still STOPPING: not an error
    assert {i.id: i.alive for i in p.list_owned("acme")} == {keep: True, gone: False}
    assert p.list_owned("acme")[0].id == keep  # the next listing no longer has it
    p.destroy_instance(gone)  # gone for good (404): not an error either
    assert p.find_by_op("acme", "a") is not None and p.find_by_op("acme", "b") is None
    assert cloud.list_filters[-1] == (
        '(labels.reconciler_owner = "acme") (labels.reconciler_op = "b")'
    )


def test_an_instance_stopping_after_a_delete_reads_as_gone_in_a_new_pass(cloud: FakeGce) -> None:
    launch(provider(cloud), slot=1, op="a")
    gone = launch(provider(cloud), slot=2, op="b")
    provider(cloud).destroy_instance(gone)

    fresh = provider(cloud)  # the next pass: no memory of the delete
    seen = {i.id: i for i in fresh.list_owned("acme")}

    assert cloud.listed_stopping == [gone]  # GCE still lists it, STOPPING
    assert seen[gone].state is InstanceState.GONE and not seen[gone].alive
    assert fresh.find_by_op("acme", "b") is None


def test_partial_or_looping_listings_raise_observation_incomplete(cloud: FakeGce) -> None:
    p = provider(cloud)
    for n in range(1, 6):
        launch(p, slot=n, op=f"op{n}")
    cloud.partial_listing = True
    with pytest.raises(ObservationIncomplete, match="UNREACHABLE"):
        p.list_owned("acme")
    cloud.partial_listing = False
    cloud.repeat_page_token = True
    with pytest.raises(ObservationIncomplete, match="repeats a page token"):
        p.list_owned("acme")


def test_known_sizes_are_the_zones_machine_types_and_prices_come_from_libcloud(
    cloud: FakeGce,
) -> None:
    p = provider(cloud)
    assert p.known_sizes() == {
        "e2-micro", "e2-small", "e2-standard-2", "n1-standard-1", "f1-micro", "t2d-standard-1",
    }  # fmt: skip
    assert p.price_per_hour("n1-standard-1") == pytest.approx(0.0475)
    assert p.price_per_hour("e2-small") == pytest.approx(0.016753, abs=1e-6)  # half a vCPU
    assert p.price_per_hour("t2d-standard-1") is None  # no t2d prices in libcloud
    assert p.price_per_hour("no-such-type") is None
    machine_type_pages = [r for r in cloud.api_requests() if r[1].endswith("/machineTypes")]
    assert len(machine_type_pages) == 3  # six types at two a page, read once


def _in_threads(fn: Callable[[], Any], count: int = 3) -> list[Any]:
    """`fn` in `count` threads started together: each one's result (an exception re-raised)."""
    start = threading.Barrier(count, timeout=20)

    def run() -> Any:
        start.wait()
        return fn()

    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(run) for _ in range(count)]
        return [future.result(timeout=60) for future in futures]


def test_threads_racing_for_a_token_fetch_one_and_never_write_it_to_disk(
    cloud: FakeGce, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    launch(provider(cloud))
    p = provider(cloud)  # no token yet
    first = cloud.token_requests
    cloud.hold_token_requests(3)  # parallel fetches, if any, arrive together

    results = _in_threads(lambda: [i.id for i in p.list_owned("acme")])

    assert len(results) == 3 and all(r == results[0] and len(r) == 1 for r in results)
    assert cloud.token_requests - first == 1

    # The token is refused (revoked, or expired early): all three threads are refused
    # together and race for a new one; one is fetched.
    cloud.revoke_tokens()
    cloud.hold_refusals(3)
    cloud.hold_token_requests(3)

    assert _in_threads(lambda: [i.id for i in p.list_owned("acme")]) == results
    assert cloud.token_requests - first == 2
    assert list(tmp_path.iterdir()) == []
    assert TOKEN not in repr(p) and not any(line in repr(p) for line in pem_canaries())


def test_a_late_refusal_of_an_old_token_keeps_the_new_one(cloud: FakeGce) -> None:
    pem, _ = service_account_key()
    options, prefix = endpoint_parts(cloud.base_url)
    token = new_token(EMAIL, pem, path=prefix, options=options, on_fetch=lambda: None)
    old, old_serial = token.issue()
    token.forget(old_serial)  # thread A's request was refused
    new, _ = token.issue()  # thread A fetched a new token
    token.forget(old_serial)  # thread B's request, sent with the old token, is refused
    assert token.issue()[0] == new != old
    assert cloud.token_requests == 2


def test_a_key_the_token_endpoint_refuses_is_a_provider_error(cloud: FakeGce) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()  # fmt: skip
    p = GceProvider("cloud", email=EMAIL, private_key=other, project=PROJECT, zone=ZONE,
                    endpoint=cloud.base_url)  # fmt: skip
    with pytest.raises(ObservationIncomplete, match="rejected the service account") as info:
        p.list_owned("acme")
    assert not any(line in str(info.value) for line in other.splitlines()[1:-1])
    garbage = GceProvider("cloud", email=EMAIL, private_key="not a key", project=PROJECT,
                          zone=ZONE, endpoint=cloud.base_url)  # fmt: skip
    with pytest.raises(ObservationIncomplete, match="not a usable private key"):
        garbage.known_sizes()


def test_the_registry_builds_it_from_a_profile_with_credential_references(
    cloud: FakeGce, monkeypatch: pytest.MonkeyPatch
) -> None:
    pem, _ = service_account_key()
    monkeypatch.setenv("TEST_GCE_EMAIL", EMAIL)
    monkeypatch.setenv("TEST_GCE_KEY", pem)
    calls: list[tuple[str, str]] = []
    profile = ProviderProfile(
        name="gcp",
        driver="gce",
        region=ZONE,
        endpoint=cloud.base_url,
        credentials={"key": SecretRef("env", "TEST_GCE_EMAIL"),
                     "secret": SecretRef("env", "TEST_GCE_KEY")},
        options={"project": PROJECT, "network": "prod-vpc", "subnetwork": "web",
                 "external_ip": "false"},
    )  # fmt: skip
    p = build_provider(profile, on_call=lambda name, action: calls.append((name, action)))
    assert isinstance(p, GceProvider)
    launch(p)
    interface = cloud.bodies[-1]["networkInterfaces"][0]
    assert interface == {
        "network": "global/networks/prod-vpc",
        "subnetwork": "regions/us-central1/subnetworks/web",
    }
    assert calls == [("gcp", "instances.insert"), ("gcp", "oauth2.token")]


def _instances_path() -> str:
    return f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances"


def test_a_throttled_insert_is_resent_no_sooner_than_retry_after(cloud: FakeGce) -> None:
    p = provider(cloud)
    cloud.retry_after = "1"
    cloud.throttle(1)

    launch(p, slot=1, op="ra1")

    (gap,) = cloud.gaps("POST", "/instances")  # refused, then resent once
    assert gap >= 1.0


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("PENDING", InstanceState.PENDING),
        ("PROVISIONING", InstanceState.PENDING),
        ("STAGING", InstanceState.PENDING),
        ("RUNNING", InstanceState.RUNNING),
        ("REPAIRING", InstanceState.PENDING),
        ("PENDING_STOP", InstanceState.STOPPED),
        ("STOPPING", InstanceState.GONE),
        ("DEPROVISIONING", InstanceState.GONE),
        ("SUSPENDING", InstanceState.STOPPED),
        ("SUSPENDED", InstanceState.STOPPED),
        ("STOPPED", InstanceState.STOPPED),
        ("TERMINATED", InstanceState.STOPPED),
        ("FROM_THE_FUTURE", InstanceState.STOPPED),
    ],
)
def test_every_documented_status_is_mapped_and_an_unknown_one_is_not_serving(
    cloud: FakeGce, status: str, state: InstanceState
) -> None:
    p = provider(cloud)
    name = launch(p)
    cloud.instances[name]["status"] = status

    (seen,) = p.list_owned("acme")

    assert seen.state is state
    assert seen.unrecognized_state == (None if status != "FROM_THE_FUTURE" else status)


def test_machine_types_on_their_way_out(cloud: FakeGce) -> None:
    cloud.deprecated_types = {"e2-small": ("DEPRECATED", "e2-medium"),
                              "e2-micro": ("OBSOLETE", None)}  # fmt: skip
    p = provider(cloud)

    offered = p.known_sizes()

    assert offered is not None and "e2-small" in offered and "e2-micro" not in offered
    assert p.size_warning("e2-small") == (
        "machine type e2-small is DEPRECATED in us-central1-a; GCE suggests e2-medium"
    )
    assert p.size_warning("e2-medium") is None


def test_user_data_can_go_where_cloud_init_reads_it(cloud: FakeGce) -> None:
    p = provider(cloud, user_data_key="user-data")
    name = launch(p, user_data="#cloud-config\npackages: [nginx]\n")

    assert cloud.metadata(name).get("user-data") == "#cloud-config\npackages: [nginx]\n"
    assert "startup-script" not in cloud.metadata(name)
    assert p.user_data_of(name) == "#cloud-config\npackages: [nginx]\n"
