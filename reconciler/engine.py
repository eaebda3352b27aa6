"""One reconcile pass (DESIGN §1): read → observe → plan → guard → apply → record.

Owns: wiring the desired-state loader, providers, planner, guards, applier and ledger
together for `plan` and `apply`. Must not: parse command lines or pick exit codes
(the CLI does), or hold decisions of its own beyond the guards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from reconciler.apply import ApplyResult, HealthGate, apply_plan
from reconciler.desired import load_desired_state
from reconciler.errors import GuardRefused, ReconcilerError
from reconciler.gitinfo import current_commit
from reconciler.ledger import Ledger
from reconciler.model import (
    CAPACITY_REDUCING,
    ActionKind,
    DesiredState,
    InstanceState,
    ObservedInstance,
    Plan,
)
from reconciler.planner import compute_plan
from reconciler.providers import ComputeProvider, build_provider

log = structlog.get_logger(__name__)


@dataclass
class PassOutcome:
    desired: DesiredState
    observed: Sequence[ObservedInstance]
    plan: Plan
    run_id: int | None = None
    result: ApplyResult | None = None
    guards: list[str] = field(default_factory=list)


def read_desired(desired_dir: str | Path) -> DesiredState:
    return load_desired_state(desired_dir, commit=current_commit(desired_dir))


ApiCallListener = Callable[[str, str], None]


def build_providers(
    desired: DesiredState, *, on_call: ApiCallListener | None = None
) -> dict[str, ComputeProvider]:
    return {
        name: build_provider(profile, on_call=on_call)
        for name, profile in desired.providers.items()
    }


def observe(
    desired: DesiredState, providers: Mapping[str, ComputeProvider]
) -> list[ObservedInstance]:
    """Every owned instance of every provider; any failure aborts before planning."""
    observed: list[ObservedInstance] = []
    for name in sorted(providers):
        found = providers[name].list_owned(desired.owner)
        log.info("provider_observed", provider=name, instances=len(found))
        observed.extend(found)
    return observed


def check_guards(
    desired: DesiredState,
    observed: Sequence[ObservedInstance],
    plan: Plan,
    *,
    allow_mass_destroy: bool,
) -> list[str]:
    """DESIGN §4 guards; each returned string is a reason to refuse the whole run."""
    reasons: list[str] = []
    if not desired.environments:
        reasons.append("the desired state declares no environments; refusing to act on it")
    for env in desired.environments:
        if not env.services:
            reasons.append(
                f"environment {env.name} ({env.source_file}) declares no services; "
                "refusing to prune it (delete the file to decommission the environment)"
            )
    alive = [i for i in observed if i.alive]
    reducing = [
        a for a in plan.actions if a.kind is ActionKind.DESTROY and a.reason in CAPACITY_REDUCING
    ]
    limit = desired.policy.max_destroy_fraction
    if reducing and not allow_mass_destroy and len(reducing) > limit * len(alive):
        reasons.append(
            f"plan destroys {len(reducing)} of {len(alive)} running instances without "
            f"replacement, above max_destroy_fraction {limit}; "
            "re-run with --allow-mass-destroy if this is intended"
        )
    return reasons


def plan_pass(desired_dir: str | Path, ledger: Ledger) -> PassOutcome:
    """Read, observe and plan; changes nothing anywhere."""
    desired = read_desired(desired_dir)
    providers = build_providers(desired)
    observed = observe(desired, providers)
    plan = compute_plan(
        desired=desired, observed=observed, ledger=ledger.view(), now=datetime.now(UTC)
    )
    outcome = PassOutcome(desired=desired, observed=observed, plan=plan)
    outcome.guards = check_guards(desired, observed, plan, allow_mass_destroy=False)
    return outcome


def _never() -> bool:
    return False


def _nothing() -> None:
    return None


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
    should_stop: Callable[[], bool] = _never,
    heartbeat: Callable[[], None] = _nothing,
    on_call: ApiCallListener | None = None,
) -> PassOutcome:
    """One full pass. Raises GuardRefused (nothing changed) or returns the outcome.

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
) -> PassOutcome:
    started = datetime.now(UTC)
    try:
        providers = build_providers(desired, on_call=on_call)
        observed = observe(desired, providers)
        heartbeat()
        plan = compute_plan(desired=desired, observed=observed, ledger=ledger.view(), now=started)
        outcome = PassOutcome(desired=desired, observed=observed, plan=plan, run_id=run_id)
        reasons = check_guards(desired, observed, plan, allow_mass_destroy=allow_mass_destroy)
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
            raise GuardRefused(reasons)
        result = apply_plan(
            plan,
            desired=desired,
            observed=observed,
            providers=providers,
            ledger=ledger,
            run_id=run_id,
            gate=gate,
            should_stop=should_stop,
            heartbeat=heartbeat,
        )
        outcome.result = result
        _record_vanished(ledger, observed, before=started)
    except GuardRefused:
        raise
    except ReconcilerError as exc:
        ledger.finish_run(run_id, result="failed", counts={}, error=str(exc))
        raise
    if result.interrupted:
        result_name = "interrupted"
    elif not result.ok:
        result_name = "failed"
    else:
        result_name = "no-op" if plan.empty else "changes"
    counts = {**result.counts, **drift_counts(plan)}
    ledger.finish_run(
        run_id, result=result_name, counts=counts, error="; ".join(result.failures) or None
    )
    log.info("run_finished", result=result_name, **counts)
    return outcome


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
