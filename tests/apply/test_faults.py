"""Cloud faults, injected by the sandbox's fault rules: throttling, 5xx, lost responses,
truncated or foreign bodies, bad credentials, "not visible yet".

The first half drives the EC2 adapter directly (one fault, one call, exact counts);
the second half runs the CLI against the sandbox and checks what matters to an
operator: the fleet converges, nothing is launched twice, a listing that cannot be
read changes nothing, and instances we do not own are never named by a mutating call.
Faults are seeded; assertions are on outcomes, never on timings.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from libcloud.compute.base import Node, NodeImage, NodeSize
from structlog.testing import capture_logs

from reconciler.errors import ObservationIncomplete, ProviderError
from reconciler.providers.base import LaunchRequest, ownership_tags
from reconciler.providers.ec2.adapter import Ec2Provider
from reconciler.providers.sandbox import (
    SANDBOX_KEY,
    SANDBOX_SECRET,
    SandboxServer,
    clear_faults,
    fetch_stats,
    set_faults,
)
from tests.conftest import Cli, mutating_calls
from tests.support.cloud import live_nodes, raw_driver
from tests.support.desired_builder import IMAGE_V1, IMAGE_V2, git_commit, write_desired


def provider(endpoint: str, **options: Any) -> Ec2Provider:
    # Few, short retries keep the always-failing cases fast; the bounds are the point.
    options.setdefault("retry_attempts", 4)
    return Ec2Provider(
        "cloud",
        key=SANDBOX_KEY,
        secret=SANDBOX_SECRET,
        region="us-east-1",
        endpoint=endpoint,
        **options,
    )


def request(op: str, *, owner: str = "acme", slot: int = 1) -> LaunchRequest:
    tags = ownership_tags(
        owner=owner, env="prod", service="web", generation=1, fingerprint="f" * 16, op=op, slot=slot
    )
    return LaunchRequest(name=tags["Name"], image=IMAGE_V1, size="t3.micro", tags=tags, op=op)


def served(endpoint: str, action: str) -> int:
    return int(fetch_stats(endpoint)["calls"].get(action, 0))


def received(endpoint: str, action: str) -> int:
    return int(fetch_stats(endpoint)["received"].get(action, 0))


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# ---------------------------------------------------------------- the sandbox's rules


def test_throttling_looks_exactly_like_aws(sandbox: SandboxServer) -> None:
    import urllib.error
    import urllib.request

    set_faults(sandbox.endpoint, [{"action": "*", "kind": "throttle"}])
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(sandbox.endpoint + "/?Action=DescribeInstances", timeout=10)
    body = caught.value.read().decode()
    assert caught.value.code == 503
    assert body.startswith("<?xml")
    assert (
        "<Response><Errors><Error><Code>RequestLimitExceeded</Code>"
        "<Message>Request limit exceeded.</Message></Error></Errors><RequestID>"
    ) in body
    stats = fetch_stats(sandbox.endpoint)
    assert stats["calls"] == {} and stats["received"] == {"DescribeInstances": 1}
    assert stats["faults"] == {"throttle": {"DescribeInstances": 1}}


def test_fault_rules_are_validated_cleared_and_seeded(sandbox: SandboxServer) -> None:
    import urllib.error

    with pytest.raises(urllib.error.HTTPError):
        set_faults(sandbox.endpoint, [{"action": "*", "kind": "explode"}])
    rules = [{"action": "DescribeInstances", "kind": "throttle", "fraction": 0.5}]

    def hits(seed: int) -> list[bool]:
        set_faults(sandbox.endpoint, rules, seed=seed)
        plan = sandbox.app.fault_plan
        return [plan.decide("DescribeInstances")[1] == "throttle" for _ in range(40)]

    assert hits(7) == hits(7)
    assert hits(7) != hits(8)
    assert 5 < sum(hits(7)) < 35
    clear_faults(sandbox.endpoint)
    assert sandbox.app.fault_plan.rules == ()


# ---------------------------------------------------------------- the adapter


def test_dropped_run_instances_response_is_found_by_its_op_tag(sandbox: SandboxServer) -> None:
    p = provider(sandbox.endpoint)
    set_faults(sandbox.endpoint, [{"action": "RunInstances", "kind": "drop-response", "times": 1}])

    with capture_logs() as logs:
        created = p.create_instance(request("op-dropped"))

    assert served(sandbox.endpoint, "RunInstances") == 1, "the launch was not sent twice"
    assert [i.id for i in p.list_owned("acme")] == [created.id]
    assert created.op == "op-dropped"
    assert [e["instance"] for e in events(logs, "provider_launch_found_by_op")] == [created.id]
    assert [e["action"] for e in events(logs, "provider_call_retry")] == ["RunInstances"]


@pytest.mark.parametrize("kind", ["truncate", "error5xx"])
def test_run_instances_with_unknown_outcome_looks_before_relaunching(
    sandbox: SandboxServer, kind: str
) -> None:
    p = provider(sandbox.endpoint)
    set_faults(sandbox.endpoint, [{"action": "RunInstances", "kind": kind, "times": 1}])

    created = p.create_instance(request("op-unknown"))

    # truncate: moto launched it and the lookup finds it; error5xx: the sandbox refused
    # it before moto ran, so the lookup finds nothing and the launch is sent again.
    assert served(sandbox.endpoint, "RunInstances") == 1
    assert received(sandbox.endpoint, "DescribeInstances") == 1  # the lookup
    assert [i.id for i in p.list_owned("acme")] == [created.id]


def test_throttled_create_is_retried_without_a_lookup(sandbox: SandboxServer) -> None:
    p = provider(sandbox.endpoint)
    set_faults(sandbox.endpoint, [{"action": "RunInstances", "kind": "throttle", "times": 2}])

    with capture_logs() as logs:
        p.create_instance(request("op-throttled"))

    assert received(sandbox.endpoint, "RunInstances") == 3
    assert served(sandbox.endpoint, "RunInstances") == 1
    # Throttling means "not executed": no DescribeInstances was needed to stay safe.
    assert received(sandbox.endpoint, "DescribeInstances") == 0
    assert len(events(logs, "provider_call_retry")) == 2
    assert all("RequestLimitExceeded" in e["error"] for e in events(logs, "provider_call_retry"))


def test_credential_errors_are_terminal_and_not_retried(sandbox: SandboxServer) -> None:
    p = provider(sandbox.endpoint)
    set_faults(sandbox.endpoint, [{"action": "*", "kind": "auth"}])

    with capture_logs() as logs, pytest.raises(ProviderError, match="rejected the credentials"):
        p.create_instance(request("op-auth"))
    with pytest.raises(ObservationIncomplete, match="rejected the credentials"):
        p.list_owned("acme")

    assert received(sandbox.endpoint, "RunInstances") == 1
    assert received(sandbox.endpoint, "DescribeInstances") == 1
    assert events(logs, "provider_call_retry") == []


@pytest.mark.parametrize("kind", ["truncate", "foreign", "error5xx", "drop-response"])
def test_a_listing_that_cannot_be_read_raises_instead_of_answering(
    sandbox: SandboxServer, kind: str
) -> None:
    p = provider(sandbox.endpoint, retry_attempts=2)
    p.create_instance(request("op-1"))
    set_faults(sandbox.endpoint, [{"action": "DescribeInstances", "kind": "truncate"}])

    with pytest.raises(ObservationIncomplete, match="listing failed"):
        p.list_owned("acme")
    assert received(sandbox.endpoint, "DescribeInstances") == 2  # bounded attempts

    clear_faults(sandbox.endpoint)
    assert len(p.list_owned("acme")) == 1


def test_a_listing_fault_that_passes_is_retried(sandbox: SandboxServer) -> None:
    p = provider(sandbox.endpoint, page_size=5)
    ids = {p.create_instance(request(f"op-{n}", slot=n)).id for n in range(1, 13)}
    rules = [{"action": "DescribeInstances", "kind": "truncate", "fraction": 0.5, "times": 2}]
    set_faults(sandbox.endpoint, rules, seed=3)

    assert {i.id for i in p.list_owned("acme")} == ids


def test_terminate_retries_5xx_and_lost_responses_and_accepts_gone(
    sandbox: SandboxServer,
) -> None:
    p = provider(sandbox.endpoint)
    first = p.create_instance(request("op-a", slot=1)).id
    second = p.create_instance(request("op-b", slot=2)).id
    set_faults(
        sandbox.endpoint,
        [
            {"action": "TerminateInstances", "kind": "error5xx", "times": 1},
            {"action": "TerminateInstances", "kind": "drop-response", "times": 1},
        ],
    )
    p.destroy_instance(first)  # 5xx, then a lost response, then success
    p.destroy_instance(second)
    p.destroy_instance(second)  # already terminated: still a success

    assert received(sandbox.endpoint, "TerminateInstances") == 5
    assert {i.id for i in p.list_owned("acme") if i.alive} == set()


def test_not_found_right_after_create_means_not_visible_yet(sandbox: SandboxServer) -> None:
    p = provider(sandbox.endpoint)
    fresh = p.create_instance(request("op-fresh")).id
    set_faults(sandbox.endpoint, [{"action": "TerminateInstances", "kind": "not-visible"}])
    other = provider(sandbox.endpoint)  # launched nothing: "not found" there means gone

    other.destroy_instance(fresh)
    assert received(sandbox.endpoint, "TerminateInstances") == 1

    set_faults(
        sandbox.endpoint, [{"action": "TerminateInstances", "kind": "not-visible", "times": 2}]
    )
    with capture_logs() as logs:
        p.destroy_instance(fresh)
    assert served(sandbox.endpoint, "TerminateInstances") == 1, "it was really terminated"
    assert len(events(logs, "provider_call_retry")) == 2
    assert {i.id for i in p.list_owned("acme") if i.alive} == set()


def test_instances_of_another_owner_are_never_listed(sandbox: SandboxServer) -> None:
    p = provider(sandbox.endpoint)
    mine = p.create_instance(request("op-mine")).id
    for owner in ("acme-old", "ACME", "acm", "acme "):
        p.create_instance(request(f"op-{owner}", owner=owner))

    assert [i.id for i in p.list_owned("acme")] == [mine]
    assert p.find_by_op("acme", "op-acme-old") is None


# ---------------------------------------------------------------- through the CLI

SERVICES = ("web", "api", "worker", "cron")


def fleet(image: str, count: int = 3) -> dict[str, dict[str, dict[str, Any]]]:
    return {"production": {name: {"image": image, "count": count} for name in SERVICES}}


def names_by_generation(endpoint: str) -> Counter[tuple[str, str]]:
    return Counter(
        (n.extra["tags"]["reconciler:service"], n.extra["tags"]["reconciler:generation"])
        for n in live_nodes(endpoint)
        if n.extra["tags"].get("reconciler:owner") == "acme"
    )


def assert_no_duplicate_names(endpoint: str) -> None:
    names = Counter(n.extra["tags"].get("Name") for n in live_nodes(endpoint))
    assert [name for name, n in names.items() if n > 1] == []


def log_events(stderr: str, name: str) -> list[dict[str, Any]]:
    found = []
    for line in stderr.splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            entry = json.loads(line)
            if entry.get("event") == name:
                found.append(entry)
    return found


def test_replacement_converges_with_a_fifth_of_all_calls_throttled(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    root = write_desired(
        tmp_path / "desired",
        endpoint=sandbox.endpoint,
        environments=fleet(IMAGE_V1),
        policy={"max_parallel": 4},
    )
    git_commit(root, "v1")
    assert cli("apply", "--desired", str(root)).code == 0
    write_desired(root, endpoint=sandbox.endpoint, environments=fleet(IMAGE_V2))
    git_commit(root, "v2 everywhere")

    set_faults(sandbox.endpoint, [{"action": "*", "kind": "throttle", "fraction": 0.2}], seed=1)
    result = cli("apply", "--desired", str(root))
    thrown = fetch_stats(sandbox.endpoint)["faults"]["throttle"]
    clear_faults(sandbox.endpoint)

    assert result.code == 0, result.stderr
    assert sum(thrown.values()) >= 3, thrown
    assert len(log_events(result.stderr, "provider_call_retry")) == sum(thrown.values())
    assert names_by_generation(sandbox.endpoint) == {
        **{(s, "1"): 3 for s in SERVICES},
        **{(s, "2"): 3 for s in SERVICES},
    }
    assert_no_duplicate_names(sandbox.endpoint)
    assert served(sandbox.endpoint, "RunInstances") == 24  # 12 per generation, none twice
    plan = cli("plan", "--desired", str(root), "--detailed-exitcode")
    assert plan.code == 0, plan.stdout + plan.stderr


def test_dropped_run_instances_response_creates_no_duplicate(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    root = write_desired(
        tmp_path / "desired",
        endpoint=sandbox.endpoint,
        environments={"production": {"web": {"image": IMAGE_V1, "count": 3}}},
    )
    rules = [{"action": "RunInstances", "kind": "drop-response", "times": 2}]
    set_faults(sandbox.endpoint, rules)

    result = cli("apply", "--desired", str(root))

    assert result.code == 0, result.stderr
    assert fetch_stats(sandbox.endpoint)["faults"]["drop-response"] == {"RunInstances": 2}
    assert served(sandbox.endpoint, "RunInstances") == 3
    assert len(log_events(result.stderr, "provider_launch_found_by_op")) == 2
    assert names_by_generation(sandbox.endpoint) == {("web", "1"): 3}
    assert_no_duplicate_names(sandbox.endpoint)
    instances = json.loads(cli("ledger", "generations", "--json").stdout)
    assert [(g["service"], g["number"], g["state"]) for g in instances] == [("web", 1, "active")]


def test_truncated_listing_aborts_apply_with_zero_mutating_calls(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    root = write_desired(
        tmp_path / "desired",
        endpoint=sandbox.endpoint,
        environments={"production": {"web": {"image": IMAGE_V1, "count": 2}}},
    )
    assert cli("apply", "--desired", str(root)).code == 0
    write_desired(
        root,
        endpoint=sandbox.endpoint,
        environments={"production": {"web": {"image": IMAGE_V2, "count": 2}}},
    )
    before = mutating_calls(sandbox.endpoint)
    # Every attempt fails, so the adapter's bounded retries run out.
    set_faults(sandbox.endpoint, [{"action": "DescribeInstances", "kind": "truncate"}])

    result = cli("apply", "--desired", str(root))

    assert result.code == 1, result.stdout + result.stderr
    assert "listing failed" in result.stderr
    assert mutating_calls(sandbox.endpoint) == before
    clear_faults(sandbox.endpoint)
    assert names_by_generation(sandbox.endpoint) == {("web", "1"): 2}


def test_terminate_5xx_is_retried(cli: Cli, tmp_path: Path, sandbox: SandboxServer) -> None:
    root = write_desired(
        tmp_path / "desired",
        endpoint=sandbox.endpoint,
        environments={"production": {"web": {"image": IMAGE_V1, "count": 3}}},
    )
    assert cli("apply", "--desired", str(root)).code == 0
    write_desired(
        root,
        endpoint=sandbox.endpoint,
        environments={"production": {"web": {"image": IMAGE_V1, "count": 2}}},
    )
    set_faults(sandbox.endpoint, [{"action": "TerminateInstances", "kind": "error5xx", "times": 1}])

    result = cli("apply", "--desired", str(root))

    assert result.code == 0, result.stderr
    retries = log_events(result.stderr, "provider_call_retry")
    assert [(e["action"], e["attempt"]) for e in retries] == [("TerminateInstances", 1)]
    assert "InternalError" in retries[0]["error"]
    assert served(sandbox.endpoint, "TerminateInstances") == 1
    assert names_by_generation(sandbox.endpoint) == {("web", "1"): 2}


def test_instances_without_our_owner_tag_are_never_named_by_a_mutating_call(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    driver = raw_driver(sandbox.endpoint)
    size = NodeSize("t3.micro", "t3.micro", 0, 0, None, None, driver)
    image = NodeImage(IMAGE_V1, None, driver)
    lookalike_tags = {
        "reconciler:env": "production",
        "reconciler:service": "web",
        "reconciler:generation": "1",
        "Name": "production-web-g1-1",
    }
    strangers: list[Node] = [
        driver.create_node(name=f"x{n}", image=image, size=size, ex_metadata=tags)
        for n, tags in enumerate(
            [
                {**lookalike_tags, "reconciler:owner": "acme-old"},
                {**lookalike_tags, "reconciler:owner": "ACME"},
                lookalike_tags,
                {},
            ]
        )
    ]
    root = write_desired(
        tmp_path / "desired",
        endpoint=sandbox.endpoint,
        environments={"production": {"web": {"image": IMAGE_V1, "count": 2}}},
    )
    set_faults(sandbox.endpoint, [{"action": "*", "kind": "throttle", "fraction": 0.2}], seed=5)
    assert cli("apply", "--desired", str(root)).code == 0
    write_desired(
        root,
        endpoint=sandbox.endpoint,
        environments={"production": {"web": {"image": IMAGE_V2, "count": 2}}},
    )
    assert cli("apply", "--desired", str(root)).code == 0
    write_desired(
        root,
        endpoint=sandbox.endpoint,
        environments={"staging": {"web": {"image": IMAGE_V2, "count": 1}}},
    )
    result = cli("apply", "--desired", str(root), "--allow-mass-destroy")
    clear_faults(sandbox.endpoint)

    assert result.code == 0, result.stderr
    touched = fetch_stats(sandbox.endpoint)["touched"]
    assert len(touched) >= 4, "the test did destroy our own instances"
    alive = {n.id: n for n in live_nodes(sandbox.endpoint)}
    for stranger in strangers:
        assert stranger.id not in touched
        assert stranger.id in alive
        assert alive[stranger.id].extra["tags"] == stranger.extra["tags"]
