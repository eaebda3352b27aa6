"""Orphan classification as a pure function: every kind, its cost so far, its order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reconciler.model import GenerationRecord, GenerationState, ObservedInstance
from reconciler.planning.costs import Billing
from reconciler.planning.orphans import (
    DesiredService,
    Observation,
    classify_orphans,
    observation_document,
    observation_from_document,
)
from tests.support.cloud import observed

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WEB = DesiredService(env="production", service="web", provider="cloud", keep_previous=1800)


def node(
    node_id: str, service: str | None = "web", generation: int | None = 1, hours_ago: float = 2
) -> ObservedInstance:
    return observed(node_id, service=service, generation=generation,
                    launched_at=NOW - timedelta(hours=hours_ago))  # fmt: skip


def generation(number: int, state: GenerationState, retired_minutes_ago: float | None = None,
               reason: str | None = None) -> GenerationRecord:  # fmt: skip
    retired = NOW - timedelta(minutes=retired_minutes_ago) if retired_minutes_ago else None
    return GenerationRecord(
        env="production", service="web", number=number, fingerprint=f"fp{number}",
        image="ami-1", size="t3.micro", count=1, state=state, retired_at=retired, reason=reason,
    )  # fmt: skip


def classify(instances: list[ObservedInstance], **kwargs: object) -> list[tuple[str, str | None]]:
    observation = Observation(
        provider="cloud",
        at=NOW,
        instances=tuple(instances),
        prices={"t3.micro": 0.0104},
        unowned=(node("i-stranger", service=None, generation=None),),
    )
    defaults: dict[str, object] = {
        "desired": [WEB],
        "observations": [observation],
        "generations": [],
        "ledger_instances": {},
        "now": NOW,
    }
    orphans = classify_orphans(**{**defaults, **kwargs})  # type: ignore[arg-type]
    return [(o.kind, o.instance) for o in orphans]


def test_a_serving_instance_is_no_orphan() -> None:
    assert classify([node("i-1")], generations=[generation(1, GenerationState.ACTIVE)]) == []


def test_undeclared_service_with_cost_so_far() -> None:
    observation = Observation(
        provider="cloud", at=NOW, instances=(node("i-ghost", service="ghost", hours_ago=3),),
        prices={"t3.micro": 0.0104}, billing=Billing(),
    )  # fmt: skip
    (orphan,) = classify_orphans(
        desired=[WEB], observations=[observation], generations=[], ledger_instances={}, now=NOW
    )
    assert (orphan.kind, orphan.service, orphan.age_seconds) == ("undeclared", "ghost", 3 * 3600)
    assert orphan.cost == pytest.approx(3 * 0.0104)


def test_standby_past_keep_previous_but_not_before() -> None:
    gens = [generation(1, GenerationState.STANDBY, 31), generation(2, GenerationState.ACTIVE)]
    assert classify([node("i-1"), node("i-2", generation=2)], generations=gens) == [
        ("standby-expired", "i-1")
    ]
    fresh = [generation(1, GenerationState.STANDBY, 29), generation(2, GenerationState.ACTIVE)]
    assert classify([node("i-1"), node("i-2", generation=2)], generations=fresh) == []


def test_survivor_of_termination_uses_the_recorded_price() -> None:
    row = {"id": "i-1", "state": "destroyed", "price_per_hour": 1.0, "created_at": None}
    observation = Observation(provider="cloud", at=NOW, instances=(node("i-1", hours_ago=1),))
    (orphan,) = classify_orphans(
        desired=[WEB], observations=[observation],
        generations=[generation(1, GenerationState.ACTIVE)],
        ledger_instances={"i-1": row}, now=NOW,
    )  # fmt: skip
    assert orphan.kind == "survived-termination" and orphan.cost == pytest.approx(1.0)


def test_failed_generation_with_live_instances() -> None:
    gens = [generation(1, GenerationState.DESTROYED, 5, reason="failed: health timeout")]
    assert classify([node("i-1")], generations=gens) == [("failed-live", "i-1")]


def test_unowned_only_when_asked_and_stale_operations() -> None:
    ops = [
        {"id": "a", "run": 1, "kind": "create", "target": "production/web g1 #1",
         "state": "intent", "intent_at": (NOW - timedelta(hours=1)).isoformat()},
        {"id": "b", "run": 2, "kind": "create", "target": "production/web g1 #2",
         "state": "issued", "intent_at": NOW.isoformat(), "instance_id": "i-9"},
    ]  # fmt: skip
    assert classify([]) == []
    assert classify([], include_unowned=True) == [("unowned", "i-stranger")]
    # Run 2 is still in progress: only run 1's operation is stale.
    assert classify([], open_operations=ops, current_run=2) == [("stale-operation", None)]


def test_stored_observation_round_trips() -> None:
    instances = [node("i-1"), node("i-2", service="ghost")]
    document = observation_document(desired=[WEB], instances=instances, prices={"t3.micro": 0.1})
    observation, desired = observation_from_document(
        "cloud", at=NOW, document=document, billing=Billing(mode="per-hour")
    )
    assert observation.instances == tuple(instances)
    assert desired == (WEB,) and observation.prices == {"t3.micro": 0.1}
