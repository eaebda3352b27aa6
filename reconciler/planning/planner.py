"""The planner: a pure function from (desired, observed, ledger view, now) to a Plan.

Owns: every decision about what to create, destroy, activate or retire, each with a
reason (DESIGN §4). Must not: perform I/O, log, read the clock, or import adapters;
`plan` renders its output and `apply` executes it in order, per service.

Within one service the actions are ordered as they must run: creates, then (after the
new instances are up) activation, then destroys. Blue-green never destroys an active
generation's instances before its successor has been created and activated.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from reconciler.model import (
    Action,
    ActionKind,
    DesiredState,
    Freeze,
    GenerationRecord,
    GenerationState,
    Hold,
    HoldReason,
    InstanceRecord,
    InstanceState,
    LedgerView,
    Note,
    ObservedInstance,
    Pin,
    Plan,
    Reason,
    ServiceSpec,
    Strategy,
)

ServiceKey = tuple[str, str]


@dataclass
class _ServiceFacts:
    """Everything known about one (env, service), gathered before deciding."""

    env: str
    service: str
    spec: ServiceSpec | None
    env_declared: bool = True  # its environment file exists
    generations: dict[int, GenerationRecord] = field(default_factory=dict)
    instances: list[ObservedInstance] = field(default_factory=list)  # not gone
    records: list[InstanceRecord] = field(default_factory=list)  # ledger, live
    observed_numbers: set[int] = field(default_factory=set)

    def alive(self, number: int) -> list[ObservedInstance]:
        return [i for i in self.instances if i.generation == number and i.alive]

    def present(self, number: int) -> list[ObservedInstance]:
        return [i for i in self.instances if i.generation == number]

    def next_number(self) -> int:
        return max([0, *self.generations, *self.observed_numbers]) + 1


def compute_plan(
    *,
    desired: DesiredState,
    observed: Sequence[ObservedInstance],
    ledger: LedgerView,
    now: datetime,
    pins: Mapping[tuple[str, str], Pin] | None = None,
    frozen: Mapping[tuple[str, str], Freeze] | None = None,
) -> Plan:
    """Decide the actions that move the observed world to the desired state.

    `pins` hold services on a rolled-back generation; `frozen` maps services a guard
    froze to why. Both, and `frozen: true` in the desired state, are observed and
    reported, never changed. Every service whose drift is held, and every desired
    service left with nothing running and nothing planned to start, is in `held`."""
    actions: list[Action] = []
    notes: list[Note] = []
    held: list[Hold] = []
    for facts in _gather(desired, observed, ledger):
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
    actions.extend(_prune_unidentified(observed))
    notes.extend(_unreadable_notes(observed))
    return Plan(actions=tuple(actions), notes=tuple(notes), held=tuple(held))


def _frozen_because(
    facts: _ServiceFacts, frozen: Mapping[tuple[str, str], Freeze]
) -> Freeze | None:
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


def _down(facts: _ServiceFacts, planned: Sequence[Action]) -> Hold | None:
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


def _gather(
    desired: DesiredState, observed: Sequence[ObservedInstance], ledger: LedgerView
) -> list[_ServiceFacts]:
    facts: dict[ServiceKey, _ServiceFacts] = {}
    declared = {e.name for e in desired.environments}

    def facts_for(env: str, service: str) -> _ServiceFacts:
        key = (env, service)
        if key not in facts:
            facts[key] = _ServiceFacts(
                env, service, desired.service(env, service), env_declared=env in declared
            )
        return facts[key]

    for spec in desired.services():
        facts_for(spec.env, spec.name)
    for gen in ledger.generations:
        facts_for(gen.env, gen.service).generations[gen.number] = gen
    for record in ledger.instances:
        facts_for(record.env, record.service).records.append(record)
    for instance in observed:
        if instance.env is None or instance.service is None or instance.generation is None:
            continue  # pruned by _prune_unidentified
        target = facts_for(instance.env, instance.service)
        target.observed_numbers.add(instance.generation)
        if instance.state is not InstanceState.GONE:
            target.instances.append(instance)
    return [facts[key] for key in sorted(facts)]


def _prune_unidentified(observed: Iterable[ObservedInstance]) -> list[Action]:
    """Owned instances without env/service/generation tags: ours, but of nothing desired.
    One whose tags are there but unreadable is not among them: it is left alone."""
    return [
        _destroy(i, Reason.UNOWNED_GENERATION, detail="identity tags incomplete")
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
    facts: _ServiceFacts, *, now: datetime
) -> tuple[list[Action], list[Note], Hold | None]:
    actions = _adopt_unrecorded(facts)
    actions += _prune_destroyed_generations(facts)
    if facts.spec is None:
        return actions + _remove_service(facts), [], None
    spec = facts.spec
    live = {n: g for n, g in facts.generations.items() if g.state is not GenerationState.DESTROYED}
    active = _active(live)
    notes: list[Note] = []
    hold: Hold | None = None
    target: int | None = None  # generation being rolled out in this plan
    if active is not None and active.fingerprint == spec.fingerprint:
        actions += _maintain(facts, active, spec)
        target = active.number
    elif _failed_latest(facts, spec.fingerprint):
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
        rollout, target = _roll_out(facts, spec, active, live)
        actions += rollout
    actions += _clean_up_others(facts, live, keep=target, active=active, spec=spec, now=now)
    actions += _drop_useless_spare(facts, live, actions, spec)
    return actions, notes, hold


def _active(live: dict[int, GenerationRecord]) -> GenerationRecord | None:
    actives = [g for g in live.values() if g.state is GenerationState.ACTIVE]
    return max(actives, key=lambda g: g.number) if actives else None


def _failed_latest(facts: _ServiceFacts, fingerprint: str) -> bool:
    """A spec that failed is not retried until the desired state moves on."""
    if not facts.generations:
        return False
    latest = facts.generations[max(facts.generations)]
    return latest.failed and not latest.retried and latest.fingerprint == fingerprint


# ------------------------------------------------------------------ bookkeeping


def _adopt_unrecorded(facts: _ServiceFacts) -> list[Action]:
    """Generations the cloud has but the ledger lacks (e.g. a lost ledger) are recorded,
    never destroyed: the newest becomes active if nothing else is."""
    numbers = {i.generation for i in facts.instances if i.alive and i.generation is not None}
    unknown = sorted(n for n in numbers if n not in facts.generations)
    actions: list[Action] = []
    has_active = any(g.state is GenerationState.ACTIVE for g in facts.generations.values())
    for number in reversed(unknown):
        members = facts.alive(number)
        state = GenerationState.STANDBY if has_active else GenerationState.ACTIVE
        has_active = True
        sample = members[0]
        facts.generations[number] = GenerationRecord(
            env=facts.env,
            service=facts.service,
            number=number,
            fingerprint=sample.fingerprint or "",
            image=sample.image,
            size=sample.size,
            count=len(members),
            state=state,
            image_id=sample.image,
        )
        actions.append(
            Action(
                ActionKind.ADOPT,
                Reason.UNRECORDED_GENERATION,
                facts.env,
                facts.service,
                number,
                sample.provider,
                adopt_as=state,
            )
        )
    return actions


def _prune_destroyed_generations(facts: _ServiceFacts) -> list[Action]:
    """Instances of a generation the ledger already destroyed survived their termination;
    stopped instances of a generation nobody recorded (nothing alive to adopt) are strays."""
    dead = {n for n, g in facts.generations.items() if g.state is GenerationState.DESTROYED}
    actions = [
        _destroy(i, Reason.UNOWNED_GENERATION, detail="generation already destroyed")
        for i in facts.instances
        if i.generation in dead
    ]
    actions += [
        _destroy(i, Reason.UNOWNED_GENERATION, detail="generation unrecorded, not running")
        for i in facts.instances
        if i.generation not in facts.generations  # runs after adoption
    ]
    return actions


def _remove_service(facts: _ServiceFacts) -> list[Action]:
    """The service is no longer desired: prune every generation it still has, saying
    whether its environment file or only the service was removed."""
    actions: list[Action] = []
    if facts.env_declared:
        reason, detail = Reason.SERVICE_REMOVED, f"not in environments/{facts.env}.yaml"
    else:
        reason, detail = Reason.ENVIRONMENT_REMOVED, f"environment file {facts.env} removed"
    for _number, gen in sorted(facts.generations.items()):
        if gen.state is GenerationState.DESTROYED:
            continue
        actions += _dismantle(facts, gen, reason, detail=detail)
    return actions


# ------------------------------------------------------------------ the active generation


def _maintain(facts: _ServiceFacts, gen: GenerationRecord, spec: ServiceSpec) -> list[Action]:
    """Keep the active generation whole: replace missing/tampered, scale to count."""
    creates, destroys = _repair(facts, gen, spec)
    return creates + destroys


def _repair(
    facts: _ServiceFacts, gen: GenerationRecord, spec: ServiceSpec
) -> tuple[list[Action], list[Action]]:
    """What makes `gen` whole at `spec.count`: the creates, and the destroys that must
    wait until those creates (and any activation) are done."""
    alive = facts.alive(gen.number)
    tampered = [i for i in alive if _is_tampered(i, gen, spec)]
    healthy = [i for i in alive if i not in tampered]
    stopped = [i for i in facts.present(gen.number) if not i.alive]
    creates: list[Action] = []
    destroys: list[Action] = [_destroy(i, Reason.MISSING, detail="stopped") for i in stopped]

    excess = len(alive) - spec.count
    # Shrink by dropping tampered instances first, then the highest slots.
    removal_order = tampered + sorted(healthy, key=lambda i: -(i.slot or 0))
    for instance in removal_order[: max(excess, 0)]:
        destroys.append(_destroy(instance, Reason.SURPLUS))
    removed = {a.instance_id for a in destroys}
    for instance in (i for i in tampered if i.id not in removed):
        creates.append(
            _create(gen, spec, instance.slot or 1, Reason.TAMPERED, replaces=instance.id)
        )
        destroys.append(_destroy(instance, Reason.TAMPERED))

    occupied = {i.slot for i in alive if i.id not in removed}
    missing_by_slot = _missing_by_slot(facts, gen.number, alive_ids={i.id for i in alive})
    missing_by_slot.update({i.slot: i.id for i in stopped if i.slot is not None})
    vacancies = spec.count - len([i for i in alive if i.id not in removed])
    for slot in _free_slots(occupied, vacancies):
        gone = missing_by_slot.get(slot)
        reason = Reason.MISSING if gone else Reason.DEFICIT
        creates.append(_create(gen, spec, slot, reason, replaces=gone))
    return creates, destroys


def _is_tampered(instance: ObservedInstance, gen: GenerationRecord, spec: ServiceSpec) -> bool:
    # `gen` carries `spec`'s fingerprint, so the spec says what its instances must be; the
    # record may not (an adopted generation is recorded from whichever instance came first).
    if instance.fingerprint and instance.fingerprint != spec.fingerprint:
        return True  # tagged into the generation, but not launched from its spec
    expected_image = gen.image_id or (spec.image if spec.image.startswith("ami-") else None)
    # An image the cloud does not report ("") is drift only where one is expected: an
    # instance running something other than its generation's image is not serving it.
    if expected_image and instance.image != expected_image:
        return True
    return bool(instance.size) and instance.size != spec.size


def _missing_by_slot(facts: _ServiceFacts, number: int, *, alive_ids: set[str]) -> dict[int, str]:
    """Slots whose recorded instance the cloud no longer runs."""
    return {
        r.slot: r.id
        for r in facts.records
        if r.generation == number and r.slot is not None and r.id not in alive_ids
    }


def _free_slots(occupied: set[int | None], needed: int) -> list[int]:
    slots: list[int] = []
    candidate = 1
    while len(slots) < needed:
        if candidate not in occupied:
            slots.append(candidate)
        candidate += 1
    return slots


# ------------------------------------------------------------------ a new spec


def _roll_out(
    facts: _ServiceFacts,
    spec: ServiceSpec,
    active: GenerationRecord | None,
    live: dict[int, GenerationRecord],
) -> tuple[list[Action], int | None]:
    """Bring the desired spec into service: re-activate a standby, resume an interrupted
    rollout, or start a new generation (blue-green or recreate)."""
    previous = active.number if active else None
    if spec.count == 0:
        # A generation is recorded by its first create, so one without instances would
        # never exist and its activation would be planned again on every run: scaling
        # to zero happens inside the serving generation instead.
        if active is None:
            return [], None
        return [_destroy(i, Reason.SURPLUS) for i in facts.present(active.number)], active.number
    for gen in sorted(live.values(), key=lambda g: -g.number):
        if gen.fingerprint != spec.fingerprint or gen is active:
            continue
        # A reused generation is made whole around its activation (missing slots filled
        # before, stopped/tampered/surplus instances dropped after), so the next run has
        # nothing left to do.
        if gen.state is GenerationState.STANDBY and facts.alive(gen.number):
            creates, destroys = _repair(facts, gen, spec)
            revert = _activate(gen, previous, spec, detail="revert to standby generation")
            return [*creates, revert, *destroys], gen.number
        if gen.state is GenerationState.CREATING:
            creates, destroys = _repair(facts, gen, spec)
            # Still part of the rollout: a failed create must mark the generation failed.
            creates = [replace(c, reason=Reason.SPEC_CHANGED) for c in creates]
            resume = _activate(gen, previous, spec, detail="resume rollout")
            return [*creates, resume, *destroys], gen.number
    number = facts.next_number()
    new = GenerationRecord(
        env=facts.env,
        service=facts.service,
        number=number,
        fingerprint=spec.fingerprint,
        image=spec.image,
        size=spec.size,
        count=spec.count,
        state=GenerationState.CREATING,
    )
    actions: list[Action] = []
    if spec.strategy is Strategy.ROLLING and active is not None and facts.alive(active.number):
        return _rolling(facts, spec, new, active), number
    if spec.strategy is Strategy.RECREATE and active is not None:
        actions += _dismantle(facts, active, Reason.SPEC_CHANGED, detail="recreate")
        previous = None
    actions += [_create(new, spec, slot, Reason.SPEC_CHANGED) for slot in range(1, spec.count + 1)]
    actions.append(_activate(new, previous, spec))
    return actions, number


def _rolling(
    facts: _ServiceFacts, spec: ServiceSpec, new: GenerationRecord, active: GenerationRecord
) -> list[Action]:
    """Replace `batch` instances at a time: each batch's new instances are created (and
    health-gated by apply) before the same number of old ones go, so serving capacity
    never drops below count - batch. The new generation is activated after the last batch."""
    old = sorted(facts.alive(active.number), key=lambda i: (i.slot or 0, i.id))
    size = max(spec.batch, 1)
    rounds = max(spec.count, len(old))
    total = -(-rounds // size)
    actions: list[Action] = []
    for k, start in enumerate(range(0, rounds, size), start=1):
        slots = range(start + 1, min(start + size, spec.count) + 1)
        actions += [_create(new, spec, slot, Reason.SPEC_CHANGED) for slot in slots]
        detail = f"rolling batch {k}/{total}"
        actions += [
            _destroy(i, Reason.SPEC_CHANGED, detail=detail) for i in old[start : start + size]
        ]
    actions.append(_activate(new, active.number, spec))
    stragglers = [i for i in facts.present(active.number) if not i.alive]
    actions += [_destroy(i, Reason.SPEC_CHANGED, detail="rolling") for i in stragglers]
    actions.append(
        Action(
            ActionKind.RETIRE, Reason.SPEC_CHANGED, active.env, active.service, active.number,
            spec.provider, detail="rolled over",
        )
    )  # fmt: skip
    return actions


# ------------------------------------------------------------------ everything else


def _clean_up_others(
    facts: _ServiceFacts,
    live: dict[int, GenerationRecord],
    *,
    keep: int | None,
    active: GenerationRecord | None,
    spec: ServiceSpec,
    now: datetime,
) -> list[Action]:
    """Expire standbys, drop superseded spares and abandoned rollouts, clear failures."""
    actions: list[Action] = []
    rolling_out = keep is not None and (active is None or keep != active.number)
    # After this plan the previous active becomes the one hot spare; older spares go.
    spare = active.number if (rolling_out and active is not None) else None
    for number, gen in sorted(live.items()):
        if number in (keep, spare) or (active is not None and number == active.number):
            continue
        if gen.state is GenerationState.STANDBY:
            retired = gen.state_since or gen.retired_at or now
            if rolling_out:
                actions += _dismantle(facts, gen, Reason.STANDBY_EXPIRED, detail="superseded")
            elif retired + timedelta(seconds=spec.keep_previous) <= now:
                actions += _dismantle(facts, gen, Reason.STANDBY_EXPIRED)
            elif not facts.present(number):
                actions += _dismantle(facts, gen, Reason.STANDBY_EXPIRED, detail="no instances")
        elif gen.state is GenerationState.CREATING:
            actions += _dismantle(facts, gen, Reason.SPEC_CHANGED, detail="abandoned rollout")
        elif gen.state is GenerationState.FAILED:
            actions += [_destroy(i, Reason.FAILED_GENERATION) for i in facts.present(number)]
    return actions


def _drop_useless_spare(
    facts: _ServiceFacts,
    live: dict[int, GenerationRecord],
    actions: Sequence[Action],
    spec: ServiceSpec,
) -> list[Action]:
    """The generation this plan's activation turns into a standby goes right after the
    switch when it could never serve as a spare: no hot-spare time (keep_previous 0), or
    no instances left. Waiting would leave the next run with work at the same `now`."""
    activation = next((a for a in actions if a.kind is ActionKind.ACTIVATE), None)
    if activation is None or activation.previous not in live:
        return []
    previous = live[activation.previous]
    already = any(a.kind is ActionKind.RETIRE and a.generation == previous.number for a in actions)
    if already or (spec.keep_previous > 0 and facts.present(previous.number)):
        return []  # a rolling update retires it itself; otherwise it is the hot spare
    detail = "no instances" if spec.keep_previous > 0 else "keep_previous is 0"
    return _dismantle(facts, previous, Reason.STANDBY_EXPIRED, detail=detail)


def _dismantle(
    facts: _ServiceFacts, gen: GenerationRecord, reason: Reason, *, detail: str = ""
) -> list[Action]:
    destroys = [_destroy(i, reason, detail=detail) for i in facts.present(gen.number)]
    provider = destroys[0].provider if destroys else (facts.spec.provider if facts.spec else "")
    retire = Action(
        ActionKind.RETIRE, reason, gen.env, gen.service, gen.number, provider, detail=detail
    )
    return [*destroys, retire]


# ------------------------------------------------------------------ action builders


def _create(
    gen: GenerationRecord,
    spec: ServiceSpec,
    slot: int,
    reason: Reason,
    *,
    replaces: str | None = None,
) -> Action:
    return Action(
        ActionKind.CREATE,
        reason,
        gen.env,
        gen.service,
        gen.number,
        spec.provider,
        slot=slot,
        replaces=replaces,
    )


def _destroy(instance: ObservedInstance, reason: Reason, *, detail: str = "") -> Action:
    return Action(
        ActionKind.DESTROY,
        reason,
        instance.env or "",
        instance.service or "",
        instance.generation or 0,
        instance.provider,
        slot=instance.slot,
        instance_id=instance.id,
        detail=detail,
    )


def _activate(
    gen: GenerationRecord, previous: int | None, spec: ServiceSpec, *, detail: str = ""
) -> Action:
    return Action(
        ActionKind.ACTIVATE,
        Reason.SPEC_CHANGED,
        gen.env,
        gen.service,
        gen.number,
        spec.provider,
        previous=previous,
        detail=detail,
    )


def group_counts(actions: Iterable[Action]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for action in actions:
        counts[action.kind.value] += 1
    return dict(counts)
