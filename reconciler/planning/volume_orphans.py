"""Orphaned storage: data volumes attached to nothing and snapshots of volumes that no
longer exist, with what a month of each costs.

Part of the planner's pure layer: the facts come from the ledger's volume events (and,
with `--live`, the cloud's volume listing); nothing here reads or deletes anything
(a pass never deletes a volume; `reconciler volume delete` does, on request).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from reconciler.planning.orphans import Orphan

HOURS_PER_MONTH = 730.0
VOLUME_UNATTACHED = "volume-unattached"
SNAPSHOT_ORPHANED = "snapshot-orphaned"


@dataclass(frozen=True)
class VolumeFact:
    id: str
    provider: str
    env: str
    service: str
    size: int
    attached_to: str | None
    created_at: datetime | None
    price_per_gib_month: float | None


@dataclass(frozen=True)
class SnapshotFact:
    id: str
    provider: str
    env: str
    service: str
    volume: str
    size: int
    created_at: datetime | None
    price_per_gib_month: float | None


def volume_orphans(
    volumes: Sequence[VolumeFact],
    snapshots: Sequence[SnapshotFact],
    *,
    wanted: Collection[tuple[str, str]],
    now: datetime,
) -> list[Orphan]:
    """`wanted`: the (env, service) pairs whose desired state still has a volume."""
    orphans: list[Orphan] = []
    existing = {v.id for v in volumes}
    for volume in sorted(volumes, key=lambda v: (v.env, v.service, v.id)):
        if volume.attached_to is not None:
            continue
        if (volume.env, volume.service) in wanted:
            action = (
                "its service still declares it: the next pass attaches it to the service's "
                "instance; if it stays unattached, check the daemon's log"
            )
        else:
            action = (f"no desired service has it: `reconciler volume delete {volume.env} "
                      f"{volume.service} --yes` once its data is not needed")  # fmt: skip
        orphans.append(_orphan(VOLUME_UNATTACHED, volume.id, volume.provider, volume.env,
                               volume.service, "available", volume.created_at, volume.size,
                               volume.price_per_gib_month, action, now))  # fmt: skip
    for snapshot in sorted(snapshots, key=lambda s: (s.env, s.service, s.id)):
        if snapshot.volume in existing:
            continue
        action = (f"its volume {snapshot.volume} was deleted: delete the snapshot with the "
                  "cloud's own tools once its data is not needed (reconciler never deletes "
                  "snapshots)")  # fmt: skip
        orphans.append(_orphan(SNAPSHOT_ORPHANED, snapshot.id, snapshot.provider, snapshot.env,
                               snapshot.service, "snapshot", snapshot.created_at, snapshot.size,
                               snapshot.price_per_gib_month, action, now))  # fmt: skip
    return orphans


def _orphan(
    kind: str, id: str, provider: str, env: str, service: str, state: str,
    since: datetime | None, size: int, price: float | None, action: str, now: datetime,
) -> Orphan:  # fmt: skip
    monthly = size * price if price is not None else None
    per_hour = monthly / HOURS_PER_MONTH if monthly is not None else None
    age = (now - since).total_seconds() if since is not None else None
    cost = per_hour * age / 3600 if per_hour is not None and age is not None else 0.0
    return Orphan(
        kind=kind, instance=id, provider=provider, env=env, service=service, generation=None,
        state=state, since=since, age_seconds=age, price_per_hour=per_hour, cost=cost,
        action=action, monthly_cost=monthly,
    )  # fmt: skip
