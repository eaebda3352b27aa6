"""Rolling out a new spec: a new generation beside the active one (blue-green), in
place of it (recreate), or in health-gated batches (rolling).

Part of the planner: pure, like it (see `planner`).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from reconciler.model import (
    Action,
    ActionKind,
    GenerationRecord,
    GenerationState,
    Reason,
    ServiceSpec,
    Strategy,
)
from reconciler.planning.facts import (
    ServiceFacts,
    activate,
    check,
    create,
    destroy,
    dismantle,
    handover,
    prepare,
)
from reconciler.planning.repair import repair

ServiceKey = tuple[str, str]


def waits_for_switch(
    facts: ServiceFacts, spec: ServiceSpec, active: GenerationRecord | None
) -> bool:
    """Whether a healthy new generation waits `ready` (`traffic.switch`) instead of taking
    the traffic: only while an old generation still serves it. With nothing running
    (the first generation, or a serving one that is gone) waiting would keep the
    service down, so it takes the traffic at once (as Argo Rollouts skips its pauses
    on an initial deploy)."""
    if spec.traffic is None or not spec.traffic.waits or active is None:
        return False
    return bool(facts.alive(active.number))


def switch_due_at(gen: GenerationRecord, spec: ServiceSpec) -> datetime | None:
    """When a generation waiting under `switch: after D` takes the traffic by itself."""
    if spec.traffic is None or spec.traffic.switch_after is None or gen.state_since is None:
        return None
    return gen.state_since + timedelta(seconds=spec.traffic.switch_after)


def _bring_in(
    gen: GenerationRecord,
    previous: int | None,
    spec: ServiceSpec,
    *,
    waits: bool,
    detail: str = "",
) -> Action:
    """The step that makes a generation serve: activate it, or (`switch:` set and an old
    generation serving) gate it and leave it `ready` for its switch."""
    if waits:
        return prepare(gen, previous, spec, detail=detail or "then wait for the switch")
    return activate(gen, previous, spec, detail=detail)


def _waiting(
    facts: ServiceFacts,
    gen: GenerationRecord,
    spec: ServiceSpec,
    active: GenerationRecord | None,
    *,
    now: datetime,
) -> list[Action]:
    """A generation `ready` for the desired spec: kept whole and health-checked each
    pass while it waits, activated once its switch is due (the delay ran out, `switch:`
    was removed, or the old generation has nothing running any more)."""
    previous = active.number if active else None
    creates, destroys = repair(facts, gen, spec)
    due_at = switch_due_at(gen, spec)
    if not waits_for_switch(facts, spec, active):
        why = "nothing else serves" if spec.traffic and spec.traffic.waits else "switch: removed"
        return [*creates, activate(gen, previous, spec, detail=f"switch ({why})"), *destroys]
    if due_at is not None and due_at <= now:
        assert spec.traffic is not None
        delay = f"switch: after {spec.traffic.switch_after:g}s"
        return [*creates, activate(gen, previous, spec, detail=f"switch ({delay})"), *destroys]
    return [*creates, check(gen, previous, spec), *destroys]


def roll_out(
    facts: ServiceFacts,
    spec: ServiceSpec,
    active: GenerationRecord | None,
    live: dict[int, GenerationRecord],
    *,
    now: datetime,
) -> tuple[list[Action], int | None]:
    """Bring the desired spec into service: re-activate a standby, resume an interrupted
    rollout, switch or keep checking a generation waiting `ready`, or start a new
    generation (blue-green or recreate)."""
    previous = active.number if active else None
    waits = waits_for_switch(facts, spec, active)
    if spec.count == 0:
        # A generation is recorded by its first create, so one without instances would
        # never exist and its activation would be planned again on every run: scaling
        # to zero happens inside the serving generation instead.
        if active is None:
            return [], None
        return [destroy(i, Reason.SURPLUS) for i in facts.present(active.number)], active.number
    for gen in sorted(live.values(), key=lambda g: -g.number):
        if gen.fingerprint != spec.fingerprint or gen is active:
            continue
        # A reused generation is made whole around its activation (missing slots filled
        # before, stopped/tampered/surplus instances dropped after), so the next run has
        # nothing left to do.
        if gen.state is GenerationState.READY:
            return _waiting(facts, gen, spec, active, now=now), gen.number
        if gen.state is GenerationState.STANDBY and facts.alive(gen.number):
            creates, destroys = repair(facts, gen, spec)
            revert = _bring_in(
                gen, previous, spec, waits=waits, detail="revert to standby generation"
            )
            return [*creates, revert, *destroys], gen.number
        if gen.state is GenerationState.CREATING:
            creates, destroys = repair(facts, gen, spec)
            # Still part of the rollout: a failed create must mark the generation failed.
            creates = [replace(c, reason=Reason.SPEC_CHANGED) for c in creates]
            resume = _bring_in(gen, previous, spec, waits=waits, detail="resume rollout")
            moves = [handover(gen, previous, spec)] if spec.volume is not None else []
            return [*creates, *moves, resume, *destroys], gen.number
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
    if spec.strategy is Strategy.RECREATE and active is not None and spec.volume is None:
        actions += dismantle(facts, active, Reason.SPEC_CHANGED, detail="recreate")
        previous = None
    actions += [create(new, spec, slot, Reason.SPEC_CHANGED) for slot in range(1, spec.count + 1)]
    if spec.volume is not None:
        # The old instance is not destroyed first: it is stopped when the volume leaves
        # it, and kept (stopped) as the standby for keep_previous.
        actions.append(handover(new, previous, spec))
    actions.append(_bring_in(new, previous, spec, waits=waits))
    return actions, number


def _rolling(
    facts: ServiceFacts, spec: ServiceSpec, new: GenerationRecord, active: GenerationRecord
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
        actions += [create(new, spec, slot, Reason.SPEC_CHANGED) for slot in slots]
        detail = f"rolling batch {k}/{total}"
        actions += [
            destroy(i, Reason.SPEC_CHANGED, detail=detail) for i in old[start : start + size]
        ]
    actions.append(activate(new, active.number, spec))
    stragglers = [i for i in facts.present(active.number) if not i.alive]
    actions += [destroy(i, Reason.SPEC_CHANGED, detail="rolling") for i in stragglers]
    actions.append(
        Action(
            ActionKind.RETIRE, Reason.SPEC_CHANGED, active.env, active.service, active.number,
            spec.provider, detail="rolled over",
        )
    )  # fmt: skip
    return actions
