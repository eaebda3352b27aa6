"""Billing arithmetic (pure) and the ledger's SQL cost aggregates, held to the same rules."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.ledger import Ledger
from reconciler.model import (
    Action,
    ActionKind,
    DesiredState,
    Environment,
    GenerationState,
    InstanceState,
    ObservedInstance,
    Plan,
    Reason,
    ServiceSpec,
    Strategy,
)
from reconciler.planning.costs import (
    Billing,
    PriceBook,
    billed_seconds,
    compute_plan_costs,
    instance_cost,
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


# ---------------------------------------------------------------- the cost rollup

_WRITE = st.sampled_from(["launch", "destroy", "rerecord", "billing", "retire", "delete"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(_WRITE, st.integers(0, 5), st.integers(1, 20_000)), max_size=30))
def test_rollup_stays_equal_to_pricing_every_instance(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int, int]]
) -> None:
    """Whatever the writes (the store's, a rebuild's, an operator deleting a row with
    sqlite3, a billing change), whole-life listings read from the rollup agree with a
    window that prices every instance row, and with the pure billing rules."""
    state = tmp_path_factory.mktemp("rollup")
    ledger = Ledger.open(state)
    billing = {"sec": ("per-second", 60.0), "hour": ("per-hour", 60.0)}
    ledger.record_observation(run=None, at=T0, commit=None, documents={}, billing=billing)
    for number in (1, 2, 3):
        ledger.record_generation(
            env="production", service="web", number=number, provider="sec",
            fingerprint=f"f{number}", image="ami-1", size="t3.micro", count=1, commit=None,
            state=GenerationState.ACTIVE, at=T0,
        )  # fmt: skip
    launched: dict[str, tuple[str, int, datetime, float]] = {}
    clock = T0
    for n, (write, pick, seconds) in enumerate(steps):
        clock += timedelta(seconds=seconds)
        ids = sorted(launched)
        target = ids[pick % len(ids)] if ids else None
        if write == "launch" or target is None:
            node, provider = f"i-{n}", ("sec", "hour")[pick % 2]
            launched[node] = (provider, 1 + pick % 3, clock, 0.01 * (1 + pick))
            _record(ledger, node, launched[node])
        elif write == "destroy":
            ledger.set_instance_state(target, state="destroyed", at=clock)
        elif write == "rerecord":
            _record(ledger, target, launched[target])  # a rebuild writing the row again
        elif write == "billing":
            mode = ("per-hour", "per-second")[pick % 2]
            billing = {**billing, "sec": (mode, float(60 * pick))}
            ledger.record_observation(run=None, at=clock, commit=None, documents={},
                                      billing=billing)  # fmt: skip
        elif write == "retire":
            ledger.set_generation_state(
                "production", "web", 1 + pick % 3, state=GenerationState.STANDBY, at=clock
            )
        else:
            ledger.close()
            with sqlite3.connect(state / "ledger.sqlite") as raw:
                raw.execute("DELETE FROM instances WHERE id = ?", [target])
            ledger = Ledger.open(state)
            del launched[target]
        _check_rollup(ledger, billing, now=clock + timedelta(hours=1))
    ledger.close()


def _check_rollup(ledger: Ledger, billing: dict[str, tuple[str, float]], *, now: datetime) -> None:
    wide = {"since": T0 - timedelta(days=1), "until": now + timedelta(days=1)}
    for by in ("env", "service", "generation", "provider"):
        whole = {_key(r): r["cost"] for r in ledger.cost_rows(by=by, now=now)}
        priced = {_key(r): r["cost"] for r in ledger.cost_rows(by=by, now=now, **wide)}
        assert whole.keys() == priced.keys(), by
        for key, cost in whole.items():
            assert cost == pytest.approx(priced[key], abs=1e-9), (by, key)
    rows = ledger.instance_rows(env=None, service=None, generation=None)
    by_hand = sum(
        instance_cost(
            price_per_hour=row["price_per_hour"],
            created_at=datetime.fromisoformat(row["created_at"]),
            ended_at=datetime.fromisoformat(row["destroyed_at"]) if row["destroyed_at"] else None,
            now=now,
            billing=Billing(mode=billing[row["provider"]][0], minimum=billing[row["provider"]][1]),
        )
        for row in rows
    )
    total = sum(r["cost"] for r in ledger.cost_rows(by="env", now=now))
    assert total == pytest.approx(by_hand, abs=1e-9)
    _check_days(ledger, billing, rows, now=now)
    whole_net = ledger.safety_net_cost(now=now)
    wide_net = ledger.safety_net_cost(now=now, **wide)
    assert whole_net == pytest.approx(wide_net, abs=1e-9)


def _check_days(
    ledger: Ledger,
    billing: dict[str, tuple[str, float]],
    rows: list[dict[str, Any]],
    *,
    now: datetime,
) -> None:
    """Each day's row equals the pure billing rules applied to that day alone."""
    days = {(r["day"], r["service"]): r for r in ledger.cost_rows(by="day", now=now)}
    expected: dict[tuple[str, str], tuple[float, int]] = {}
    for row in rows:
        created = datetime.fromisoformat(row["created_at"])
        ended = datetime.fromisoformat(row["destroyed_at"]) if row["destroyed_at"] else None
        mode, minimum = billing[row["provider"]]
        rule = Billing(mode=mode, minimum=minimum)
        day = created.replace(hour=0, minute=0, second=0, microsecond=0)
        while day < now + timedelta(days=2):
            part = instance_cost(
                price_per_hour=row["price_per_hour"], created_at=created, ended_at=ended,
                now=now, billing=rule, since=day, until=day + timedelta(days=1),
            )  # fmt: skip
            seconds = instance_cost(
                price_per_hour=3600.0, created_at=created, ended_at=ended,
                now=now, billing=rule, since=day, until=day + timedelta(days=1),
            )  # fmt: skip
            if seconds > 0:
                key = (day.date().isoformat(), row["service"])
                cost, count = expected.get(key, (0.0, 0))
                expected[key] = (cost + part, count + 1)
            day += timedelta(days=1)
    assert days.keys() == expected.keys()
    for key, (cost, count) in expected.items():
        assert days[key]["cost"] == pytest.approx(cost, abs=1e-9), key
        assert days[key]["instances"] == count, key


def _record(ledger: Ledger, node: str, launch: tuple[str, int, datetime, float]) -> None:
    provider, generation, created, price = launch
    ledger.record_instance(
        id=node, provider=provider, env="production", service="web", generation=generation,
        slot=1, name=None, image="ami-1", size="t3.micro", price_per_hour=price,
        state="running", created_at=created, op=None,
    )  # fmt: skip


def _key(row: dict[str, object]) -> tuple[object, ...]:
    return tuple(row.get(k) for k in ("env", "service", "generation", "provider"))
