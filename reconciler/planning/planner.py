"""The planner: a pure function from (desired, observed, ledger view, now) to a Plan.

Owns: every decision about what to create, destroy, activate or retire, each with a
reason (DESIGN §4). Must not: perform I/O, log, read the clock, or import adapters;
`plan` renders its output and `apply` executes it in order, per service.

Within one service the actions are ordered as they must run: creates, then (after the
new instances are up) activation, then destroys. Blue-green never destroys an active
generation's instances before its successor has been created and activated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from reconciler.model import (
    Action,
    ActionKind,
    DesiredState,
    Freeze,
    GenerationState,
    Hold,
    HoldReason,
    InstanceState,
    LedgerView,
    Note,
    ObservedInstance,
    ObservedVolume,
    Pin,
    Plan,
    Reason,
    ServiceSpec,
)
from reconciler.planning.cleanup import (
    adopt_unrecorded,
    clean_up_others,
    drop_useless_spare,
    prune_destroyed_generations,
    remove_service,
)
from reconciler.planning.facts import (
    ServiceFacts,
    active_generation,
    destroy,
    failed_latest,
    gather,
)
from reconciler.planning.repair import maintain, maintain_with_volume
from reconciler.planning.rollout import roll_out, switch_due_at


def compute_plan(
    *,
    desired: DesiredState,
    observed: Sequence[ObservedInstance],
    ledger: LedgerView,
    now: datetime,
    pins: Mapping[tuple[str, str], Pin] | None = None,
    frozen: Mapping[tuple[str, str], Freeze] | None = None,
    volumes: Sequence[ObservedVolume] = (),
) -> Plan:
    """Decide the actions that move the observed world to the desired state.

    `pins` hold services on a rolled-back generation; `frozen` maps services a guard
    froze to why. Both, and `frozen: true` in the desired state, are observed and
    reported, never changed. Every service whose drift is held, and every desired
    service left with nothing running and nothing planned to start, is in `held`."""
    actions: list[Action] = []
    notes: list[Note] = []
    held: list[Hold] = []
    for facts in gather(desired, observed, ledger, volumes):
        freeze = _frozen_because(facts, frozen or {})
        pin = (pins or {}).get((facts.env, facts.service))
        service_actions: list[Action] = []
        if freeze is not None:
            notes.append(Note(facts.env, facts.service, freeze.why))
            held.append(Hold(facts.env, facts.service, HoldReason.FROZEN, freeze.why, freeze.since))
        elif pin is not None and facts.spec is not None:
            # Held by `rollback`: observed and reported, never changed, until released.
            why = (
                f"pinned to generation {pin.generation} by rollback; "
                f"`reconciler release {facts.env} {facts.service}` returns it to git"
            )
            notes.append(Note(facts.env, facts.service, why))
            held.append(Hold(facts.env, facts.service, HoldReason.PINNED, why, pin.since))
        else:
            service_actions, service_notes, hold = _plan_service(facts, now=now)
            actions.extend(service_actions)
            notes.extend(service_notes)
            held.extend([hold] if hold else [])
        down = _down(facts, service_actions)
        held.extend([down] if down else [])
    actions.extend(prune_unidentified(observed))
    notes.extend(_unreadable_notes(observed))
    return Plan(actions=tuple(actions), notes=tuple(notes), held=tuple(held))


def _frozen_because(facts: ServiceFacts, frozen: Mapping[tuple[str, str], Freeze]) -> Freeze | None:
    if facts.spec is not None and facts.spec.frozen:
        return Freeze("frozen in the desired state: observed, not changed")
    guard = frozen.get((facts.env, facts.service))
    if guard is not None:
        return Freeze(
            f"frozen by a guard ({guard.why}); a new commit or "
            f"`reconciler unfreeze {facts.env} {facts.service}` lifts it",
            guard.since,
        )
    return None


def _down(facts: ServiceFacts, planned: Sequence[Action]) -> Hold | None:
    """A desired service with no instance running in any usable generation and no
    create planned: it serves nothing, and this plan will not change that."""
    spec = facts.spec
    if spec is None or spec.count == 0 or any(a.kind is ActionKind.CREATE for a in planned):
        return None
    usable = {
        n for n, g in facts.generations.items()
        if g.state in (GenerationState.ACTIVE, GenerationState.STANDBY, GenerationState.CREATING)
    }  # fmt: skip
    if any(i.alive and i.generation in usable for i in facts.instances):
        return None
    latest = facts.generations[max(facts.generations)] if facts.generations else None
    if latest is not None and latest.failed:
        why = (
            f"no instance is running: generation {latest.number} failed "
            f"({latest.reason or 'no reason recorded'}) and no earlier generation is left; "
            f"commit a working spec or `reconciler retry {facts.env} {facts.service}`"
        )
        return Hold(facts.env, facts.service, HoldReason.DOWN, why, latest.state_since)
    return Hold(
        facts.env, facts.service, HoldReason.DOWN,
        "no instance is running and nothing planned starts one",
    )  # fmt: skip


def _waiting_hold(facts: ServiceFacts, spec: ServiceSpec, planned: Sequence[Action]) -> Hold | None:
    """A generation ready and healthy, waiting for its traffic: what the operator must
    act on (or wait for), said with since when and how it ends."""
    check = next((a for a in planned if a.kind is ActionKind.CHECK), None)
    if check is None:
        return None
    gen = facts.generations[check.generation]
    due_at = switch_due_at(gen, spec)
    when = f" or at {due_at.isoformat(timespec='seconds')}" if due_at else ""
    why = (
        f"generation {gen.number} ({gen.image_id or gen.image}) is ready and healthy; traffic "
        f"stays on generation {check.previous} until `reconciler switch {facts.env} "
        f"{facts.service}`{when}; `reconciler abort {facts.env} {facts.service}` destroys it"
    )
    return Hold(facts.env, facts.service, HoldReason.WAITING, why, gen.state_since)


def prune_unidentified(observed: Iterable[ObservedInstance]) -> list[Action]:
    """Owned instances without env/service/generation tags: ours, but of nothing desired.
    One whose tags are there but unreadable is not among them: it is left alone."""
    return [
        destroy(i, Reason.UNOWNED_GENERATION, detail="identity tags incomplete")
        for i in observed
        if i.state is not InstanceState.GONE
        and i.unreadable is None
        and (i.env is None or i.service is None or i.generation is None)
    ]


def _unreadable_notes(observed: Iterable[ObservedInstance]) -> list[Note]:
    """Owned instances whose identity tags cannot be read: what the operator must see."""
    return [
        Note("", "", f"instance {i.id} ({i.provider}) has unreadable identity tags "
             f"({i.unreadable}): left alone; fix its tags or terminate it by hand")
        for i in observed
        if i.unreadable is not None and i.state is not InstanceState.GONE
    ]  # fmt: skip


def _plan_service(
    facts: ServiceFacts, *, now: datetime
) -> tuple[list[Action], list[Note], Hold | None]:
    actions = adopt_unrecorded(facts)
    actions += prune_destroyed_generations(facts)
    if facts.spec is None:
        return actions + remove_service(facts), [], None
    spec = facts.spec
    live = {n: g for n, g in facts.generations.items() if g.state is not GenerationState.DESTROYED}
    active = active_generation(live)
    notes: list[Note] = []
    hold: Hold | None = None
    target: int | None = None  # generation being rolled out in this plan
    if active is not None and active.fingerprint == spec.fingerprint:
        actions += maintain_with_volume(facts, active, spec) if spec.volume else maintain(
            facts, active, spec
        )
        target = active.number
    elif failed_latest(facts, spec.fingerprint):
        failed = facts.generations[max(facts.generations)]
        why = (
            f"spec {spec.fingerprint} failed in generation {failed.number}"
            f" ({failed.reason or 'no reason recorded'}); not retried until the desired "
            f"state changes or `reconciler retry {facts.env} {facts.service}`"
        )
        notes.append(Note(facts.env, facts.service, why))
        hold = Hold(facts.env, facts.service, HoldReason.FAILED, why, failed.state_since)
        target = active.number if active else None
    else:
        rollout, target = roll_out(facts, spec, active, live, now=now)
        actions += rollout
        hold = _waiting_hold(facts, spec, rollout)
    actions += clean_up_others(facts, live, keep=target, active=active, spec=spec, now=now)
    actions += drop_useless_spare(facts, live, actions, spec)
    return actions, notes, hold
