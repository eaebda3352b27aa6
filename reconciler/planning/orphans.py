"""Orphans: what runs (and bills) in the cloud that nothing desires, and why.

Owns: classifying instances and open operations into orphan kinds from the desired
services, one observation per provider, the ledger's rows and `now`; and the JSON
form in which a pass stores its observation for `ledger orphans` to judge later.
Must not: perform I/O or act: an orphan is reported with what to do, never removed
here (the planner decides what a pass destroys; unowned instances are never touched).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from reconciler.model import (
    DesiredState,
    GenerationRecord,
    GenerationState,
    InstanceState,
    ObservedInstance,
)
from reconciler.planning.costs import Billing, instance_cost

UNDECLARED = "undeclared"
STANDBY_EXPIRED = "standby-expired"
SURVIVED_TERMINATION = "survived-termination"
FAILED_LIVE = "failed-live"
STALE_OPERATION = "stale-operation"
UNOWNED = "unowned"
UNREADABLE = "unreadable-tags"

# Most alarming first: one instance is reported once, under the first kind it fits.
KINDS = (SURVIVED_TERMINATION, UNREADABLE, FAILED_LIVE, STANDBY_EXPIRED, UNDECLARED,
         STALE_OPERATION, UNOWNED)  # fmt: skip

ADVICE = {
    UNDECLARED: "owned but no longer desired: `reconciler apply` prunes it (add "
    "--allow-mass-destroy if a guard refused), or declare the service again",
    STANDBY_EXPIRED: "the spare outlived keep_previous: the next `reconciler apply` destroys "
    "it; if it lingers, check that the daemon runs",
    SURVIVED_TERMINATION: "the ledger holds it destroyed but the cloud still runs it: "
    "terminate it with the cloud's own tools",
    FAILED_LIVE: "left over from a failed rollout: `reconciler apply` removes it, or "
    "terminate it with the cloud's own tools",
    STALE_OPERATION: "an operation whose outcome was never recorded: check its instance; "
    "`reconciler ledger rebuild` reconciles the ledger with the cloud",
    UNOWNED: "not ours (no owner tag): reported only, never touched",
    UNREADABLE: "carries our owner tag but identity tags no pass could have written: left "
    "alone; fix its tags or terminate it with the cloud's own tools",
    "volume-unattached": "a data volume attached to nothing: a pass never deletes one; "
    "`reconciler volume delete ENV SERVICE --yes` once its data is not needed",
    "snapshot-orphaned": "a snapshot of a volume that no longer exists: reconciler never "
    "deletes snapshots; delete it with the cloud's own tools once it is not needed",
}


@dataclass(frozen=True)
class DesiredService:
    env: str
    service: str
    provider: str
    keep_previous: float  # seconds


@dataclass(frozen=True)
class Observation:
    """One provider's listing at one moment, with the prices of the sizes it saw."""

    provider: str
    at: datetime
    instances: tuple[ObservedInstance, ...]
    prices: Mapping[str, float | None] = field(default_factory=dict)  # size -> per hour
    unowned: tuple[ObservedInstance, ...] = ()
    billing: Billing = field(default_factory=Billing)


@dataclass(frozen=True)
class Orphan:
    kind: str
    instance: str | None
    provider: str
    env: str | None
    service: str | None
    generation: int | None
    state: str
    since: datetime | None  # launch (or intent) time
    age_seconds: float | None
    price_per_hour: float | None
    cost: float  # so far, under the provider's billing
    action: str  # what to do about it
    monthly_cost: float | None = None  # volumes and snapshots: what a month of it costs

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "instance": self.instance,
            "provider": self.provider,
            "env": self.env,
            "service": self.service,
            "generation": self.generation,
            "state": self.state,
            "created_at": self.since,
            "age_seconds": None if self.age_seconds is None else round(self.age_seconds),
            "price_per_hour": self.price_per_hour,
            "cost": round(self.cost, 6),
            "action": self.action,
            "monthly_cost": None if self.monthly_cost is None else round(self.monthly_cost, 4),
        }


def desired_services(desired: DesiredState) -> tuple[DesiredService, ...]:
    return tuple(
        DesiredService(
            env=s.env, service=s.name, provider=s.provider, keep_previous=s.keep_previous
        )
        for s in desired.services()
    )


def classify_orphans(
    *,
    desired: Sequence[DesiredService],
    observations: Sequence[Observation],
    generations: Sequence[GenerationRecord],
    ledger_instances: Mapping[str, Mapping[str, Any]],
    open_operations: Sequence[Mapping[str, Any]] = (),
    current_run: int | None = None,
    now: datetime,
    include_unowned: bool = False,
) -> list[Orphan]:
    """Every orphan, most alarming kind first, then by provider, env, service and age.

    `ledger_instances` holds the ledger's rows (any state) for the observed ids;
    `current_run` is a pass still in progress, whose open operations are not stale.
    """
    wanted = {(d.env, d.service): d for d in desired}
    gens = {(g.env, g.service, g.number): g for g in generations}
    found: list[Orphan] = []
    for observation in observations:
        for instance in observation.instances:
            if not instance.alive:
                continue
            row = ledger_instances.get(instance.id)
            kind = _kind_of(instance, row, gens, wanted, now=now)
            if kind is not None:
                found.append(_orphan(kind, instance, row, observation, now=now))
        if include_unowned:
            found.extend(
                _orphan(UNOWNED, i, None, observation, now=now)
                for i in observation.unowned
                if i.alive
            )
    found.extend(_stale_operations(open_operations, current_run=current_run, now=now))
    rank = {kind: n for n, kind in enumerate(KINDS)}
    found.sort(
        key=lambda o: (
            rank[o.kind],
            o.provider,
            o.env or "",
            o.service or "",
            -(o.age_seconds or 0.0),
            o.instance or "",
        )
    )
    return found


def _kind_of(
    instance: ObservedInstance,
    row: Mapping[str, Any] | None,
    gens: Mapping[tuple[str, str, int], GenerationRecord],
    wanted: Mapping[tuple[str, str], DesiredService],
    *,
    now: datetime,
) -> str | None:
    if row is not None and row.get("state") in ("destroyed", "gone"):
        return SURVIVED_TERMINATION
    if instance.unreadable is not None:
        return UNREADABLE
    key = (instance.env or "", instance.service or "")
    gen = gens.get((*key, instance.generation or 0))
    if gen is not None and gen.failed:
        return FAILED_LIVE
    spec = wanted.get(key)
    if spec is None:
        return UNDECLARED
    expired = (
        gen is not None
        and gen.state is GenerationState.STANDBY
        and (since := gen.state_since or gen.retired_at) is not None
        and since + timedelta(seconds=spec.keep_previous) < now
    )
    return STANDBY_EXPIRED if expired else None


def _orphan(
    kind: str,
    instance: ObservedInstance,
    row: Mapping[str, Any] | None,
    observation: Observation,
    *,
    now: datetime,
) -> Orphan:
    recorded = row.get("price_per_hour") if row is not None else None
    price = recorded if recorded is not None else observation.prices.get(instance.size)
    since = instance.launched_at
    if since is None and row is not None and row.get("created_at"):
        since = datetime.fromisoformat(str(row["created_at"]))
    cost = 0.0
    if since is not None:
        cost = instance_cost(
            price_per_hour=price,
            created_at=since,
            ended_at=None,
            now=now,
            billing=observation.billing,
        )
    return Orphan(
        kind=kind,
        instance=instance.id,
        provider=observation.provider,
        env=instance.env,
        service=instance.service,
        generation=instance.generation,
        state=instance.state.value,
        since=since,
        age_seconds=(now - since).total_seconds() if since is not None else None,
        price_per_hour=price,
        cost=cost,
        action=f"{instance.unreadable}; {ADVICE[kind]}" if instance.unreadable else ADVICE[kind],
    )


def _stale_operations(
    operations: Iterable[Mapping[str, Any]], *, current_run: int | None, now: datetime
) -> list[Orphan]:
    stale: list[Orphan] = []
    for op in operations:
        if current_run is not None and op.get("run") == current_run:
            continue  # the pass in progress will record its outcome
        since = datetime.fromisoformat(str(op["intent_at"])) if op.get("intent_at") else None
        stale.append(
            Orphan(
                kind=STALE_OPERATION,
                instance=op.get("instance_id"),
                provider="",
                env=None,
                service=None,
                generation=None,
                state=f"{op.get('kind')} {op.get('state')}: {op.get('target')}",
                since=since,
                age_seconds=(now - since).total_seconds() if since is not None else None,
                price_per_hour=None,
                cost=0.0,
                action=ADVICE[STALE_OPERATION],
            )
        )
    return stale


# ---------------------------------------------------------------- stored observations


def observation_document(
    *,
    desired: Sequence[DesiredService],
    instances: Iterable[ObservedInstance],
    prices: Mapping[str, float | None],
) -> dict[str, Any]:
    """The JSON a pass stores per provider: what it listed, what was desired, prices."""
    return {
        "instances": [
            {
                "id": i.id,
                "state": i.state.value,
                "image": i.image,
                "size": i.size,
                "env": i.env,
                "service": i.service,
                "generation": i.generation,
                "slot": i.slot,
                "name": i.name,
                "launched_at": i.launched_at.isoformat() if i.launched_at else None,
                **({"unreadable": i.unreadable} if i.unreadable else {}),
            }
            for i in instances
        ],
        "desired": [
            {
                "env": d.env,
                "service": d.service,
                "provider": d.provider,
                "keep_previous": d.keep_previous,
            }
            for d in desired
        ],
        "prices": dict(prices),
    }


def observation_from_document(
    provider: str, *, at: datetime, document: Mapping[str, Any], billing: Billing
) -> tuple[Observation, tuple[DesiredService, ...]]:
    instances = tuple(
        ObservedInstance(
            id=item["id"],
            provider=provider,
            state=InstanceState(item["state"]),
            image=item.get("image") or "",
            size=item.get("size") or "",
            env=item.get("env"),
            service=item.get("service"),
            generation=item.get("generation"),
            slot=item.get("slot"),
            name=item.get("name"),
            launched_at=(
                datetime.fromisoformat(item["launched_at"]) if item.get("launched_at") else None
            ),
            unreadable=item.get("unreadable"),
        )
        for item in document.get("instances", [])
    )
    desired = tuple(
        DesiredService(
            env=d["env"],
            service=d["service"],
            provider=d.get("provider", ""),
            keep_previous=float(d.get("keep_previous", 0.0)),
        )
        for d in document.get("desired", [])
    )
    observation = Observation(
        provider=provider,
        at=at,
        instances=instances,
        prices=dict(document.get("prices", {})),
        billing=billing,
    )
    return observation, desired
