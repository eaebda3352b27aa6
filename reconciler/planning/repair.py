"""Keeping the active generation whole: replacing missing and tampered instances and
scaling it to `count`.

Part of the planner: pure, like it (see `planner`).
"""

from __future__ import annotations

from reconciler.model import (
    Action,
    GenerationRecord,
    ObservedInstance,
    Reason,
    ServiceSpec,
)
from reconciler.planning.facts import ServiceFacts, create, destroy, handover

ServiceKey = tuple[str, str]


def maintain(facts: ServiceFacts, gen: GenerationRecord, spec: ServiceSpec) -> list[Action]:
    """Keep the active generation whole: replace missing/tampered, scale to count."""
    creates, destroys = repair(facts, gen, spec)
    return creates + destroys


def maintain_with_volume(
    facts: ServiceFacts, gen: GenerationRecord, spec: ServiceSpec
) -> list[Action]:
    """The active generation of a service with a volume: whole, and holding its volume
    (created on the first pass; brought back after a replacement or an interrupted
    hand-over). The hand-over runs after the creates and before the destroys."""
    creates, destroys = repair(facts, gen, spec)
    alive = {i.id for i in facts.alive(gen.number)} - {a.instance_id for a in destroys}
    volume = facts.volume
    holds = volume is not None and volume.attached_to in alive and volume.state == "in-use"
    moves = [] if holds else [handover(gen, None, spec)]
    return creates + moves + destroys


def repair(
    facts: ServiceFacts, gen: GenerationRecord, spec: ServiceSpec
) -> tuple[list[Action], list[Action]]:
    """What makes `gen` whole at `spec.count`: the creates, and the destroys that must
    wait until those creates (and any activation) are done."""
    alive = facts.alive(gen.number)
    tampered = [i for i in alive if _is_tampered(i, gen, spec)]
    healthy = [i for i in alive if i not in tampered]
    stopped = [i for i in facts.present(gen.number) if not i.alive]
    creates: list[Action] = []
    destroys: list[Action] = [destroy(i, Reason.MISSING, detail="stopped") for i in stopped]

    excess = len(alive) - spec.count
    # Shrink by dropping tampered instances first, then the highest slots.
    removal_order = tampered + sorted(healthy, key=lambda i: -(i.slot or 0))
    for instance in removal_order[: max(excess, 0)]:
        destroys.append(destroy(instance, Reason.SURPLUS))
    removed = {a.instance_id for a in destroys}
    for instance in (i for i in tampered if i.id not in removed):
        creates.append(create(gen, spec, instance.slot or 1, Reason.TAMPERED, replaces=instance.id))
        destroys.append(destroy(instance, Reason.TAMPERED))

    occupied = {i.slot for i in alive if i.id not in removed}
    missing_by_slot = _missing_by_slot(facts, gen.number, alive_ids={i.id for i in alive})
    missing_by_slot.update({i.slot: i.id for i in stopped if i.slot is not None})
    vacancies = spec.count - len([i for i in alive if i.id not in removed])
    for slot in _free_slots(occupied, vacancies):
        gone = missing_by_slot.get(slot)
        reason = Reason.MISSING if gone else Reason.DEFICIT
        creates.append(create(gen, spec, slot, reason, replaces=gone))
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


def _missing_by_slot(facts: ServiceFacts, number: int, *, alive_ids: set[str]) -> dict[int, str]:
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
