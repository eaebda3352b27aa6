"""What the planner knows about one (env, service) before deciding (`ServiceFacts`,
gathered once per plan), and the builders of its actions.

Part of the planner: pure, like it (see `planner`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from reconciler.model import (
    Action,
    ActionKind,
    DesiredState,
    GenerationRecord,
    GenerationState,
    InstanceRecord,
    InstanceState,
    LedgerView,
    ObservedInstance,
    ObservedVolume,
    Reason,
    ServiceSpec,
)

ServiceKey = tuple[str, str]


@dataclass
class ServiceFacts:
    """Everything known about one (env, service), gathered before deciding."""

    env: str
    service: str
    spec: ServiceSpec | None
    env_declared: bool = True  # its environment file exists
    generations: dict[int, GenerationRecord] = field(default_factory=dict)
    instances: list[ObservedInstance] = field(default_factory=list)  # not gone
    records: list[InstanceRecord] = field(default_factory=list)  # ledger, live
    observed_numbers: set[int] = field(default_factory=set)
    volume: ObservedVolume | None = None  # its data volume, when it has one

    def alive(self, number: int) -> list[ObservedInstance]:
        return [i for i in self.instances if i.generation == number and i.alive]

    def present(self, number: int) -> list[ObservedInstance]:
        return [i for i in self.instances if i.generation == number]

    def next_number(self) -> int:
        return max([0, *self.generations, *self.observed_numbers]) + 1


def gather(
    desired: DesiredState,
    observed: Sequence[ObservedInstance],
    ledger: LedgerView,
    volumes: Sequence[ObservedVolume] = (),
) -> list[ServiceFacts]:
    facts: dict[ServiceKey, ServiceFacts] = {}
    declared = {e.name for e in desired.environments}

    def facts_for(env: str, service: str) -> ServiceFacts:
        key = (env, service)
        if key not in facts:
            facts[key] = ServiceFacts(
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
            continue  # pruned by prune_unidentified
        target = facts_for(instance.env, instance.service)
        target.observed_numbers.add(instance.generation)
        if instance.state is not InstanceState.GONE:
            target.instances.append(instance)
    for volume in sorted(volumes, key=lambda v: (v.attached_to is None, v.id)):
        if volume.env is None or volume.service is None or volume.state in GONE_VOLUME_STATES:
            continue
        target = facts_for(volume.env, volume.service)
        # One volume a service: an attached one first (the one serving), then the oldest id.
        if target.volume is None:
            target.volume = volume
    return [facts[key] for key in sorted(facts)]


GONE_VOLUME_STATES = frozenset({"deleting", "deleted", "error"})


def active_generation(live: dict[int, GenerationRecord]) -> GenerationRecord | None:
    actives = [g for g in live.values() if g.state is GenerationState.ACTIVE]
    return max(actives, key=lambda g: g.number) if actives else None


def failed_latest(facts: ServiceFacts, fingerprint: str) -> bool:
    """A spec that failed is not retried until the desired state moves on."""
    if not facts.generations:
        return False
    latest = facts.generations[max(facts.generations)]
    return latest.failed and not latest.retried and latest.fingerprint == fingerprint


def dismantle(
    facts: ServiceFacts, gen: GenerationRecord, reason: Reason, *, detail: str = ""
) -> list[Action]:
    destroys = [destroy(i, reason, detail=detail) for i in facts.present(gen.number)]
    provider = destroys[0].provider if destroys else (facts.spec.provider if facts.spec else "")
    retire = Action(
        ActionKind.RETIRE, reason, gen.env, gen.service, gen.number, provider, detail=detail
    )
    return [*destroys, retire]


def create(
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


def destroy(instance: ObservedInstance, reason: Reason, *, detail: str = "") -> Action:
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


def activate(
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


def prepare(
    gen: GenerationRecord, previous: int | None, spec: ServiceSpec, *, detail: str = ""
) -> Action:
    """Gate `gen` and leave it `ready` beside `previous`, which keeps the traffic."""
    return replace(activate(gen, previous, spec, detail=detail), kind=ActionKind.PREPARE)


def check(gen: GenerationRecord, previous: int | None, spec: ServiceSpec) -> Action:
    """Health-check `gen`, waiting `ready` for its switch."""
    return Action(
        ActionKind.CHECK,
        Reason.AWAITING_SWITCH,
        gen.env,
        gen.service,
        gen.number,
        spec.provider,
        previous=previous,
        detail="ready, waiting for the switch",
    )


def handover(gen: GenerationRecord, previous: int | None, spec: ServiceSpec) -> Action:
    """Bring the service's volume to `gen`'s instance (from `previous`'s, stopped first)."""
    return Action(
        ActionKind.HANDOVER,
        Reason.SPEC_CHANGED,
        gen.env,
        gen.service,
        gen.number,
        spec.provider,
        previous=previous,
        detail="volume",
    )
