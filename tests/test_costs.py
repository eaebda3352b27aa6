"""Billing arithmetic (pure) and the ledger's SQL cost aggregates, held to the same rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from reconciler.costs import (
    Billing,
    PriceBook,
    billed_seconds,
    compute_plan_costs,
    instance_cost,
)
from reconciler.ledger import Ledger
from reconciler.model import (
    Action,
    ActionKind,
    DesiredState,
    Environment,
    InstanceState,
    ObservedInstance,
    Plan,
    Reason,
    ServiceSpec,
    Strategy,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PER_SECOND = Billing()
PER_HOUR = Billing(mode="per-hour")


@pytest.mark.parametrize(
    ("lifetime", "billing", "billed"),
    [
        (10, PER_SECOND, 60),
        (60, PER_SECOND, 60),
        (61.5, PER_SECOND, 61.5),
        (10, Billing(minimum=0), 10),
        (0, PER_HOUR, 3600),
        (3600, PER_HOUR, 3600),
        (3600.0000001, PER_HOUR, 3600),  # float noise from the ledger's times is not an hour
        (3601, PER_HOUR, 7200),
    ],
)
def test_billed_seconds(lifetime: float, billing: Billing, billed: float) -> None:
    assert billed_seconds(lifetime, billing) == billed


def test_windows_add_up_to_the_whole_cost() -> None:
    created, ended = T0, T0 + timedelta(hours=50, minutes=7)
    whole = instance_cost(
        price_per_hour=0.5, created_at=created, ended_at=ended, now=ended, billing=PER_HOUR
    )
    assert whole == pytest.approx(0.5 * 51)
    days = [T0.replace(hour=0) + timedelta(days=n) for n in range(5)]
    parts = [
        instance_cost(
            price_per_hour=0.5,
            created_at=created,
            ended_at=ended,
            now=ended,
            billing=PER_HOUR,
            since=a,
            until=b,
        )
        for a, b in pairwise(days)
    ]
    assert sum(parts) == pytest.approx(whole)


KNOWN = [
    # id, provider, created offset (s), lifetime (s) or None (still running), price
    ("i-short", "sec", 0, 10, 0.0104),
    ("i-hourish", "sec", 100, 3700, 0.0208),
    ("i-long", "hour", 0, 3 * 3600 + 1, 1.0),
    ("i-blip", "hour", 5000, 5, 0.25),
    ("i-running", "sec", 7200, None, 2.0),
    ("i-unpriced", "sec", 0, 500, None),
]


@pytest.fixture
def priced_ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger.open(tmp_path / "state")
    ledger.record_observation(
        run=None,
        at=T0,
        commit=None,
        documents={},
        billing={"sec": ("per-second", 60.0), "hour": ("per-hour", 60.0)},
    )
    for n, (node, provider, offset, lifetime, price) in enumerate(KNOWN):
        ledger.record_instance(
            id=node,
            provider=provider,
            env="production",
            service="web" if n % 2 else "api",
            generation=1,
            slot=n,
            name=None,
            image="ami-1",
            size="t3.micro",
            price_per_hour=price,
            state="running",
            created_at=T0 + timedelta(seconds=offset),
            op=None,
        )
        if lifetime is not None:
            ledger.set_instance_state(
                node, state="destroyed", at=T0 + timedelta(seconds=offset + lifetime)
            )
    return ledger


def _expected(now: datetime, since: datetime | None = None, until: datetime | None = None) -> float:
    billing = {"sec": PER_SECOND, "hour": PER_HOUR}
    return sum(
        instance_cost(
            price_per_hour=price,
            created_at=T0 + timedelta(seconds=offset),
            ended_at=None if life is None else T0 + timedelta(seconds=offset + life),
            now=now,
            billing=billing[provider],
            since=since,
            until=until,
        )
        for _, provider, offset, life, price in KNOWN
    )


def test_sql_costs_match_price_times_billed_time(priced_ledger: Ledger) -> None:
    now = T0 + timedelta(hours=5)
    by_hand = (
        0.0104 * 60 / 3600  # 10 s billed as the 60 s minimum
        + 0.0208 * 3700 / 3600
        + 1.0 * 4  # 3 h 1 s billed as 4 hours
        + 0.25 * 1  # 5 s billed as one hour
        + 2.0 * (5 * 3600 - 7200) / 3600  # still running
    )
    assert _expected(now) == pytest.approx(by_hand)
    for by in ("env", "service", "generation", "provider", "day"):
        rows = priced_ledger.cost_rows(by=by, now=now)
        assert sum(r["cost"] for r in rows) == pytest.approx(by_hand), by
    per_provider = {
        r["provider"]: r["cost"] for r in priced_ledger.cost_rows(by="provider", now=now)
    }
    assert per_provider["hour"] == pytest.approx(4.25)


def test_sql_windows_match_the_pure_window(priced_ledger: Ledger) -> None:
    now = T0 + timedelta(hours=5)
    since, until = T0 + timedelta(minutes=30), T0 + timedelta(hours=2, minutes=10)
    rows = priced_ledger.cost_rows(by="service", now=now, since=since, until=until)
    assert sum(r["cost"] for r in rows) == pytest.approx(_expected(now, since, until))


def _spec(size: str, price: float | None, strategy: Strategy = Strategy.BLUE_GREEN) -> ServiceSpec:
    return ServiceSpec(
        env="production",
        name="web",
        provider="cloud",
        image="ami-2",
        size=size,
        count=2,
        strategy=strategy,
        keep_previous=1800,
        fingerprint="fp2",
        price_per_hour=price,
    )


def _running(node: str, generation: int) -> ObservedInstance:
    return ObservedInstance(
        id=node,
        provider="cloud",
        state=InstanceState.RUNNING,
        image="ami-1",
        size="t3.micro",
        env="production",
        service="web",
        generation=generation,
    )


def test_blue_green_size_change_monthly_delta_and_overlap() -> None:
    spec = _spec("t3.small", 0.0208)
    desired = DesiredState(
        root=".",
        owner="acme",
        providers={},
        environments=(Environment(name="production", provider="cloud", services=(spec,)),),
    )
    plan = Plan(
        actions=(
            Action(ActionKind.CREATE, Reason.SPEC_CHANGED, "production", "web", 2, "cloud", slot=1),
            Action(ActionKind.CREATE, Reason.SPEC_CHANGED, "production", "web", 2, "cloud", slot=2),
            Action(
                ActionKind.ACTIVATE,
                Reason.SPEC_CHANGED,
                "production",
                "web",
                2,
                "cloud",
                previous=1,
            ),
        )
    )
    costs = compute_plan_costs(
        plan,
        desired=desired,
        observed=[_running("i-1", 1), _running("i-2", 1)],
        prices=PriceBook(
            specs={("production", "web"): 0.0208}, instances={"i-1": 0.0104, "i-2": 0.0104}
        ),
    )
    assert costs.monthly_cost_delta == 15.18
    assert costs.overlap_cost == pytest.approx(0.01)
    assert costs.overlap == (0.0, 0.0, pytest.approx(2 * 0.0104 * 0.5))


def test_recreate_has_no_overlap_and_unknown_prices_are_named() -> None:
    spec = _spec("t3.small", None, Strategy.RECREATE)
    desired = DesiredState(
        root=".",
        owner="acme",
        providers={},
        environments=(Environment(name="production", provider="cloud", services=(spec,)),),
    )
    plan = Plan(
        actions=(
            Action(ActionKind.DESTROY, Reason.SPEC_CHANGED, "production", "web", 1, "cloud",
                   instance_id="i-1"),
            Action(ActionKind.CREATE, Reason.SPEC_CHANGED, "production", "web", 2, "cloud", slot=1),
            Action(ActionKind.ACTIVATE, Reason.SPEC_CHANGED, "production", "web", 2, "cloud",
                   previous=1),
        )
    )  # fmt: skip
    costs = compute_plan_costs(
        plan,
        desired=desired,
        observed=[_running("i-1", 1)],
        prices=PriceBook(specs={("production", "web"): None}, instances={"i-1": 0.0104}),
    )
    assert costs.monthly == (pytest.approx(-0.0104 * 730), 0.0, 0.0)
    assert costs.overlap_cost == 0
    assert costs.unpriced == ("production/web",)
