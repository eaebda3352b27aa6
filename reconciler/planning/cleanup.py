"""Everything around the active generation: recording generations the ledger lost,
pruning what is no longer desired or already destroyed, expiring standbys, clearing failures.

Part of the planner: pure, like it (see `planner`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from reconciler.model import (
    Action,
    ActionKind,
    GenerationRecord,
    GenerationState,
    Reason,
    ServiceSpec,
)
from reconciler.planning.facts import ServiceFacts, destroy, dismantle

ServiceKey = tuple[str, str]


def adopt_unrecorded(facts: ServiceFacts) -> list[Action]:
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


def prune_destroyed_generations(facts: ServiceFacts) -> list[Action]:
    """Instances of a generation the ledger already destroyed survived their termination;
    stopped instances of a generation nobody recorded (nothing alive to adopt) are strays."""
    dead = {n for n, g in facts.generations.items() if g.state is GenerationState.DESTROYED}
    actions = [
        destroy(i, Reason.UNOWNED_GENERATION, detail="generation already destroyed")
        for i in facts.instances
        if i.generation in dead
    ]
    actions += [
        destroy(i, Reason.UNOWNED_GENERATION, detail="generation unrecorded, not running")
        for i in facts.instances
        if i.generation not in facts.generations  # runs after adoption
    ]
    return actions


def remove_service(facts: ServiceFacts) -> list[Action]:
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
        actions += dismantle(facts, gen, reason, detail=detail)
    return actions


def clean_up_others(
    facts: ServiceFacts,
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
                actions += dismantle(facts, gen, Reason.STANDBY_EXPIRED, detail="superseded")
            elif retired + timedelta(seconds=spec.keep_previous) <= now:
                actions += dismantle(facts, gen, Reason.STANDBY_EXPIRED)
            elif not facts.present(number):
                actions += dismantle(facts, gen, Reason.STANDBY_EXPIRED, detail="no instances")
        elif gen.state is GenerationState.CREATING:
            actions += dismantle(facts, gen, Reason.SPEC_CHANGED, detail="abandoned rollout")
        elif gen.state is GenerationState.READY:
            # It never took traffic: a newer commit (or a revert) replaces it.
            actions += dismantle(facts, gen, Reason.SUPERSEDED, detail="never switched")
        elif gen.state is GenerationState.FAILED:
            actions += [destroy(i, Reason.FAILED_GENERATION) for i in facts.present(number)]
    return actions


def drop_useless_spare(
    facts: ServiceFacts,
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
    return dismantle(facts, previous, Reason.STANDBY_EXPIRED, detail=detail)
