"""Crash recovery: close what an interrupted pass left open, before the next pass plans.

Owns: resolving the ledger's open operations (intent/issued) against the cloud at the
start of every apply pass, and settling an activation that was cut between its two
ledger writes. Must not: plan (the planner decides what to create or destroy), launch
instances, or run while another process may still be writing operations: the caller
holds the state lock (`reconciler.service.statelock`), so every open operation belongs to a
process that has ended (or to an earlier pass of this one, whose workers all returned).

Why a create that never reached the cloud is closed `failed` rather than retried with
its ClientToken: the plan that wanted it may be stale (the desired state moved on, the
generation was abandoned), and the planner runs right after this in the same pass and
creates whatever is still missing, with a new operation. One place decides what to
launch. An instance that does show up later (a lagging listing) still carries our tags,
so the planner sees it as a surplus member of its generation and removes it: never leaked.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import structlog

from reconciler.ledger import Ledger
from reconciler.model import (
    DesiredState,
    GenerationRecord,
    GenerationState,
    InstanceState,
    ObservedInstance,
)
from reconciler.providers import ComputeProvider
from reconciler.providers.base import instance_price

log = structlog.get_logger(__name__)

ADOPTED = "adopted after interruption"
NEVER_LAUNCHED = "never reached the cloud"
VANISHED = "launched, but no longer in the cloud"
DESTROY_CONFIRMED = "destroy confirmed after interruption"
DESTROY_REISSUED = "destroy re-issued after interruption"


@dataclass
class RecoveryReport:
    adopted: int = 0  # creates whose instance exists: recorded, closed done
    abandoned: int = 0  # creates with no instance: closed failed, the planner decides
    confirmed: int = 0  # destroys whose instance is gone: closed done
    reissued: int = 0  # destroys whose instance was alive: terminated again, closed done
    demoted: int = 0  # generations left active by an interrupted activation
    skipped: int = 0  # operations of a kind this module does not know: left open
    replanned: int = 0  # hand-over steps: closed, the next pass plans from the cloud
    held: int = 0  # destroys in a frozen service: left open until it thaws

    @property
    def empty(self) -> bool:
        return not any(asdict(self).values())


VOLUME_STEPS = frozenset(
    {"volume-create", "volume-attach", "volume-detach", "volume-delete", "snapshot",
     "instance-stop",
     "instance-start"}
)  # fmt: skip
RESOLVED_BY_OBSERVATION = "interrupted; the next step is planned from what the cloud shows"


def resolve_open_operations(
    ledger: Ledger,
    providers: Mapping[str, ComputeProvider],
    desired: DesiredState,
    *,
    now: datetime,
    run: int | None = None,
    frozen: Collection[tuple[str, str]] = (),
) -> RecoveryReport:
    """Close every open operation by what the cloud now holds; raises the providers'
    errors (a listing that fails leaves the operations open for the next pass).

    A destroy in a frozen service (`frozen`, or frozen in the desired state) is not
    re-issued: frozen means observed and reported, never changed."""
    report = RecoveryReport(demoted=_settle_double_activation(ledger, now=now, run=run))
    listings = _Listings(providers, desired.owner)
    held = _frozen_check(desired, frozen)
    for op in ledger.open_operations():
        if op["kind"] == "create":
            _resolve_create(ledger, providers, desired, op, report, now=now)
        elif op["kind"] == "destroy":
            _resolve_destroy(ledger, providers, listings, op, report, now=now, held=held)
        elif op["kind"] == "volume-create":
            _resolve_volume_create(ledger, providers, desired, op, report, now=now, run=run)
        elif op["kind"] in VOLUME_STEPS:
            # Each hand-over step is planned again from what the cloud shows.
            ledger.mark_operation(op["id"], state="done", at=now, detail=RESOLVED_BY_OBSERVATION)
            report.replanned += 1
        else:
            log.warning("operation_kind_unknown", op=op["id"], kind=op["kind"])
            report.skipped += 1
    if not report.empty:
        ledger.record_event(kind="operations_recovered", at=now, run=run, detail=asdict(report))
        log.info("operations_recovered", **asdict(report))
    return report


def _resolve_volume_create(
    ledger: Ledger,
    providers: Mapping[str, ComputeProvider],
    desired: DesiredState,
    op: Mapping[str, Any],
    report: RecoveryReport,
    *,
    now: datetime,
    run: int | None,
) -> None:
    """A volume whose create was interrupted: found by its operation tag (then recorded,
    and the hand-over goes on with it), or never made."""
    env, _, service = str(op["target"]).partition("/")
    for name in sorted(providers):
        port = providers[name].volumes()
        found = [v for v in port.list_owned(desired.owner) if v.op == op["id"]] if port else []
        if found:
            volume = found[0]
            ledger.record_event(
                kind="volume_created", at=now, run=run, env=env, service=service,
                detail={"volume": volume.id, "size": volume.size, "type": volume.type,
                        "zone": volume.zone, "recovered": True},
            )  # fmt: skip
            ledger.mark_operation(op["id"], state="done", at=now, detail=volume.id)
            report.adopted += 1
            return
    ledger.mark_operation(op["id"], state="failed", at=now, detail="no volume was made")
    report.abandoned += 1


# ------------------------------------------------------------------ creates


def _parse_create_target(target: str) -> tuple[str, str, int | None, int | None]:
    """`env/service/g<generation>/<slot>`, as apply writes it."""
    env, service, gen, slot = ([*target.split("/"), "", "", "", ""])[:4]
    number = int(gen[1:]) if gen.startswith("g") and gen[1:].isdigit() else None
    return env, service, number, int(slot) if slot.isdigit() else None


def _resolve_create(
    ledger: Ledger,
    providers: Mapping[str, ComputeProvider],
    desired: DesiredState,
    op: Mapping[str, Any],
    report: RecoveryReport,
    *,
    now: datetime,
) -> None:
    env, service, number, slot = _parse_create_target(op["target"])
    spec = desired.service(env, service)
    # The service's provider first; a service no longer desired may be on any of them.
    names = [spec.provider] if spec is not None and spec.provider in providers else []
    names += [n for n in sorted(providers) if n not in names]
    for name in names:
        found = providers[name].find_by_op(desired.owner, op["id"])
        if found is None:
            continue
        price = instance_price(
            spec.price_per_hour if spec else None, providers[name], found.size
        )
        ledger.record_instance(
            id=found.id,
            provider=found.provider,
            env=found.env or env,
            service=found.service or service,
            generation=found.generation if found.generation is not None else (number or 0),
            slot=found.slot if found.slot is not None else slot,
            name=found.name,
            image=found.image,
            size=found.size,
            price_per_hour=price,
            state=found.state.value,
            created_at=found.launched_at or now,
            op=op["id"],
        )
        ledger.mark_operation(op["id"], state="done", at=now, instance_id=found.id, detail=ADOPTED)
        log.info("operation_adopted", op=op["id"], instance=found.id, target=op["target"])
        report.adopted += 1
        return
    known = op.get("instance_id")
    if known:  # the cloud answered, and the instance has since gone (terminated by hand)
        ledger.set_instance_state(known, state="gone", at=now, reason="missing")
    detail = VANISHED if known else NEVER_LAUNCHED
    ledger.mark_operation(op["id"], state="failed", at=now, detail=detail)
    log.info("operation_abandoned", op=op["id"], target=op["target"], detail=detail)
    report.abandoned += 1


# ------------------------------------------------------------------ destroys


class _Listings:
    """One listing per provider, taken when a destroy first needs it."""

    def __init__(self, providers: Mapping[str, ComputeProvider], owner: str) -> None:
        self._providers = providers
        self._owner = owner
        self._seen: dict[str, dict[str, ObservedInstance]] = {}

    def find(self, instance_id: str, preferred: str | None) -> ObservedInstance | None:
        names = [preferred] if preferred is not None and preferred in self._providers else []
        names += [n for n in sorted(self._providers) if n not in names]
        for name in names:
            if name not in self._seen:
                listed = self._providers[name].list_owned(self._owner)
                self._seen[name] = {i.id: i for i in listed}
            found = self._seen[name].get(instance_id)
            if found is not None:
                return found
        return None


def _resolve_destroy(
    ledger: Ledger,
    providers: Mapping[str, ComputeProvider],
    listings: _Listings,
    op: Mapping[str, Any],
    report: RecoveryReport,
    *,
    now: datetime,
    held: Callable[[str | None, str | None], bool],
) -> None:
    instance_id = str(op["target"])
    row = ledger.instance_rows_by_id([instance_id]).get(instance_id)
    found = listings.find(instance_id, row["provider"] if row else None)
    live = found if found is not None and found.state is not InstanceState.GONE else None
    if live is not None and held(live.env, live.service):
        log.warning("operation_destroy_held", op=op["id"], instance=instance_id, why="frozen")
        report.held += 1
        return
    if live is not None:
        # The destroy was decided by a plan and recorded before its call: finish it.
        # Only owned instances are listed, so this can never touch a foreign one.
        providers[live.provider].destroy_instance(instance_id)
        detail, report.reissued = DESTROY_REISSUED, report.reissued + 1
    else:
        detail, report.confirmed = DESTROY_CONFIRMED, report.confirmed + 1
    ledger.mark_operation(op["id"], state="done", at=now, instance_id=instance_id, detail=detail)
    ledger.set_instance_state(instance_id, state="destroyed", at=now, reason=detail)
    log.info("operation_destroy_closed", op=op["id"], instance=instance_id, detail=detail)


def _frozen_check(
    desired: DesiredState, frozen: Collection[tuple[str, str]]
) -> Callable[[str | None, str | None], bool]:
    def held(env: str | None, service: str | None) -> bool:
        if env is None or service is None:
            return False
        spec = desired.service(env, service)
        environment = next((e for e in desired.environments if e.name == env), None)
        return (
            (env, service) in frozen
            or (spec is not None and spec.frozen)
            or (environment is not None and environment.frozen)
        )

    return held


# ------------------------------------------------------------------ activations


def _settle_double_activation(ledger: Ledger, *, now: datetime, run: int | None) -> int:
    """Activation writes the new generation `active`, then the previous one `standby`;
    a crash in between leaves two active generations, and the one not chosen would be
    neither maintained nor expired. The most recently activated one wins."""
    actives: dict[tuple[str, str], list[GenerationRecord]] = {}
    for gen in ledger.view().generations:
        if gen.state is GenerationState.ACTIVE:
            actives.setdefault((gen.env, gen.service), []).append(gen)
    demoted = 0
    for (env, service), gens in sorted(actives.items()):
        if len(gens) < 2:
            continue
        ranked = sorted(gens, key=lambda g: (g.activated_at or g.created_at or now, g.number))
        winner = ranked[-1]
        for gen in ranked[:-1]:
            ledger.set_generation_state(
                env, service, gen.number, state=GenerationState.STANDBY, at=now,
                reason=f"replaced by g{winner.number} (activation interrupted)",
            )  # fmt: skip
            ledger.record_event(
                kind="generation_demoted", at=now, run=run, env=env, service=service,
                generation=gen.number, detail={"active": winner.number},
            )  # fmt: skip
            demoted += 1
    return demoted
