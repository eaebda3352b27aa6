"""Open operations left by an interrupted pass are resolved before the next pass plans.

Each test builds the interrupted state the way a crash leaves it: an operation row the
ledger holds open, and a cloud that did (or did not) act on it, made through our own
adapter against the sandbox. Then one ordinary `apply_pass` must settle it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler import engine
from reconciler.ledger import Ledger
from reconciler.model import GenerationState, ObservedInstance
from reconciler.providers import ComputeProvider, LaunchRequest, ownership_tags
from reconciler.providers.sandbox import SandboxServer, fetch_stats
from reconciler.recovery import ADOPTED, NEVER_LAUNCHED, resolve_open_operations
from tests.support.desired_builder import IMAGE_V1, IMAGE_V2, write_desired


def services(image: str = IMAGE_V1, count: int = 2) -> dict[str, dict[str, dict[str, Any]]]:
    return {"prod": {"web": {"image": image, "count": count}}}


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    store = Ledger.open(tmp_path / "state")
    yield store
    store.close()


def converge(root: Path, ledger: Ledger) -> None:
    outcome = engine.apply_pass(root, ledger)
    assert outcome.result is not None and outcome.result.ok, outcome.result


def provider(root: Path) -> ComputeProvider:
    return engine.build_providers(engine.read_desired(root))["cloud"]


def launch(root: Path, op: str, *, generation: int, slot: int) -> ObservedInstance:
    """What RunInstances did before the process died: an instance tagged with `op`."""
    desired = engine.read_desired(root)
    spec = desired.service("prod", "web")
    assert spec is not None
    tags = ownership_tags(
        owner=desired.owner, env="prod", service="web", generation=generation,
        fingerprint=spec.fingerprint, op=op, slot=slot,
    )  # fmt: skip
    request = LaunchRequest(name=tags["Name"], image=spec.image, size=spec.size, tags=tags, op=op)
    return provider(root).create_instance(request)


def alive(root: Path) -> list[ObservedInstance]:
    desired = engine.read_desired(root)
    return [i for i in engine.observe(desired, engine.build_providers(desired)) if i.alive]


def calls(endpoint: str, action: str) -> int:
    return int(fetch_stats(endpoint)["calls"].get(action, 0))


def test_open_create_whose_instance_exists_is_adopted(
    tmp_path: Path, sandbox: SandboxServer, ledger: Ledger
) -> None:
    root = write_desired(tmp_path / "d", endpoint=sandbox.endpoint, environments=services())
    converge(root, ledger)
    # Scaling to 3 was under way: the intent was written, RunInstances ran, "issued" was
    # recorded, and the process died before the instance was marked done.
    write_desired(root, endpoint=sandbox.endpoint, environments=services(count=3))
    run = ledger.start_run(command="apply", commit=None)
    op = ledger.begin_operation(run=run, kind="create", target="prod/web/g1/3", at=_now())
    instance = launch(root, op, generation=1, slot=3)
    ledger.mark_operation(op, state="issued", at=_now(), instance_id=instance.id)
    before = fetch_stats(sandbox.endpoint)["mutating"]

    outcome = engine.apply_pass(root, ledger)

    assert outcome.plan.empty, outcome.plan.actions
    assert fetch_stats(sandbox.endpoint)["mutating"] == before, "nothing extra was launched"
    assert ledger.open_operations() == []
    assert ledger.event_rows(kind="operations_recovered")[0]["detail"]["adopted"] == 1
    row = ledger.instance_rows_by_id([instance.id])[instance.id]
    assert (row["generation"], row["slot"], row["op"]) == (1, 3, op)
    assert row["price_per_hour"] is not None
    assert sorted(i.slot for i in alive(root)) == [1, 2, 3]
    assert _op_row(ledger, op)["detail"] == ADOPTED


def test_open_create_without_instance_is_closed_failed_and_the_planner_creates(
    tmp_path: Path, sandbox: SandboxServer, ledger: Ledger
) -> None:
    root = write_desired(tmp_path / "d", endpoint=sandbox.endpoint, environments=services())
    converge(root, ledger)
    write_desired(root, endpoint=sandbox.endpoint, environments=services(count=3))
    run = ledger.start_run(command="apply", commit=None)
    # The intent was durable, the process died before RunInstances was sent.
    op = ledger.begin_operation(run=run, kind="create", target="prod/web/g1/3", at=_now())
    launches = calls(sandbox.endpoint, "RunInstances")

    outcome = engine.apply_pass(root, ledger)

    assert outcome.result is not None and outcome.result.counts == {"create": 1}
    assert calls(sandbox.endpoint, "RunInstances") == launches + 1, "one launch, by the planner"
    assert _op_row(ledger, op)["state"] == "failed"
    assert _op_row(ledger, op)["detail"] == NEVER_LAUNCHED
    assert ledger.open_operations() == []
    assert sorted(i.slot for i in alive(root)) == [1, 2, 3]
    assert all(i.op != op for i in alive(root)), "the new instance has a new operation"


def test_open_destroy_of_a_live_instance_is_terminated_and_closed(
    tmp_path: Path, sandbox: SandboxServer, ledger: Ledger
) -> None:
    root = write_desired(tmp_path / "d", endpoint=sandbox.endpoint, environments=services())
    converge(root, ledger)
    # Scaling down to 1: the surplus destroy's intent was written, then the process died.
    write_desired(root, endpoint=sandbox.endpoint, environments=services(count=1))
    victim = next(i for i in alive(root) if i.slot == 2)
    run = ledger.start_run(command="apply", commit=None)
    op = ledger.begin_operation(run=run, kind="destroy", target=victim.id, at=_now())

    outcome = engine.apply_pass(root, ledger)

    assert outcome.plan.empty, "the destroy was finished before planning"
    assert [i.slot for i in alive(root)] == [1]
    assert _op_row(ledger, op)["state"] == "done"
    assert ledger.instance_rows_by_id([victim.id])[victim.id]["state"] == "destroyed"
    assert ledger.event_rows(kind="operations_recovered")[0]["detail"]["reissued"] == 1
    assert ledger.open_operations() == []


def test_open_destroy_of_a_gone_instance_is_only_closed(
    tmp_path: Path, sandbox: SandboxServer, ledger: Ledger
) -> None:
    root = write_desired(tmp_path / "d", endpoint=sandbox.endpoint, environments=services())
    converge(root, ledger)
    write_desired(root, endpoint=sandbox.endpoint, environments=services(count=1))
    victim = next(i for i in alive(root) if i.slot == 2)
    run = ledger.start_run(command="apply", commit=None)
    op = ledger.begin_operation(run=run, kind="destroy", target=victim.id, at=_now())
    provider(root).destroy_instance(victim.id)  # the call went out; its answer was lost
    terminations = calls(sandbox.endpoint, "TerminateInstances")

    desired = engine.read_desired(root)
    report = resolve_open_operations(
        ledger, engine.build_providers(desired), desired, now=_now(), run=run
    )

    assert (report.confirmed, report.reissued) == (1, 0)
    assert calls(sandbox.endpoint, "TerminateInstances") == terminations
    assert _op_row(ledger, op)["state"] == "done"
    assert ledger.instance_rows_by_id([victim.id])[victim.id]["state"] == "destroyed"


def test_generation_launched_but_never_recorded_is_adopted_not_relaunched(
    tmp_path: Path, sandbox: SandboxServer, ledger: Ledger
) -> None:
    """A crash between RunInstances and the ledger write of the generation: the cloud
    holds generation 2 (tagged with the new spec), the ledger only knows generation 1."""
    root = write_desired(tmp_path / "d", endpoint=sandbox.endpoint, environments=services())
    converge(root, ledger)
    write_desired(root, endpoint=sandbox.endpoint, environments=services(image=IMAGE_V2))
    run = ledger.start_run(command="apply", commit=None)
    ops = [
        ledger.begin_operation(run=run, kind="create", target=f"prod/web/g2/{slot}", at=_now())
        for slot in (1, 2)
    ]
    for slot, op in enumerate(ops, start=1):
        launch(root, op, generation=2, slot=slot)
    launches = calls(sandbox.endpoint, "RunInstances")

    outcome = engine.apply_pass(root, ledger)

    assert outcome.result is not None and outcome.result.ok, outcome.result
    assert calls(sandbox.endpoint, "RunInstances") == launches, "adopted, not relaunched"
    states = {r["number"]: r["state"] for r in ledger.generation_rows(env="prod", service="web")}
    assert states == {1: "standby", 2: "active"}
    assert ledger.open_operations() == []
    assert sorted((i.generation, i.slot) for i in alive(root)) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    adopted = ledger.instance_rows(env="prod", service="web", generation=2)
    assert len(adopted) == 2 and all(r["price_per_hour"] for r in adopted), "priced, not free"
    (g2,) = [r for r in ledger.generation_rows(env="prod", service="web") if r["number"] == 2]
    assert g2["image_id"] == IMAGE_V2
    again = engine.apply_pass(root, ledger)
    assert again.plan.empty


def test_activation_cut_between_its_two_writes_leaves_one_active(
    tmp_path: Path, sandbox: SandboxServer, ledger: Ledger
) -> None:
    root = write_desired(tmp_path / "d", endpoint=sandbox.endpoint, environments=services())
    converge(root, ledger)
    write_desired(root, endpoint=sandbox.endpoint, environments=services(image=IMAGE_V2))
    converge(root, ledger)
    # As if the process died after writing g2 active and before writing g1 standby.
    earlier = _now() - timedelta(minutes=5)
    ledger.set_generation_state("prod", "web", 1, state=GenerationState.ACTIVE, at=earlier)
    before = fetch_stats(sandbox.endpoint)["mutating"]

    outcome = engine.apply_pass(root, ledger)

    assert outcome.plan.empty
    assert fetch_stats(sandbox.endpoint)["mutating"] == before
    states = {r["number"]: r["state"] for r in ledger.generation_rows(env="prod", service="web")}
    assert states == {1: "standby", 2: "active"}
    assert [e["generation"] for e in ledger.event_rows(kind="generation_demoted")] == [1]


def _op_row(ledger: Ledger, op: str) -> dict[str, Any]:
    """The operation's row, read beside the ledger's own connection (tests only)."""
    conn = sqlite3.connect(ledger.path)
    conn.row_factory = sqlite3.Row
    try:
        found = conn.execute("SELECT * FROM operations WHERE id = ?", [op]).fetchone()
    finally:
        conn.close()
    assert found is not None
    return dict(found)


def _now() -> datetime:
    return datetime.now(UTC)


def test_open_destroy_in_a_frozen_service_is_held_not_reissued(
    tmp_path: Path, sandbox: SandboxServer, ledger: Ledger
) -> None:
    root = write_desired(tmp_path / "d", endpoint=sandbox.endpoint, environments=services())
    converge(root, ledger)
    victim = next(i for i in alive(root) if i.slot == 2)
    run = ledger.start_run(command="apply", commit=None)
    op = ledger.begin_operation(run=run, kind="destroy", target=victim.id, at=_now())
    desired = engine.read_desired(root)
    terminations = calls(sandbox.endpoint, "TerminateInstances")

    report = resolve_open_operations(
        ledger, engine.build_providers(desired), desired, now=_now(), frozen={("prod", "web")}
    )

    assert report.held == 1
    assert calls(sandbox.endpoint, "TerminateInstances") == terminations
    assert [row["id"] for row in ledger.open_operations()] == [op]
    assert sorted(i.slot for i in alive(root)) == [1, 2]
