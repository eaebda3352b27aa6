"""Hypothesis properties of the planner, over worlds built by the planner itself.

Each example is a script: earlier desired states applied through the simulated applier
(some rollouts failing their health gate, some runs dying part-way), then out-of-band
damage (terminate, stop, resize, stray and untagged instances, a lost ledger), then a
final desired state. Every plan along the way must be safe; the final one must converge.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from reconciler.model import (
    Action,
    ActionKind,
    DesiredState,
    GenerationState,
    InstanceState,
    ObservedInstance,
    Plan,
    Reason,
    Strategy,
)
from reconciler.planning.planner import compute_plan
from tests.support.planner_support import (
    PROVIDER,
    World,
    add_stray,
    damage_instance,
    lose_ledger,
    make_desired,
    simulate_apply,
    vanish_instance,
)

ENVS = ("production", "staging", "dev")
SERVICES = ("web", "api", "db")
IMAGES = ("ami-00000001", "ami-00000002", "ami-00000003")
SIZES = ("t3.micro", "t3.small")
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# Destroys of the active generation that are not a hand-over to a successor.
IN_PLACE = frozenset({Reason.SURPLUS, Reason.MISSING, Reason.TAMPERED})

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)


# ------------------------------------------------------------------ strategies


ServiceKey = tuple[str, str]


@st.composite
def service_keys(draw: st.DrawFn) -> list[ServiceKey]:
    """1-3 environments with 1-3 services each: the services a script is about."""
    envs = draw(st.lists(st.sampled_from(ENVS), min_size=1, max_size=3, unique=True))
    return [
        (env, name)
        for env in envs
        for name in draw(st.lists(st.sampled_from(SERVICES), min_size=1, max_size=3, unique=True))
    ]


@st.composite
def desired_entries(draw: st.DrawFn, keys: list[ServiceKey]) -> list[dict[str, Any]]:
    """A desired state over `keys`: most services kept (some dropped), each with a
    random image, size, count 0-5, strategy and keep_previous."""
    kept = [k for k in keys if draw(st.integers(0, 9)) > 0] or keys[:1]
    return [
        {
            "env": env,
            "name": name,
            "image": draw(st.sampled_from(IMAGES)),
            "size": draw(st.sampled_from(SIZES)),
            "count": draw(st.integers(0, 5)),
            "strategy": draw(st.sampled_from(list(Strategy))).value,
            "keep_previous": draw(st.sampled_from([0.0, 600.0, 3600.0])),
        }
        for env, name in kept
    ]


@dataclass(frozen=True)
class Step:
    desired: list[dict[str, Any]]
    advance: int  # seconds since the previous run
    fail: frozenset[ServiceKey]  # services whose new generation fails its health gate
    stop_after: int | None  # the run dies after this many actions


@dataclass(frozen=True)
class Damage:
    kind: str
    pick: int  # which instance (modulo the candidates at that point)
    env: str = "production"
    service: str = "web"
    generation: int = 1
    image: str = IMAGES[0]


@dataclass(frozen=True)
class Script:
    history: list[Step]
    damage: list[Damage]
    final: list[dict[str, Any]]
    final_advance: int


@st.composite
def steps(draw: st.DrawFn, keys: list[ServiceKey]) -> Step:
    return Step(
        desired=draw(desired_entries(keys)),
        advance=draw(st.sampled_from([60, 900, 7200])),
        fail=frozenset(draw(st.sets(st.sampled_from(keys), max_size=1))),
        stop_after=draw(st.none() | st.integers(0, 12)),
    )


damages = st.builds(
    Damage,
    kind=st.sampled_from(
        ["terminate", "vanish", "stop", "resize", "untagged", "stray", "lose_ledger"]
    ),
    pick=st.integers(0, 50),
    env=st.sampled_from(ENVS),
    service=st.sampled_from(SERVICES),
    generation=st.integers(1, 8),
    image=st.sampled_from(IMAGES),
)


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    keys = draw(service_keys())
    return Script(
        history=draw(st.lists(steps(keys), min_size=1, max_size=4)),
        damage=draw(st.lists(damages, max_size=4)),
        final=draw(desired_entries(keys)),
        final_advance=draw(st.sampled_from([0, 60, 7200])),
    )


# ------------------------------------------------------------------ running a script


def apply_damage(world: World, damage: Damage) -> World:
    candidates = sorted(
        (i for i in world.observed if i.state is not InstanceState.GONE), key=lambda i: i.id
    )
    if damage.kind == "lose_ledger":
        return lose_ledger(world)
    if damage.kind in ("untagged", "stray"):
        tagged = damage.kind == "stray"
        stray = ObservedInstance(
            id=f"i-stray{world.next_id:04d}",
            provider=PROVIDER,
            state=InstanceState.RUNNING,
            image=damage.image,
            size="t3.micro",
            env=damage.env if tagged else None,
            service=damage.service if tagged else None,
            generation=damage.generation if tagged else None,
            slot=1 if tagged else None,
            fingerprint="ffffffffffffffff" if tagged else None,
        )
        return add_stray(world, stray)
    if not candidates:
        return world
    target = candidates[damage.pick % len(candidates)]
    if damage.kind == "terminate":
        return damage_instance(world, target.id, state=InstanceState.GONE)
    if damage.kind == "vanish":
        return vanish_instance(world, target.id)
    if damage.kind == "stop":
        return damage_instance(world, target.id, state=InstanceState.STOPPED)
    assert damage.kind == "resize"
    return damage_instance(world, target.id, size="t3.xlarge")


@dataclass
class Run:
    """Computes a script's plans, checking each against the per-plan properties."""

    checked: int = 0
    events: bool = True  # hypothesis statistics; only inside a @given test

    def plan(self, desired: DesiredState, world: World, now: datetime) -> Plan:
        plan = compute_plan(
            desired=desired, observed=world.observed, ledger=world.ledger_view(), now=now
        )
        check_plan(plan, desired=desired, world=world)
        self.checked += 1
        # What the examples exercise: pytest --hypothesis-show-statistics.
        for action in plan.actions if self.events else ():
            event(f"{action.kind.value} [{action.reason.value}] {action.detail}".strip())
        return plan


def run_history(script: Script) -> tuple[World, datetime]:
    world, now, run = World(), T0, Run()
    for step in script.history:
        now += timedelta(seconds=step.advance)
        desired = make_desired(step.desired)
        plan = run.plan(desired, world, now)
        world = simulate_apply(
            plan, world, desired=desired, now=now, fail=step.fail, stop_after=step.stop_after
        )
    for damage in script.damage:
        world = apply_damage(world, damage)
    return world, now + timedelta(seconds=script.final_advance)


# ------------------------------------------------------------------ per-plan checks


def check_plan(plan: Plan, *, desired: DesiredState, world: World) -> None:
    check_blue_green_safety(plan, desired=desired, world=world)
    check_destroys_target_observed(plan, world=world)
    check_generation_numbers(plan, desired=desired, world=world)


def check_blue_green_safety(plan: Plan, *, desired: DesiredState, world: World) -> None:
    """(2) The active generation loses instances only after its successor is activated,
    except in-place replacement or scale-down; a replaced instance goes after its stand-in."""
    active = {
        (g.env, g.service): g.number
        for g in world.ledger_view().generations
        if g.state is GenerationState.ACTIVE
    }
    for action in plan.actions:  # a generation adopted as active is active from here on
        if action.kind is ActionKind.ADOPT and action.adopt_as is GenerationState.ACTIVE:
            active.setdefault((action.env, action.service), action.generation)
    for (env, service), actions in plan.by_service().items():
        spec = desired.service(env, service)
        if spec is None or spec.strategy is not Strategy.BLUE_GREEN:
            continue
        serving = active.get((env, service))
        activated = False
        created_for: set[str] = set()
        for action in actions:
            if action.kind is ActionKind.ACTIVATE and action.generation != serving:
                activated = True
            if action.kind is ActionKind.CREATE and action.replaces:
                created_for.add(action.replaces)
            if action.kind is not ActionKind.DESTROY or action.generation != serving:
                continue
            assert activated or action.reason in IN_PLACE, (
                f"destroyed active {action.describe()} before its successor was activated:\n"
                + describe(plan)
            )
            if action.reason is Reason.TAMPERED:
                assert action.instance_id in created_for, describe(plan)
            replacing = [
                a
                for a in actions
                if a.kind is ActionKind.CREATE and a.replaces == action.instance_id
            ]
            if replacing and action.reason in (Reason.MISSING, Reason.TAMPERED):
                assert action.instance_id in created_for, describe(plan)


def check_destroys_target_observed(plan: Plan, *, world: World) -> None:
    """(3) Every destroy targets an observed, not-gone instance, and at most once."""
    live = {i.id for i in world.observed if i.state is not InstanceState.GONE}
    targets = [a.instance_id for a in plan.actions if a.kind is ActionKind.DESTROY]
    assert len(targets) == len(set(targets)), f"instance destroyed twice:\n{describe(plan)}"
    assert set(targets) <= live, f"destroys {set(targets) - live}, not observed:\n{describe(plan)}"


def check_generation_numbers(plan: Plan, *, desired: DesiredState, world: World) -> None:
    """(4) A new generation's number is above every number the ledger or the cloud knows."""
    view = world.ledger_view()
    for action in plan.actions:
        key = (action.env, action.service)
        known = {g.number: g for g in view.generations if (g.env, g.service) == key}
        seen = set(known) | {
            i.generation
            for i in world.observed
            if (i.env, i.service) == key and i.generation is not None
        }
        if action.kind is ActionKind.ADOPT:
            assert action.generation not in known, describe(plan)
        if action.kind is not ActionKind.CREATE or action.reason is not Reason.SPEC_CHANGED:
            continue
        spec = desired.service(*key)
        assert spec is not None
        resumed = known.get(action.generation)
        if resumed is not None:
            assert resumed.state is GenerationState.CREATING, describe(plan)
            assert resumed.fingerprint == spec.fingerprint, describe(plan)
        else:
            assert action.generation > max(seen, default=0), (
                f"generation {action.generation} reused (known: {sorted(seen)}):\n{describe(plan)}"
            )


def describe(plan: Plan) -> str:
    return "\n".join(a.describe() for a in plan.actions)


# ------------------------------------------------------------------ the properties


@PROPERTY_SETTINGS
@given(scripts())
def test_plans_are_safe_along_any_history(script: Script) -> None:
    """(2), (3), (4) for every plan of the history and the final one."""
    world, now = run_history(script)
    Run().plan(make_desired(script.final), world, now)


@PROPERTY_SETTINGS
@given(scripts())
def test_applying_a_plan_converges(script: Script) -> None:
    """(1) After applying the plan, planning again yields no actions, and each desired
    service's active generation runs `count` instances of the desired fingerprint."""
    world, now = run_history(script)
    desired = make_desired(script.final)
    run = Run()
    after = simulate_apply(run.plan(desired, world, now), world, desired=desired, now=now)

    again = run.plan(desired, after, now)
    assert again.empty, describe(again)
    for spec in desired.services():
        gens = [g for g in after.generations if (g.env, g.service) == spec.key]
        latest = max(gens, key=lambda g: g.number, default=None)
        if (
            latest is not None
            and latest.state is GenerationState.FAILED
            and latest.fingerprint == spec.fingerprint
        ):
            assert any(n.service == spec.name and n.env == spec.env for n in again.notes)
            continue  # not retried until the desired state changes
        active = [g for g in gens if g.state is GenerationState.ACTIVE]
        assert len(active) <= 1, (spec.key, active)
        if spec.count == 0:  # scaled to zero inside whatever generation served last
            assert not [
                i
                for i in after.alive()
                if (i.env, i.service) == spec.key and active and i.generation == active[0].number
            ]
            continue
        assert len(active) == 1, (spec.key, active)
        assert active[0].fingerprint == spec.fingerprint
        members = [
            i
            for i in after.alive()
            if (i.env, i.service, i.generation) == (*spec.key, active[0].number)
        ]
        assert len(members) == spec.count, (spec.key, members)
        assert {i.fingerprint for i in members} <= {spec.fingerprint}


@PROPERTY_SETTINGS
@given(scripts())
def test_converged_world_has_no_leftovers(script: Script) -> None:
    """After one applied plan, every instance still running belongs to a live generation
    of a desired service: strays, untagged and undesired instances are gone."""
    world, now = run_history(script)
    desired = make_desired(script.final)
    after = simulate_apply(Run().plan(desired, world, now), world, desired=desired, now=now)
    live_generations = {
        (g.env, g.service, g.number)
        for g in after.generations
        if g.state in (GenerationState.ACTIVE, GenerationState.STANDBY)
    }
    for instance in after.observed:
        if instance.state is InstanceState.GONE:
            continue
        key = (instance.env, instance.service, instance.generation)
        assert key in live_generations, instance
        assert desired.service(instance.env or "", instance.service or "") is not None, instance


def test_history_checks_run() -> None:
    """Guard against a vacuous property: a script's plans really are checked."""
    run = Run(events=False)
    desired = make_desired([{"env": "production", "name": "web", "image": IMAGES[0], "count": 2}])
    world = simulate_apply(run.plan(desired, World(), T0), World(), desired=desired, now=T0)
    bumped = make_desired([{"env": "production", "name": "web", "image": IMAGES[1], "count": 2}])
    plan = run.plan(bumped, world, T0)
    assert run.checked == 2
    assert [a.kind for a in plan.actions] == [
        ActionKind.CREATE,
        ActionKind.CREATE,
        ActionKind.ACTIVATE,
    ]
    assert plan.actions[-1].previous == 1


def test_safety_check_rejects_a_destroy_before_the_switch() -> None:
    """Guard against a vacuous property: the checks do reject unsafe plans."""
    desired = make_desired([{"env": "production", "name": "web", "image": IMAGES[0]}])
    world = simulate_apply(
        Run(events=False).plan(desired, World(), T0), World(), desired=desired, now=T0
    )
    (serving,) = world.alive()
    early = Action(
        ActionKind.DESTROY,
        Reason.SPEC_CHANGED,
        "production",
        "web",
        1,
        PROVIDER,
        instance_id=serving.id,
    )
    create = Action(ActionKind.CREATE, Reason.SPEC_CHANGED, "production", "web", 2, PROVIDER, 1)
    switch = Action(
        ActionKind.ACTIVATE, Reason.SPEC_CHANGED, "production", "web", 2, PROVIDER, previous=1
    )
    with pytest.raises(AssertionError, match="before its successor"):
        check_plan(Plan(actions=(early, create, switch)), desired=desired, world=world)
    tampered = replace(early, reason=Reason.TAMPERED)
    stand_in = Action(
        ActionKind.CREATE,
        Reason.TAMPERED,
        "production",
        "web",
        1,
        PROVIDER,
        1,
        replaces=serving.id,
    )
    with pytest.raises(AssertionError):
        check_plan(Plan(actions=(tampered, stand_in)), desired=desired, world=world)
    check_plan(Plan(actions=(stand_in, tampered)), desired=desired, world=world)
    gone = vanish_instance(world, serving.id)
    with pytest.raises(AssertionError, match="not observed"):
        check_plan(Plan(actions=(create, switch, early)), desired=desired, world=gone)
