"""Shared builders for the planner tests, and a pure in-memory applier.

Owns: turning compact dicts (the YAML cases, hypothesis strategies) into the model's
DesiredState / ObservedInstance / LedgerView, and `simulate_apply`, which applies a
Plan to a fake world exactly as `reconciler.apply.applier` does to the cloud and the ledger.
Must not: touch a cloud, a file or the real ledger; everything here is pure.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.desired.fingerprint import compute_fingerprint
from reconciler.model import (
    Action,
    ActionKind,
    DesiredState,
    Environment,
    GenerationRecord,
    GenerationState,
    InstanceRecord,
    InstanceState,
    LedgerView,
    ObservedInstance,
    Plan,
    ProviderProfile,
    Reason,
    ServiceSpec,
    Strategy,
    TrafficSpec,
)
from reconciler.providers.base import instance_from_tags

OWNER = "acme"
PROVIDER = "cloud"
DRIVER = "sandbox"
REGION = "local-1"
DEFAULT_SIZE = "t3.micro"
DEFAULT_KEEP = 1800.0

# Instance states after which the ledger view no longer lists an instance (ledger §5).
ENDED = frozenset({"destroyed", "gone"})


def parse_time(value: str | datetime) -> datetime:
    at = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def fingerprint_of(image: str, size: str = DEFAULT_SIZE) -> str:
    return compute_fingerprint(
        provider=PROVIDER, driver=DRIVER, region=REGION, image=image, size=size, user_data=None
    )


# ------------------------------------------------------------------ desired state


def make_service(
    env: str,
    name: str,
    *,
    image: str,
    size: str = DEFAULT_SIZE,
    count: int = 1,
    strategy: str | Strategy = Strategy.BLUE_GREEN,
    keep_previous: float = DEFAULT_KEEP,
    switch: str | None = None,
) -> ServiceSpec:
    """`switch`: None, "manual", or "after N" (seconds), as `traffic.switch` reads."""
    traffic = None
    if switch is not None:
        after = float(switch.split()[1]) if switch.startswith("after ") else None
        traffic = TrafficSpec("command", "switch", manual=switch == "manual", switch_after=after)
    return ServiceSpec(
        env=env,
        name=name,
        provider=PROVIDER,
        image=image,
        size=size,
        count=count,
        strategy=Strategy(strategy),
        keep_previous=float(keep_previous),
        fingerprint=fingerprint_of(image, size),
        traffic=traffic,
    )


def make_desired(services: Iterable[Mapping[str, Any]]) -> DesiredState:
    """`[{env, name, image, size?, count?, strategy?, keep_previous?}, ...]` -> DesiredState."""
    by_env: dict[str, list[ServiceSpec]] = {}
    for entry in services:
        spec = make_service(**{k: v for k, v in entry.items()})
        by_env.setdefault(spec.env, []).append(spec)
    environments = tuple(
        Environment(name=env, provider=PROVIDER, services=tuple(specs))
        for env, specs in sorted(by_env.items())
    )
    return DesiredState(
        root="/desired",
        owner=OWNER,
        providers={PROVIDER: ProviderProfile(name=PROVIDER, driver=DRIVER, region=REGION)},
        environments=environments,
    )


# ------------------------------------------------------------------ observed / ledger


def make_generation(entry: Mapping[str, Any], *, now: datetime) -> GenerationRecord:
    """Compact generation: env, service, number, image, size?, count?, state, and
    optionally retired_ago / activated_ago (seconds before now), reason, image_id."""
    image = entry["image"]
    size = entry.get("size", DEFAULT_SIZE)

    def ago(key: str) -> datetime | None:
        return now - timedelta(seconds=entry[key]) if key in entry else None

    return GenerationRecord(
        env=entry["env"],
        service=entry["service"],
        number=int(entry["number"]),
        fingerprint=entry.get("fingerprint", fingerprint_of(image, size)),
        image=image,
        size=size,
        count=int(entry.get("count", 1)),
        state=GenerationState(entry["state"]),
        created_at=ago("created_ago"),
        activated_at=ago("activated_ago"),
        retired_at=ago("retired_ago"),
        image_id=entry.get("image_id"),
        reason=entry.get("reason"),
        state_since=ago("since_ago"),
    )


def make_observed(
    entry: Mapping[str, Any], *, generations: Mapping[tuple[str, str, int], GenerationRecord]
) -> ObservedInstance:
    """Compact instance: id, state?, and either identity tags (env, service, generation,
    slot; image/size default to the generation's), bare image/size (untagged), or `tags`
    as the cloud holds them, read by the adapters' own `instance_from_tags`."""
    if "tags" in entry:
        return instance_from_tags(
            {str(k): str(v) for k, v in entry["tags"].items()},
            id=entry["id"], provider=PROVIDER,
            state=InstanceState(entry.get("state", "running")),
            image=entry.get("image", "ami-unknown"), size=entry.get("size", DEFAULT_SIZE),
        )  # fmt: skip
    env, service, number = entry.get("env"), entry.get("service"), entry.get("generation")
    gen = generations.get((env, service, number))
    image = entry.get("image", gen.image if gen else "ami-unknown")
    size = entry.get("size", gen.size if gen else DEFAULT_SIZE)
    tagged = env is not None and service is not None and number is not None
    fingerprint = entry.get("fingerprint")
    if isinstance(fingerprint, Mapping):  # the tag of a spec, e.g. before a resize by hand
        fingerprint = fingerprint_of(fingerprint["image"], fingerprint.get("size", DEFAULT_SIZE))
    if fingerprint is None and tagged:
        fingerprint = gen.fingerprint if gen else fingerprint_of(image, size)
    return ObservedInstance(
        id=entry["id"],
        provider=PROVIDER,
        state=InstanceState(entry.get("state", "running")),
        image=image,
        size=size,
        env=env,
        service=service,
        generation=number,
        slot=entry.get("slot"),
        fingerprint=fingerprint,
    )


def make_instance_record(entry: Mapping[str, Any]) -> InstanceRecord:
    return InstanceRecord(
        id=entry["id"],
        provider=PROVIDER,
        env=entry["env"],
        service=entry["service"],
        generation=int(entry["generation"]),
        slot=entry.get("slot"),
        state=entry.get("state", "running"),
    )


@dataclass(frozen=True)
class CaseInputs:
    desired: DesiredState
    observed: tuple[ObservedInstance, ...]
    ledger: LedgerView
    now: datetime


def build_case(case: Mapping[str, Any]) -> CaseInputs:
    """The planner's inputs from one YAML case. Observed tagged instances of a recorded
    generation are recorded in the ledger too, unless `ledger.record_observed: false`."""
    now = parse_time(case["now"])
    ledger_spec = case.get("ledger") or {}
    generations = [make_generation(g, now=now) for g in ledger_spec.get("generations", [])]
    by_key = {(g.env, g.service, g.number): g for g in generations}
    observed = tuple(make_observed(i, generations=by_key) for i in case.get("observed") or [])
    records = [make_instance_record(i) for i in ledger_spec.get("instances", [])]
    if ledger_spec.get("record_observed", True):
        known = {r.id for r in records}
        for i in observed:
            key = (i.env, i.service, i.generation)
            if key in by_key and i.id not in known:
                env, service, number = by_key[key].env, by_key[key].service, by_key[key].number
                records.append(
                    InstanceRecord(
                        id=i.id,
                        provider=i.provider,
                        env=env,
                        service=service,
                        generation=number,
                        slot=i.slot,
                        state="running",
                    )
                )
    return CaseInputs(
        desired=make_desired(case.get("desired") or []),
        observed=observed,
        ledger=LedgerView(generations=tuple(generations), instances=tuple(records)),
        now=now,
    )


def compact_action(action: Action) -> dict[str, Any]:
    """The fields a case states: None fields dropped; a destroy's slot follows its instance."""
    fields: dict[str, Any] = {
        "kind": action.kind.value,
        "reason": action.reason.value,
        "env": action.env,
        "service": action.service,
        "generation": action.generation,
        "slot": None if action.kind is ActionKind.DESTROY else action.slot,
        "instance": action.instance_id,
        "replaces": action.replaces,
        "previous": action.previous,
        "adopt_as": action.adopt_as.value if action.adopt_as else None,
    }
    return {k: v for k, v in fields.items() if v is not None}


# ------------------------------------------------------------------ the fake world


@dataclass(frozen=True)
class World:
    """The cloud (observed instances, gone ones included) and the whole ledger."""

    observed: tuple[ObservedInstance, ...] = ()
    generations: tuple[GenerationRecord, ...] = ()
    instances: tuple[InstanceRecord, ...] = ()  # every recorded instance, ended ones too
    next_id: int = 1

    def ledger_view(self) -> LedgerView:
        # As `ledger.queries.view`: every generation, only instances not ended.
        return LedgerView(
            generations=tuple(sorted(self.generations, key=lambda g: (g.env, g.service, g.number))),
            instances=tuple(r for r in self.instances if r.state not in ENDED),
        )

    def alive(self) -> list[ObservedInstance]:
        return [i for i in self.observed if i.alive]

    def generation(self, env: str, service: str, number: int) -> GenerationRecord | None:
        for gen in self.generations:
            if (gen.env, gen.service, gen.number) == (env, service, number):
                return gen
        return None


@dataclass
class _Mutable:
    observed: dict[str, ObservedInstance]
    generations: dict[tuple[str, str, int], GenerationRecord]
    instances: dict[str, InstanceRecord]
    next_id: int
    now: datetime
    desired: DesiredState
    snapshot: tuple[ObservedInstance, ...] = field(default_factory=tuple)

    def freeze(self) -> World:
        return World(
            observed=tuple(self.observed.values()),
            generations=tuple(self.generations.values()),
            instances=tuple(self.instances.values()),
            next_id=self.next_id,
        )

    # -- ledger writes, with the real ledger's no-op semantics for unknown rows

    def record_generation(self, gen: GenerationRecord) -> None:
        self.generations.setdefault((gen.env, gen.service, gen.number), gen)

    def set_generation(self, env: str, service: str, number: int, **changes: Any) -> None:
        key = (env, service, number)
        if key in self.generations:
            self.generations[key] = replace(self.generations[key], **changes)

    def set_instance_state(self, instance_id: str, state: str) -> None:
        if instance_id in self.instances:
            self.instances[instance_id] = replace(self.instances[instance_id], state=state)

    def terminate(self, instance_id: str) -> None:
        if instance_id in self.observed:
            self.observed[instance_id] = replace(
                self.observed[instance_id], state=InstanceState.GONE
            )
        self.set_instance_state(instance_id, "destroyed")


class RolloutFailedError(Exception):
    """The simulated health gate refused a new generation."""


def simulate_apply(
    plan: Plan,
    world: World,
    *,
    desired: DesiredState,
    now: datetime,
    fail: Collection[tuple[str, str]] = (),
    stop_after: int | None = None,
) -> World:
    """Apply `plan` as `reconciler.apply.applier.Applier` does, on a copy of `world`.

    `fail`: services whose new-generation batches fail the health gate (the batch is
    compensated, the generation marked failed, the service's remaining actions skipped).
    `stop_after`: apply only the first N actions of the plan (a crash mid-run).
    """
    state = _Mutable(
        observed={i.id: i for i in world.observed},
        generations={(g.env, g.service, g.number): g for g in world.generations},
        instances={r.id: r for r in world.instances},
        next_id=world.next_id,
        now=now,
        desired=desired,
        snapshot=world.observed,
    )
    actions = plan.actions if stop_after is None else plan.actions[:stop_after]
    for group in Plan(actions=actions).by_service().values():
        try:
            _run_group(state, group, fail=(group[0].env, group[0].service) in fail)
        except RolloutFailedError:
            continue
    return state.freeze()


def _run_group(state: _Mutable, actions: Sequence[Action], *, fail: bool) -> None:
    batch: list[Action] = []
    for action in actions:
        if action.kind is ActionKind.CREATE:
            batch.append(action)
            continue
        if batch:
            _create_batch(state, batch, fail=fail)
            batch = []
        _dispatch(state, action)
    if batch:
        _create_batch(state, batch, fail=fail)
    scaled = [a for a in actions if a.reason in (Reason.SURPLUS, Reason.DEFICIT)]
    spec = state.desired.service(actions[0].env, actions[0].service)
    if scaled and spec is not None:
        state.set_generation(spec.env, spec.name, scaled[0].generation, count=spec.count)


def _create_batch(state: _Mutable, batch: list[Action], *, fail: bool) -> None:
    spec = state.desired.service(batch[0].env, batch[0].service)
    assert spec is not None, f"create for an undesired service: {batch[0].describe()}"
    number = batch[0].generation
    new_generation = batch[0].reason is Reason.SPEC_CHANGED
    if new_generation:
        state.record_generation(
            GenerationRecord(
                env=spec.env,
                service=spec.name,
                number=number,
                fingerprint=spec.fingerprint,
                image=spec.image,
                size=spec.size,
                count=spec.count,
                state=GenerationState.CREATING,
                created_at=state.now,
            )
        )
    launched = []
    # As the applier does: a generation that recorded the image it resolved to keeps
    # launching that image (a name re-pointed later never mixes images in it).
    recorded = state.generations.get((spec.env, spec.name, number))
    image = (recorded.image_id if recorded else None) or spec.image
    for action in batch:
        slot = action.slot or 1
        instance_id = f"i-{state.next_id:05d}"
        state.next_id += 1
        instance = ObservedInstance(
            id=instance_id,
            provider=spec.provider,
            state=InstanceState.RUNNING,
            image=image,
            size=spec.size,
            env=spec.env,
            service=spec.name,
            generation=action.generation,
            slot=slot,
            fingerprint=spec.fingerprint,
            name=f"{spec.env}-{spec.name}-g{action.generation}-{slot}",
            launched_at=state.now,
        )
        state.observed[instance_id] = instance
        state.instances[instance_id] = InstanceRecord(
            id=instance_id,
            provider=spec.provider,
            env=spec.env,
            service=spec.name,
            generation=action.generation,
            slot=slot,
            state="running",
            created_at=state.now,
        )
        if action.replaces and action.reason is Reason.MISSING:
            state.set_instance_state(action.replaces, "gone")
        launched.append(instance)
    if fail and new_generation:
        for instance in launched:
            state.terminate(instance.id)
        state.set_generation(
            spec.env,
            spec.name,
            number,
            state=GenerationState.FAILED,
            retired_at=state.now,
            reason="failed: health gate",
        )
        raise RolloutFailedError(spec.name)
    if new_generation and launched:
        state.set_generation(spec.env, spec.name, number, image_id=launched[0].image)


def _dispatch(state: _Mutable, action: Action) -> None:
    if action.kind is ActionKind.DESTROY:
        assert action.instance_id is not None
        state.terminate(action.instance_id)
    elif action.kind is ActionKind.ACTIVATE:
        state.set_generation(
            action.env,
            action.service,
            action.generation,
            state=GenerationState.ACTIVE,
            activated_at=state.now,
        )
        if action.previous is not None:
            state.set_generation(
                action.env,
                action.service,
                action.previous,
                state=GenerationState.STANDBY,
                retired_at=state.now,
                reason=f"superseded by generation {action.generation}",
            )
    elif action.kind is ActionKind.RETIRE:
        state.set_generation(
            action.env,
            action.service,
            action.generation,
            state=GenerationState.DESTROYED,
            reason=action.reason.value,
        )
    elif action.kind is ActionKind.ADOPT:
        _adopt(state, action)
    elif action.kind is ActionKind.PREPARE:
        state.set_generation(
            action.env, action.service, action.generation,
            state=GenerationState.READY, state_since=state.now,
        )  # fmt: skip
    elif action.kind is ActionKind.CHECK:
        pass  # a health check of a generation waiting ready changes nothing
    else:  # pragma: no cover - every kind is handled above
        raise AssertionError(action.kind)


def _adopt(state: _Mutable, action: Action) -> None:
    # The real applier adopts from the listing it planned with, not the live cloud.
    members = [
        i
        for i in state.snapshot
        if (i.env, i.service, i.generation) == (action.env, action.service, action.generation)
        and i.alive
    ]
    sample = members[0]
    adopted = action.adopt_as or GenerationState.STANDBY
    stamp = {
        GenerationState.ACTIVE: "activated_at",
        GenerationState.STANDBY: "retired_at",
        GenerationState.FAILED: "retired_at",
    }.get(adopted)
    record = GenerationRecord(
        env=action.env,
        service=action.service,
        number=action.generation,
        fingerprint=sample.fingerprint or "",
        image=sample.image,
        size=sample.size,
        count=len(members),
        state=adopted,
        created_at=state.now,
        reason=Reason.UNRECORDED_GENERATION.value,
        **({stamp: state.now} if stamp else {}),
    )
    state.record_generation(record)
    stamp_changes = {stamp: state.now} if stamp else {}
    state.set_generation(
        action.env, action.service, action.generation, state=adopted, **stamp_changes
    )
    for instance in members:
        state.instances[instance.id] = InstanceRecord(
            id=instance.id,
            provider=instance.provider,
            env=action.env,
            service=action.service,
            generation=action.generation,
            slot=instance.slot,
            state=instance.state.value,
            created_at=instance.launched_at or state.now,
        )


# ------------------------------------------------------------------ out-of-band damage


def damage_instance(world: World, instance_id: str, **changes: Any) -> World:
    """Change one observed instance behind the reconciler's back (stop, resize, ...)."""
    observed = tuple(replace(i, **changes) if i.id == instance_id else i for i in world.observed)
    return replace(world, observed=observed)


def vanish_instance(world: World, instance_id: str) -> World:
    """Terminated long ago: the listing no longer shows it at all."""
    return replace(world, observed=tuple(i for i in world.observed if i.id != instance_id))


def add_stray(world: World, instance: ObservedInstance) -> World:
    return replace(world, observed=(*world.observed, instance), next_id=world.next_id + 1)


def lose_ledger(world: World) -> World:
    return replace(world, generations=(), instances=())
