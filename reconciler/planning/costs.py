"""What instances cost: billing arithmetic and a plan's cost consequences.

Owns: the billing rules of the provider profiles (`per-second` with a minimum,
`per-hour` rounded up), the cost of one instance over a time window, and the monthly
run-rate change and one-off overlap cost of a `Plan`. The ledger's SQL aggregates
follow the same rules (see `reconciler.ledger.costsql`; tests hold the two together).
Must not: perform I/O: prices arrive in a `PriceBook` built by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from reconciler.model import (
    ActionKind,
    DesiredState,
    ObservedInstance,
    Plan,
    ProviderProfile,
    Strategy,
)

HOURS_PER_MONTH = 730.0  # the cloud providers' own convention: 8760 hours / 12
PER_SECOND = "per-second"
PER_HOUR = "per-hour"
BILLING_MODES = (PER_SECOND, PER_HOUR)


@dataclass(frozen=True)
class Billing:
    """How a provider turns an instance's lifetime into billed time."""

    mode: str = PER_SECOND
    minimum: float = 60.0  # seconds; per-second billing only (EC2 Linux: 60 s)

    def __post_init__(self) -> None:
        if self.mode not in BILLING_MODES:
            raise ValueError(f"unknown billing mode {self.mode!r}; expected {BILLING_MODES}")

    @classmethod
    def of(cls, profile: ProviderProfile) -> Billing:
        return cls(mode=profile.billing, minimum=profile.billing_minimum)


def billed_seconds(lifetime: float, billing: Billing) -> float:
    """The seconds a provider charges for an instance that existed `lifetime` seconds.

    Lifetimes are rounded to the millisecond first: the ledger's times come back
    through floating point, and 3600.0000001 s must not bill a second hour.
    """
    lifetime = max(0.0, round(lifetime, 3))
    if billing.mode == PER_HOUR:
        # A launched instance bills its first hour even if it died at once.
        return max(1, math.ceil(lifetime / 3600)) * 3600.0
    return max(lifetime, billing.minimum)


def instance_cost(
    *,
    price_per_hour: float | None,
    created_at: datetime,
    ended_at: datetime | None,
    now: datetime,
    billing: Billing,
    since: datetime | None = None,
    until: datetime | None = None,
) -> float:
    """Price x billed time, counting only the part of the billed span inside the window.

    The billed span starts at launch and lasts `billed_seconds` (a minimum or a
    rounded-up final hour is charged as if the instance had run on), so the costs of
    adjacent windows (days, say) always add up to the instance's whole cost.
    """
    if not price_per_hour:
        return 0.0
    lifetime = ((ended_at or now) - created_at).total_seconds()
    start = created_at.timestamp()
    end = start + billed_seconds(lifetime, billing)
    low = max(start, since.timestamp()) if since is not None else start
    high = min(end, until.timestamp()) if until is not None else end
    return price_per_hour * max(0.0, high - low) / 3600.0


# ---------------------------------------------------------------- plans


@dataclass(frozen=True)
class PriceBook:
    """Prices per hour a plan's cost needs, gathered by the caller (ledger, provider data)."""

    # (env, service) -> the price of one instance of its desired spec.
    specs: Mapping[tuple[str, str], float | None]
    # live instance id -> the price recorded when it was created.
    instances: Mapping[str, float | None]


@dataclass(frozen=True)
class PlanCosts:
    """A plan's cost: per action (aligned with `plan.actions`) and in total.

    `monthly_cost_delta` is the change of the monthly run-rate (730 h) of the
    instances left running once the plan is done and the standby generations it
    makes have expired; `overlap_cost` is the one-off cost of keeping each previous
    generation beside its successor for `keep_previous`. `unpriced` names what had no
    known price (counted as zero).
    """

    monthly: tuple[float, ...]
    overlap: tuple[float, ...]
    unpriced: tuple[str, ...] = ()

    @property
    def monthly_cost_delta(self) -> float:
        return round(sum(self.monthly), 2)

    @property
    def overlap_cost(self) -> float:
        return round(sum(self.overlap), 2)


def compute_plan_costs(
    plan: Plan,
    *,
    desired: DesiredState,
    observed: Sequence[ObservedInstance],
    prices: PriceBook,
) -> PlanCosts:
    """Each action's effect on the monthly run-rate and its one-off overlap cost."""
    destroyed = {a.instance_id for a in plan.actions if a.kind is ActionKind.DESTROY}
    unpriced: list[str] = []

    def spec_price(env: str, service: str) -> float:
        price = prices.specs.get((env, service))
        if price is None:
            unpriced.append(f"{env}/{service}")
        return price or 0.0

    def live_price(instance: ObservedInstance) -> float:
        price = prices.instances.get(instance.id)
        if price is None:
            # An instance the ledger did not price (adopted, say): its service's price.
            return spec_price(instance.env or "", instance.service or "")
        return price

    def members(env: str, service: str, generation: int | None) -> list[ObservedInstance]:
        return [
            i
            for i in observed
            if i.alive and (i.env, i.service, i.generation) == (env, service, generation)
        ]

    alive = {i.id: i for i in observed if i.alive}
    monthly: list[float] = []
    overlap: list[float] = []
    for action in plan.actions:
        rate, once = 0.0, 0.0
        if action.kind is ActionKind.CREATE:
            rate = spec_price(action.env, action.service)
        elif action.kind is ActionKind.DESTROY and action.instance_id in alive:
            rate = -live_price(alive[action.instance_id])
        elif action.kind is ActionKind.ACTIVATE and action.previous is not None:
            # The previous generation goes to standby and expires: its run-rate leaves.
            # (A re-activated standby's own instances already run and already bill.)
            leaving = [
                i
                for i in members(action.env, action.service, action.previous)
                if i.id not in destroyed
            ]
            leaving_rate = sum(live_price(i) for i in leaving)
            rate = -leaving_rate
            spec = desired.service(action.env, action.service)
            if spec is not None and spec.strategy is Strategy.BLUE_GREEN:
                once = leaving_rate * spec.keep_previous / 3600.0
        monthly.append(rate * HOURS_PER_MONTH)
        overlap.append(once)
    return PlanCosts(
        monthly=tuple(monthly), overlap=tuple(overlap), unpriced=tuple(sorted(set(unpriced)))
    )
