"""One reconcile pass (DESIGN §1): read → observe → plan → guard → apply → record.

Owns: wiring the stages together for `plan` and `apply`: `desired` (read), `providers`
(observe), `planning` (plan, and its guards), `apply`, and the `ledger` (record), plus
what a pass reports on the way (odd instances, removed environments, services going
down). Must not: parse command lines or pick exit codes (the CLI does), or decide
anything itself: the planner and the guards decide, from what this module gathers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from reconciler import accounting
from reconciler.apply.run import ApplyResult, HealthGate, never_stop, no_heartbeat
from reconciler.desired import load_desired_state
from reconciler.desired.gitinfo import current_commit
from reconciler.errors import (
    Declined,
    GuardRefused,
    InvalidDesiredState,
    Problem,
    ReconcilerError,
)
from reconciler.extensions.notify import Notifications
from reconciler.fencing import OPEN, Fence
from reconciler.ledger import Ledger
from reconciler.ledger.holds import (
    current_freezes,
    current_pins,
    recent_replacements,
    services_down,
)
from reconciler.model import (
    ActionKind,
    DesiredState,
    Freeze,
    HoldReason,
    InstanceState,
    ObservedInstance,
    ObservedVolume,
    Plan,
    Reason,
)
from reconciler.planning.costs import PlanCosts
from reconciler.planning.guards import (
    check_guards,
    replacements_planned,
    thrashing,
)
from reconciler.planning.planner import compute_plan
from reconciler.planning.promotion import Lag, lags
from reconciler.providers import ComputeProvider, build_provider
from reconciler.providers.base import LoadBalancerPort
from reconciler.providers.fenced import FencedProvider
from reconciler.recovery import resolve_open_operations

log = structlog.get_logger(__name__)


@dataclass
class PassOutcome:
    desired: DesiredState
    observed: Sequence[ObservedInstance]
    plan: Plan
    run_id: int | None = None
    result: ApplyResult | None = None
    guards: list[str] = field(default_factory=list)
    costs: PlanCosts | None = None  # plan_pass only: monthly delta and overlap cost
    result_name: str | None = None  # apply_pass only: the run's result, as logged
    lags: list[Lag] = field(default_factory=list)  # plan_pass only: environments behind


def read_desired(desired_dir: str | Path) -> DesiredState:
    return load_desired_state(desired_dir, commit=current_commit(desired_dir))


ApiCallListener = Callable[[str, str], None]


def build_providers(
    desired: DesiredState, *, on_call: ApiCallListener | None = None, fence: Fence = OPEN
) -> dict[str, ComputeProvider]:
    """One adapter per provider profile; behind `fence` when one is given (a leader's
    lease under `--coordination`), so each mutation asks it first."""
    providers: dict[str, ComputeProvider] = {}
    agent = None if fence is OPEN else f"reconciler-epoch/{fence.epoch}"
    for name, profile in desired.providers.items():
        provider = build_provider(profile, on_call=on_call, agent=agent)
        providers[name] = provider if fence is OPEN else FencedProvider(provider, fence)
    return providers


def check_capabilities(desired: DesiredState, providers: Mapping[str, ComputeProvider]) -> None:
    """Refuse, before anything is observed or changed, a size its provider does not offer
    or cannot price (validation cannot know a cloud's sizes without asking it)."""
    problems: list[Problem] = []
    for name, provider in providers.items():
        services = [s for s in desired.services() if s.provider == name]
        if not services:
            continue
        offered = provider.known_sizes()
        for size in sorted({spec.size for spec in services}):
            warning = provider.size_warning(size) if offered is None or size in offered else None
            if warning is not None:
                log.warning("size_deprecated", provider=name, size=size, why=warning)
        for spec in services:
            if offered is not None and spec.size not in offered:
                problems.append(
                    Problem(
                        file=spec.source_file,
                        line=None,
                        key=f"services.{spec.name}.size",
                        message=f"provider {name} does not offer size {spec.size!r} "
                        f"({len(offered)} sizes are listed there)",
                    )
                )
            elif spec.price_per_hour is None and provider.price_per_hour(spec.size) is None:
                # The ledger would record these instances as free: refuse instead.
                problems.append(
                    Problem(
                        file=spec.source_file,
                        line=None,
                        key=f"services.{spec.name}.price_per_hour",
                        message=f"is required: libcloud has no price for size {spec.size!r} "
                        f"at provider {name}",
                    )
                )
    if problems:
        raise InvalidDesiredState(problems)


# How long after we destroyed an instance the cloud may still list it as running (GCE
# shows RUNNING for a moment, then STOPPING). Within it, a listing that says alive is
# read as "going away"; past it, a survivor is real and the planner deals with it.
DELETION_GRACE = timedelta(minutes=15)


def observe(
    desired: DesiredState, providers: Mapping[str, ComputeProvider]
) -> list[ObservedInstance]:
    """Every owned instance of every provider; any failure aborts before planning."""
    observed: list[ObservedInstance] = []
    for name in sorted(providers):
        found = providers[name].list_owned(desired.owner)
        log.info("provider_observed", provider=name, instances=len(found))
        observed.extend(found)
    for instance in observed:
        if instance.unrecognized_state is not None:
            log.warning("instance_state_unknown", provider=instance.provider,
                        instance=instance.id, state=instance.unrecognized_state)  # fmt: skip
    return observed


def observe_volumes(
    desired: DesiredState, providers: Mapping[str, ComputeProvider]
) -> list[ObservedVolume]:
    """The owned data volumes of the providers that have a service with `volume:` (no
    request at all where none has: a pass costs what it cost before volumes)."""
    wanted = sorted({s.provider for s in desired.services() if s.volume is not None})
    found: list[ObservedVolume] = []
    for name in wanted:
        port = providers[name].volumes() if name in providers else None
        if port is not None:
            found.extend(port.list_owned(desired.owner))
    return found


def settle_deletions(
    observed: Sequence[ObservedInstance], ledger: Ledger, *, now: datetime
) -> list[ObservedInstance]:
    """What planning sees: an instance the ledger records as destroyed within
    DELETION_GRACE counts as gone however the cloud still lists it, so a deletion made
    by an earlier pass's adapter (which remembered it) does not read as a live
    instance in this one. Reports (orphans) keep the listing as the cloud gave it."""
    destroyed = ledger.destroyed_instance_ids(since=now - DELETION_GRACE)
    return [
        replace(i, state=InstanceState.GONE) if i.alive and i.id in destroyed else i
        for i in observed
    ]


def report_odd_instances(
    ledger: Ledger, observed: Sequence[ObservedInstance], *, run: int, at: datetime
) -> None:
    """Events for what an operator should look at: an instance in a state its adapter
    does not know (counted as not serving, every pass), and an owned instance whose
    identity tags cannot be read (left alone; reported once, `plan` and `ledger orphans`
    show it every time)."""
    for instance in observed:
        if instance.unreadable is not None and not ledger.has_event(
            kind="instance_tags_unreadable", instance=instance.id
        ):
            log.warning("instance_tags_unreadable", provider=instance.provider,
                        instance=instance.id, why=instance.unreadable)  # fmt: skip
            ledger.record_event(
                kind="instance_tags_unreadable", at=at, run=run, instance=instance.id,
                detail={"provider": instance.provider, "why": instance.unreadable},
            )  # fmt: skip
    for instance in observed:
        if instance.unrecognized_state is not None:
            ledger.record_event(
                kind="instance_state_unknown", at=at, run=run, env=instance.env,
                service=instance.service, generation=instance.generation,
                instance=instance.id,
                detail={"provider": instance.provider, "state": instance.unrecognized_state,
                        "counted_as": instance.state.value},
            )  # fmt: skip


def plan_pass(desired_dir: str | Path, ledger: Ledger) -> PassOutcome:
    """Read, observe and plan; changes nothing anywhere."""
    desired = read_desired(desired_dir)
    providers = build_providers(desired)
    check_capabilities(desired, providers)
    now = datetime.now(UTC)
    observed = observe(desired, providers)
    volumes = observe_volumes(desired, providers)
    view = ledger.view()
    plan = compute_plan(
        desired=desired,
        observed=settle_deletions(observed, ledger, now=now),
        ledger=view,
        now=now,
        pins=current_pins(ledger, desired),
        frozen=current_freezes(ledger, desired),
        volumes=volumes,
    )
    outcome = PassOutcome(desired=desired, observed=observed, plan=dated_holds(plan, ledger))
    outcome.guards = check_guards(
        desired, observed, plan, allow_mass_destroy=False, volumes=volumes
    )
    outcome.costs = accounting.plan_costs(
        plan, desired=desired, observed=observed, providers=providers, ledger=ledger
    )
    outcome.lags = lags(view, now=now)
    return outcome


def drift_counts(plan: Plan) -> dict[str, int]:
    """Planned cloud changes by reason, e.g. {"drift:missing": 1}: what the run found."""
    counts: dict[str, int] = {}
    for action in plan.mutating():
        key = f"drift:{action.reason.value}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def apply_pass(
    desired: DesiredState | str | Path,
    ledger: Ledger,
    *,
    command: str = "apply",
    allow_mass_destroy: bool = False,
    gate: HealthGate | None = None,
    should_stop: Callable[[], bool] = never_stop,
    heartbeat: Callable[[], None] = no_heartbeat,
    on_call: ApiCallListener | None = None,
    confirm: Callable[[Plan], bool] | None = None,
) -> PassOutcome:
    """One full pass. Raises GuardRefused (nothing changed) or returns the outcome.

    `confirm`, when given, sees the plan once the guards passed and before anything
    changes; answering False ends the run (`Declined`, nothing changed).

    `should_stop` is polled between operations (a stop lets the call in flight finish
    and starts nothing new); `heartbeat` is called from every wait (systemd watchdog).
    """
    if not isinstance(desired, DesiredState):
        desired = read_desired(desired)
    run_id = ledger.start_run(command=command, commit=desired.commit)
    with structlog.contextvars.bound_contextvars(run=run_id):
        return _apply_run(
            desired,
            ledger,
            run_id,
            allow_mass_destroy=allow_mass_destroy,
            gate=gate,
            should_stop=should_stop,
            heartbeat=heartbeat,
            on_call=on_call,
            confirm=confirm,
        )


def _apply_run(
    desired: DesiredState,
    ledger: Ledger,
    run_id: int,
    *,
    allow_mass_destroy: bool,
    gate: HealthGate | None,
    should_stop: Callable[[], bool],
    heartbeat: Callable[[], None],
    on_call: ApiCallListener | None,
    confirm: Callable[[Plan], bool] | None,
) -> PassOutcome:
    started = datetime.now(UTC)
    notifications = Notifications(desired.notifiers)
    try:
        providers = build_providers(desired, on_call=on_call, fence=ledger.fence)
        check_capabilities(desired, providers)
        frozen = current_freezes(ledger, desired)
        # What an interrupted pass left open is closed first, so the plan sees it settled.
        resolve_open_operations(ledger, providers, desired, now=started, run=run_id, frozen=frozen)
        observed = observe(desired, providers)
        volumes = observe_volumes(desired, providers)
        report_odd_instances(ledger, observed, run=run_id, at=started)
        # One ledger row per provider: what `ledger orphans` judges between passes.
        accounting.record_observation(
            ledger, desired=desired, providers=providers, observed=observed, run=run_id, at=started
        )
        # From here on, what planning and applying see (the record above keeps the
        # listing as the cloud gave it).
        observed = settle_deletions(observed, ledger, now=started)
        heartbeat()
        pins = current_pins(ledger, desired, release_stale=True)
        view = ledger.view()
        plan = compute_plan(
            desired=desired, observed=observed, ledger=view, now=started, pins=pins,
            frozen=frozen, volumes=volumes,
        )  # fmt: skip
        planned = replacements_planned(plan)
        recent = recent_replacements(
            ledger, planned, now=started, window_seconds=desired.policy.thrash_window
        )
        tripped = thrashing(desired, planned, recent)
        for (env, service), detail in tripped.items():
            ledger.record_event(
                kind="frozen", at=started, run=run_id, env=env, service=service, detail=detail
            )
            log.error("service_frozen", env=env, service=service, why=detail["why"])
            notifications.send(
                "guard-tripped", f"{env}/{service} frozen: {detail['why']}",
                env=env, service=service, commit=desired.commit, detail=detail,
            )  # fmt: skip
            frozen[(env, service)] = Freeze(detail["why"], started)
        if tripped:
            plan = compute_plan(
                desired=desired, observed=observed, ledger=view, now=started, pins=pins,
                frozen=frozen, volumes=volumes,
            )  # fmt: skip
        outcome = PassOutcome(desired=desired, observed=observed, plan=plan, run_id=run_id)
        reasons = check_guards(
            desired, observed, plan, allow_mass_destroy=allow_mass_destroy, volumes=volumes
        )
        if reasons:
            ledger.record_event(
                kind="guard_tripped",
                at=datetime.now(UTC),
                run=run_id,
                detail={
                    "reasons": reasons,
                    "actions": len(plan.actions),
                    "running": sum(1 for i in observed if i.alive),
                },
            )
            ledger.finish_run(run_id, result="refused", counts={}, error="; ".join(reasons))
            notifications.send(
                "guard-tripped", "reconciler refused a run: " + "; ".join(reasons),
                commit=desired.commit, detail={"reasons": reasons},
            )  # fmt: skip
            raise GuardRefused(reasons)
        if confirm is not None and not plan.empty and not confirm(plan):
            ledger.finish_run(run_id, result="skipped", counts={},
                              error="declined by the operator; nothing was changed")  # fmt: skip
            raise Declined("apply declined; nothing was changed")
        report_removed_environments(ledger, plan, run=run_id, at=started)
        result = ApplyResult()
        if plan.actions:
            result = _carry_out(
                plan, desired=desired, observed=observed, volumes=volumes,
                providers=providers, ledger=ledger, run_id=run_id, gate=gate,
                should_stop=should_stop, heartbeat=heartbeat, notifications=notifications,
            )  # fmt: skip
        outcome.result = result
        _record_vanished(ledger, observed, before=started)
    except (GuardRefused, Declined):
        raise
    except ReconcilerError as exc:
        ledger.finish_run(run_id, result="failed", counts={}, error=str(exc))
        notifications.send("run-failed", f"reconciler run {run_id} failed: {exc}",
                           commit=desired.commit)  # fmt: skip
        raise
    if result.failures:
        notifications.send(
            "run-failed", f"reconciler run {run_id} failed: " + "; ".join(result.failures),
            commit=desired.commit, detail={"failures": result.failures},
        )  # fmt: skip
    if result.interrupted:
        result_name = "interrupted"
    elif not result.ok:
        result_name = "failed"
    else:
        result_name = "no-op" if plan.empty else "changes"
    counts = {**result.counts, **drift_counts(plan)}
    # What is held now, after this pass's work (a rollout that failed just now, a service
    # it left with nothing running), planned again from the ledger: no API call.
    after = compute_plan(
        desired=desired, observed=settle_deletions(observed, ledger, now=datetime.now(UTC)),
        ledger=ledger.view(), now=started, pins=pins, frozen=frozen,
    )  # fmt: skip
    plan = replace(plan, held=after.held)
    report_down_services(ledger, desired, plan, notifications, run=run_id, at=datetime.now(UTC))
    outcome.plan = plan = dated_holds(plan, ledger)
    outcome.result_name = result_name
    if plan.held:
        log.warning("services_held", held=len(plan.held), services="; ".join(
            f"{h.env}/{h.service} {h.reason.value}" for h in plan.held))  # fmt: skip
    ledger.finish_run(
        run_id, result=result_name, counts=counts, error="; ".join(result.failures) or None,
        held=[hold.as_dict() for hold in plan.held],
    )  # fmt: skip
    finished = log.error if result_name == "failed" else log.info
    finished("run_finished", result=result_name, failures=len(result.failures), **counts)
    return outcome


def _carry_out(
    plan: Plan,
    *,
    desired: DesiredState,
    observed: Sequence[ObservedInstance],
    volumes: Sequence[ObservedVolume],
    providers: Mapping[str, ComputeProvider],
    ledger: Ledger,
    run_id: int,
    gate: HealthGate | None,
    should_stop: Callable[[], bool],
    heartbeat: Callable[[], None],
    notifications: Notifications,
) -> ApplyResult:
    """Apply a plan that has actions. The applier, the rollout gates and the plugins they
    load are imported and loaded here, on first use: a pass with nothing to do (the
    daemon's usual one) never pays for them."""
    from reconciler.apply.applier import apply_plan
    from reconciler.apply.gates import Rollout

    rollout = Rollout(
        desired,
        load_balancers=load_balancer_ports(desired, providers),
        heartbeat=heartbeat,
        should_stop=should_stop,
        fence=ledger.fence,
    )
    return apply_plan(
        plan,
        desired=desired,
        observed=observed,
        volumes=volumes,
        providers=providers,
        ledger=ledger,
        run_id=run_id,
        gate=gate or rollout,
        should_stop=should_stop,
        heartbeat=heartbeat,
        traffic=rollout,
        notifications=notifications,
    )


def report_removed_environments(ledger: Ledger, plan: Plan, *, run: int, at: datetime) -> None:
    """An environment whose file was deleted is reported as that, once: an event (with
    what it dismantles) and a log line, before its instances go."""
    removing: dict[str, set[str]] = {}
    for action in plan.actions:
        if action.reason is Reason.ENVIRONMENT_REMOVED:
            removing.setdefault(action.env, set()).add(action.service)
    for env, services in sorted(removing.items()):
        newest = max(
            (g.created_at for g in ledger.view().generations if g.env == env and g.created_at),
            default=None,
        )
        if any(
            newest is None or datetime.fromisoformat(e["at"]) >= newest
            for e in ledger.event_rows(kind="environment_removed", env=env)
        ):
            continue  # already reported since the environment last deployed anything
        destroys = sum(1 for a in plan.actions if a.env == env and a.kind is ActionKind.DESTROY)
        detail = {"services": sorted(services), "instances": destroys}
        ledger.record_event(kind="environment_removed", at=at, run=run, env=env, detail=detail)
        log.warning("environment_removed", env=env, services=sorted(services),
                    instances=destroys)  # fmt: skip


def report_down_services(
    ledger: Ledger,
    desired: DesiredState,
    plan: Plan,
    notifications: Notifications,
    *,
    run: int,
    at: datetime,
) -> None:
    """A service that goes down (desired instances, none running, none planned) is an
    event, a log error and a notification once, when it happens; coming back is too."""
    down = {(h.env, h.service): h for h in plan.held if h.reason is HoldReason.DOWN}
    was_down = services_down(ledger)
    for key in sorted(down.keys() - was_down.keys()):
        hold = down[key]
        ledger.record_event(kind="service_down", at=at, run=run, env=key[0], service=key[1],
                            detail={"why": hold.why})  # fmt: skip
        log.error("service_down", env=key[0], service=key[1], why=hold.why)
        notifications.send(
            "service-down", f"{key[0]}/{key[1]} is down: {hold.why}",
            env=key[0], service=key[1], commit=desired.commit, detail={"why": hold.why},
        )  # fmt: skip
    for key in sorted(was_down.keys() - down.keys()):
        why = "running again" if desired.service(*key) else "no longer in the desired state"
        ledger.record_event(kind="service_up", at=at, run=run, env=key[0], service=key[1],
                            detail={"why": why})  # fmt: skip
        log.info("service_up", env=key[0], service=key[1], why=why)
        notifications.send(
            "service-up", f"{key[0]}/{key[1]} is no longer down: {why}",
            env=key[0], service=key[1], commit=desired.commit, detail={"why": why},
        )  # fmt: skip


def dated_holds(plan: Plan, ledger: Ledger) -> Plan:
    """The plan with each down service dated from when a pass first found it down."""
    down_since = services_down(ledger)
    held = tuple(
        replace(h, since=h.since or down_since.get((h.env, h.service)))
        if h.reason is HoldReason.DOWN else h
        for h in plan.held
    )  # fmt: skip
    return replace(plan, held=held)


def load_balancer_ports(
    desired: DesiredState, providers: Mapping[str, ComputeProvider]
) -> dict[str, LoadBalancerPort | None]:
    """The load-balancer adapter of each provider a `libcloud-lb` service uses; built
    only for those, so a pass without load balancers constructs none."""
    wanted = {
        s.provider for s in desired.services() if s.traffic and s.traffic.kind == "libcloud-lb"
    }
    ports: dict[str, LoadBalancerPort | None] = {}
    for name in wanted & set(providers):
        ports[name] = providers[name].load_balancers()
    return ports


def _record_vanished(
    ledger: Ledger, observed: Sequence[ObservedInstance], *, before: datetime
) -> None:
    """Instances the ledger holds as live that the cloud no longer lists are marked gone."""
    present = {i.id for i in observed if i.state is not InstanceState.GONE}
    for record in ledger.view().instances:
        created = record.created_at
        if record.id in present or (created is not None and created >= before):
            continue
        ledger.set_instance_state(record.id, state="gone", at=datetime.now(UTC), reason="missing")
