"""The I/O side of costs and orphans: gathering prices, storing and reading observations.

Owns: asking providers for size prices and unowned listings, asking the ledger for
recorded prices, snapshots and rows, and handing them to the pure `costs` and
`orphans` modules. Must not: decide what anything costs or which kind an orphan is
(those modules do), or mutate a cloud.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from reconciler.ledger import Ledger
from reconciler.model import DesiredState, ObservedInstance, ObservedVolume, Plan
from reconciler.planning.costs import Billing, PlanCosts, PriceBook, compute_plan_costs
from reconciler.planning.orphans import (
    DesiredService,
    Observation,
    Orphan,
    classify_orphans,
    desired_services,
    observation_document,
    observation_from_document,
)
from reconciler.planning.volume_orphans import SnapshotFact, VolumeFact, volume_orphans
from reconciler.providers import ComputeProvider
from reconciler.providers.base import instance_price


def plan_costs(
    plan: Plan,
    *,
    desired: DesiredState,
    observed: Sequence[ObservedInstance],
    providers: Mapping[str, ComputeProvider],
    ledger: Ledger,
) -> PlanCosts:
    """The plan's monthly run-rate change and overlap cost, priced like `apply` prices."""
    specs: dict[tuple[str, str], float | None] = {}
    for spec in desired.services():
        specs[spec.key] = instance_price(
            spec.price_per_hour, providers.get(spec.provider), spec.size
        )
    alive = [i.id for i in observed if i.alive]
    rows = ledger.instance_rows_by_id(alive)
    recorded = {node: row.get("price_per_hour") for node, row in rows.items()}
    return compute_plan_costs(
        plan, desired=desired, observed=observed, prices=PriceBook(specs=specs, instances=recorded)
    )


def _size_prices(
    provider: ComputeProvider, instances: Sequence[ObservedInstance]
) -> dict[str, float | None]:
    # libcloud's pricing data is a local file: no API call per size.
    return {size: provider.price_per_hour(size) for size in sorted({i.size for i in instances})}


def record_observation(
    ledger: Ledger,
    *,
    desired: DesiredState,
    providers: Mapping[str, ComputeProvider],
    observed: Sequence[ObservedInstance],
    run: int | None,
    at: datetime,
) -> None:
    """Store this pass's listing (one ledger row per provider) and each profile's billing."""
    wanted = desired_services(desired)
    documents = {}
    for name, provider in providers.items():
        mine = [i for i in observed if i.provider == name]
        documents[name] = observation_document(
            desired=wanted, instances=mine, prices=_size_prices(provider, mine)
        )
    billing = {
        name: (profile.billing, profile.billing_minimum)
        for name, profile in desired.providers.items()
    }
    ledger.record_observation(
        run=run, at=at, commit=desired.commit, documents=documents, billing=billing
    )


@dataclass(frozen=True)
class OrphanReport:
    orphans: tuple[Orphan, ...]
    observed_at: datetime | None  # when the clouds were listed; None: never
    live: bool


def live_observations(
    desired: DesiredState,
    providers: Mapping[str, ComputeProvider],
    *,
    include_unowned: bool,
    now: datetime,
) -> list[Observation]:
    observations = []
    for name in sorted(providers):
        provider = providers[name]
        owned = tuple(provider.list_owned(desired.owner))
        unowned = tuple(provider.list_unowned(desired.owner)) if include_unowned else ()
        observations.append(
            Observation(
                provider=name,
                at=now,
                instances=owned,
                unowned=unowned,
                prices=_size_prices(provider, [*owned, *unowned]),
                billing=Billing.of(desired.providers[name]),
            )
        )
    return observations


def stored_observations(ledger: Ledger) -> tuple[list[Observation], list[DesiredService]]:
    billing = ledger.provider_billing()
    observations: list[Observation] = []
    wanted: dict[tuple[str, str], DesiredService] = {}
    for row in ledger.latest_observation():
        mode, minimum = billing.get(row["provider"], ("per-second", 60.0))
        observation, desired = observation_from_document(
            row["provider"],
            at=datetime.fromisoformat(row["at"]),
            document=row["document"],
            billing=Billing(mode=mode, minimum=minimum),
        )
        observations.append(observation)
        wanted.update({(d.env, d.service): d for d in desired})
    return observations, list(wanted.values())


def find_orphans(
    ledger: Ledger,
    *,
    now: datetime,
    observations: Sequence[Observation] | None = None,
    desired: Sequence[DesiredService] | None = None,
    include_unowned: bool = False,
    live_volumes: Sequence[ObservedVolume] | None = None,
    volume_services: set[tuple[str, str]] | None = None,
) -> OrphanReport:
    """Orphans judged on the given (live) observations, else on the last stored ones."""
    live = observations is not None
    if observations is None:
        observations, stored_desired = stored_observations(ledger)
        desired = stored_desired if desired is None else desired
    ids = [i.id for o in observations for i in o.instances]
    runs = ledger.run_rows(limit=1)
    current_run = runs[0]["id"] if runs and runs[0]["finished_at"] is None else None
    orphans = classify_orphans(
        desired=desired or (),
        observations=observations,
        generations=ledger.generations_for(
            (i.env, i.service, i.generation)
            for o in observations
            for i in o.instances
            if i.env is not None and i.service is not None and i.generation is not None
        ),
        ledger_instances=ledger.instance_rows_by_id(ids),
        open_operations=ledger.open_operations(),
        current_run=current_run,
        now=now,
        include_unowned=include_unowned,
    )
    # Which services still declare a volume (unknown in a stored observation: any
    # service still desired is taken to).
    wanted = volume_services if volume_services is not None else {
        (d.env, d.service) for d in desired or ()
    }
    orphans += storage_orphans(ledger, wanted=wanted, now=now, live_volumes=live_volumes)
    observed_at = min((o.at for o in observations), default=None)
    return OrphanReport(orphans=tuple(orphans), observed_at=observed_at, live=live)


def live_volume_listing(
    desired: DesiredState, providers: Mapping[str, ComputeProvider]
) -> list[ObservedVolume]:
    """Every owned volume of every provider that can hold one (for `ledger orphans --live`)."""
    found: list[ObservedVolume] = []
    for name in sorted(providers):
        port = providers[name].volumes()
        if port is not None:
            found.extend(port.list_owned(desired.owner))
    return found


def storage_orphans(
    ledger: Ledger,
    *,
    wanted: set[tuple[str, str]],
    now: datetime,
    live_volumes: Sequence[ObservedVolume] | None = None,
) -> list[Orphan]:
    """Volumes attached to nothing and snapshots of deleted volumes, from the ledger's
    volume events (which volume was made, attached, detached, deleted; which snapshot
    was taken), or with `live_volumes` from the cloud's listing for the volumes."""
    events = sorted(
        (e for kind in ("volume_created", "volume_attached", "volume_detached", "volume_deleted",
                        "snapshot_created") for e in ledger.event_rows(kind=kind)),
        key=lambda e: (e["at"], e["id"]),
    )  # fmt: skip
    volumes: dict[str, VolumeFact] = {}
    snapshots: list[SnapshotFact] = []
    for event in events:
        detail = event["detail"] or {}
        volume_id = str(detail.get("volume") or "")
        at = datetime.fromisoformat(event["at"])
        if event["kind"] == "volume_created":
            volumes[volume_id] = VolumeFact(
                id=volume_id, provider=str(detail.get("provider") or ""), env=event["env"],
                service=event["service"], size=int(detail.get("size") or 0), attached_to=None,
                created_at=at, price_per_gib_month=detail.get("price_per_gib_month"),
            )  # fmt: skip
        elif event["kind"] == "volume_deleted":
            volumes.pop(volume_id, None)
        elif event["kind"] in ("volume_attached", "volume_detached") and volume_id in volumes:
            holder = event["instance"] if event["kind"] == "volume_attached" else None
            volumes[volume_id] = replace(volumes[volume_id], attached_to=holder)
        elif event["kind"] == "snapshot_created":
            snapshots.append(SnapshotFact(
                id=str(detail.get("snapshot")), provider=str(detail.get("provider") or ""),
                env=event["env"], service=event["service"], volume=volume_id,
                size=int(detail.get("size") or 0), created_at=at,
                price_per_gib_month=detail.get("price_per_gib_month"),
            ))  # fmt: skip
    if live_volumes is not None:
        recorded = volumes
        volumes = {
            v.id: VolumeFact(
                id=v.id, provider=v.provider, env=v.env or "", service=v.service or "",
                size=v.size, attached_to=v.attached_to,
                created_at=recorded[v.id].created_at if v.id in recorded else None,
                price_per_gib_month=recorded[v.id].price_per_gib_month
                if v.id in recorded else None,
            )
            for v in live_volumes
        }  # fmt: skip
    return volume_orphans(list(volumes.values()), snapshots, wanted=wanted, now=now)
