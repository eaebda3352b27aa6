"""`ledger rebuild`: reconstruct generations and instances from the cloud's tags.

Owns: setting a lost or damaged ledger aside (never deleting it), listing every owned
instance through the desired state's providers, and writing the generations and
instances those instances' tags describe into a fresh ledger. Must not: change anything
in the cloud, plan, or run without the state lock (the CLI takes it, as for `apply`).

What cannot be rebuilt: runs, events, operations, commits, and the lifetimes of
instances that are already terminated; so cost history before the rebuild is gone.
Terminated instances are not recorded (a made-up lifetime would be a made-up cost), but
a generation of nothing but terminated instances is, as destroyed, so that its number
is never reused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from reconciler.errors import LedgerError, RebuildRefused
from reconciler.ledger import LEDGER_FILENAME, Ledger
from reconciler.ledger.swap import build_directory, swap_in
from reconciler.model import DesiredState, GenerationState, InstanceState, ObservedInstance
from reconciler.providers import ComputeProvider
from reconciler.providers.base import instance_price

log = structlog.get_logger(__name__)

COST_WARNING = (
    "the ledger was rebuilt from the cloud's tags: runs, events and the cost history "
    "before this point are gone (costs count from each live instance's launch time)"
)
REBUILT = "rebuilt from the cloud's tags"


@dataclass
class RebuildReport:
    generations: list[dict[str, Any]] = field(default_factory=list)
    instances: int = 0
    backup: Path | None = None
    warning: str = COST_WARNING

    def to_json(self) -> dict[str, Any]:
        return {
            "generations": self.generations,
            "instances": self.instances,
            "backup": str(self.backup) if self.backup else None,
            "warning": self.warning,
        }


def rebuild_ledger(
    state_dir: Path,
    desired: DesiredState,
    providers: Mapping[str, ComputeProvider],
    *,
    force: bool,
    now: datetime,
) -> RebuildReport:
    """Refuse (RebuildRefused) if the ledger holds generations and not `force`; else list
    the clouds, set the old file aside, and write what the tags say into a new one."""
    path = state_dir / LEDGER_FILENAME
    if path.exists() and _holds_generations(state_dir) and not force:
        raise RebuildRefused(
            f"{path} still records generations; `ledger rebuild --yes` moves it aside "
            "(as ledger.sqlite.bak-<time>) and rebuilds from the cloud"
        )
    # Listed before anything moves: a failed listing leaves the old ledger in place.
    observed = [i for name in sorted(providers) for i in providers[name].list_owned(desired.owner)]
    # Built aside and swapped in whole: a rebuild killed half-way leaves the old ledger
    # as it was, never one with part of the generations (and unrecorded instances).
    built = build_directory(state_dir)
    with Ledger.open(built) as ledger:
        report = _write(ledger, desired, providers, observed, now=now)
        # Counts, not the listing: the event must stay small whatever the fleet's size.
        detail = {**report.to_json(), "generations": len(report.generations)}
        ledger.record_event(kind="ledger_rebuilt", at=now, detail=detail)
    backup = _backup_name(path, now=now) if path.exists() else None
    swap_in(state_dir, built, backup=backup)
    report.backup = backup
    log.warning("ledger_rebuilt", generations=len(report.generations), instances=report.instances)
    return report


def _holds_generations(state_dir: Path) -> bool:
    try:
        with Ledger.open(state_dir, check="quick") as old:
            return bool(old.generation_rows())
    except LedgerError:
        return True  # unreadable: it may hold anything, so it is set aside, never reused


def _backup_name(path: Path, *, now: datetime) -> Path:
    return path.with_name(f"{path.name}.bak-{now.strftime('%Y%m%dT%H%M%SZ')}")


def _write(
    ledger: Ledger,
    desired: DesiredState,
    providers: Mapping[str, ComputeProvider],
    observed: Sequence[ObservedInstance],
    *,
    now: datetime,
) -> RebuildReport:
    report = RebuildReport()
    by_service: dict[tuple[str, str], dict[int, list[ObservedInstance]]] = {}
    for instance in observed:
        if instance.env is None or instance.service is None or instance.generation is None:
            continue  # identity tags incomplete: the planner prunes these
        groups = by_service.setdefault((instance.env, instance.service), {})
        groups.setdefault(instance.generation, []).append(instance)
    for (env, service), generations in sorted(by_service.items()):
        spec = desired.service(env, service)
        waits = bool(spec and spec.traffic and spec.traffic.waits)
        states = _states(generations, spec.fingerprint if spec else None, waits=waits)
        for number, members in sorted(generations.items()):
            present = [i for i in members if i.state is not InstanceState.GONE]
            alive = [i for i in present if i.alive]
            sample = (alive or present or members)[0]
            launched = [i.launched_at for i in members if i.launched_at is not None]
            state = states[number]
            ledger.record_generation(
                env=env, service=service, number=number, provider=sample.provider,
                fingerprint=sample.fingerprint or "", image=sample.image, size=sample.size,
                count=len(alive), commit=None, state=state, at=min(launched, default=now),
                reason=REBUILT,
            )  # fmt: skip
            ledger.set_generation_fields(env, service, number, image_id=sample.image)
            if state is GenerationState.STANDBY:
                # Retired now: its hot-spare time starts with the rebuild.
                ledger.set_generation_state(env, service, number, state=state, at=now)
            for instance in present:
                price = instance_price(
                    spec.price_per_hour if spec else None,
                    providers[instance.provider], instance.size,
                )  # fmt: skip
                ledger.record_instance(
                    id=instance.id, provider=instance.provider, env=env, service=service,
                    generation=number, slot=instance.slot, name=instance.name,
                    image=instance.image, size=instance.size, price_per_hour=price,
                    state=instance.state.value, created_at=instance.launched_at or now,
                    op=instance.op,
                )  # fmt: skip
                report.instances += 1
            report.generations.append(
                {
                    "env": env,
                    "service": service,
                    "number": number,
                    "state": state.value,
                    "fingerprint": sample.fingerprint or "",
                    "count": len(alive),
                }
            )
    return report


def _states(
    generations: Mapping[int, Sequence[ObservedInstance]],
    fingerprint: str | None,
    *,
    waits: bool = False,
) -> dict[int, GenerationState]:
    """The newest running generation with the desired fingerprint is active (the newest
    running one if none has it); every other with instances left is a standby.

    Under `traffic.switch` (`waits`) the tags cannot say whether that generation was
    ever switched to: when an older one runs too, the older one is taken as serving and
    the newer one as `ready`, so the operator's `switch` decides (a switch to where the
    traffic already is changes nothing), never a rebuild."""
    running = [n for n, members in generations.items() if any(i.alive for i in members)]
    matching = [n for n in running if any(i.fingerprint == fingerprint for i in generations[n])]
    active = max(matching or running, default=None)
    ready = None
    older = [n for n in running if active is not None and n < active and n not in matching]
    if waits and matching and older:
        ready, active = active, max(older)
    states: dict[int, GenerationState] = {}
    for number, members in generations.items():
        if number == ready:
            states[number] = GenerationState.READY
        elif number == active:
            states[number] = GenerationState.ACTIVE
        elif any(i.state is not InstanceState.GONE for i in members):
            states[number] = GenerationState.STANDBY
        else:
            states[number] = GenerationState.DESTROYED
    return states
