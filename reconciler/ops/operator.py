"""Operator commands that act outside the loop: rollback, release, retry, unfreeze,
switch, abort.

Owns: switching a service back to its standby generation and pinning it, lifting a
pin, allowing a failed spec to be tried again, lifting a guard's freeze, moving the
traffic to a generation waiting `ready` or destroying it, and answering these as
requests recorded for a running daemon (`answer_requests`). Must not: create
instances (rollback only re-uses a live standby) or run without the state lock (the
CLI holds it, or the daemon that answers the request does).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from reconciler import engine
from reconciler.apply.activation import mark_activated, switch_traffic
from reconciler.apply.gates import Rollout, TrafficPort
from reconciler.apply.handover import VolumeMover
from reconciler.apply.progress import NoProgress
from reconciler.apply.run import ApplyResult, ApplyRun
from reconciler.apply.teardown import Teardown
from reconciler.errors import NothingToDo, ReconcilerError
from reconciler.extensions.notify import Notifications
from reconciler.ledger import Ledger
from reconciler.ledger.holds import current_freezes, current_pins
from reconciler.model import (
    DesiredState,
    GenerationState,
    InstanceState,
    ObservedInstance,
    ServiceSpec,
)
from reconciler.providers import ComputeProvider

log = structlog.get_logger(__name__)


DesiredSource = DesiredState | str | Path


def _desired(source: DesiredSource) -> DesiredState:
    return source if isinstance(source, DesiredState) else engine.read_desired(source)


def rollback(desired_dir: DesiredSource, ledger: Ledger, env: str, service: str) -> str:
    """Make the newest live standby generation active again and pin the service to it."""
    desired = _desired(desired_dir)
    spec = desired.service(env, service)
    if spec is None:
        raise NothingToDo(f"{env}/{service} is not in the desired state")
    providers, observed = _observed(desired, ledger)
    rows = ledger.generation_rows(env=env, service=service)
    active = next((r["number"] for r in rows if r["state"] == "active"), None)
    # A service with a volume keeps its standby stopped: the volume is handed back to
    # it (the serving instance stopped first), and it starts again.
    stopped_too = spec.volume is not None
    standbys = [
        r["number"] for r in rows
        if r["state"] == "standby"
        and _members(observed, env, service, r["number"], stopped_too=stopped_too)
    ]  # fmt: skip
    if not standbys:
        raise NothingToDo(f"{env}/{service} has no standby generation with running instances")
    target = max(standbys)
    rollout = Rollout(
        desired, load_balancers=engine.load_balancer_ports(desired, providers), fence=ledger.fence
    )
    if spec.volume is not None:
        observed = _hand_volume(desired, ledger, providers, observed, spec, target)
    failure = rollout.wait_healthy(_members(observed, env, service, target), spec)
    if failure:
        if spec.volume is not None and active is not None:
            _hand_volume(desired, ledger, providers, observed, spec, active)
        raise NothingToDo(f"generation {target} is not healthy, not rolling back: {failure}")
    now = _switch_and_record(
        rollout, ledger, spec, observed, generation=target, previous=active,
        why_previous=f"rolled back to g{target}", note="rollback",
    )  # fmt: skip
    ledger.record_event(
        kind="rollback", at=now, env=env, service=service, generation=target,
        detail={"from": active},
    )  # fmt: skip
    ledger.record_event(
        kind="pinned", at=now, env=env, service=service, generation=target,
        detail={"fingerprint": spec.fingerprint},
    )  # fmt: skip
    message = (
        f"{env}/{service} rolled back from generation {active} to {target} and pinned; "
        f"`reconciler release {env} {service}` returns it to git"
    )
    Notifications(desired.notifiers).send(
        "rollback", message, env=env, service=service, generation=target,
        commit=desired.commit, detail={"from": active},
    )  # fmt: skip
    log.info("rolled_back", env=env, service=service, generation=target, previous=active)
    return message


def _observed(
    desired: DesiredState, ledger: Ledger
) -> tuple[dict[str, ComputeProvider], list[ObservedInstance]]:
    providers = engine.build_providers(desired, fence=ledger.fence)
    observed = engine.settle_deletions(
        engine.observe(desired, providers), ledger, now=datetime.now(UTC)
    )
    return providers, observed


def _members(
    observed: list[ObservedInstance],
    env: str,
    service: str,
    number: int | None,
    *,
    stopped_too: bool = False,
) -> list[ObservedInstance]:
    """The generation's running instances (and, with `stopped_too`, its stopped ones)."""
    return [
        i for i in observed
        if (i.env, i.service, i.generation) == (env, service, number)
        and (i.alive or (stopped_too and i.state is not InstanceState.GONE))
    ]  # fmt: skip


def _switch_and_record(
    rollout: Rollout,
    ledger: Ledger,
    spec: ServiceSpec,
    observed: list[ObservedInstance],
    *,
    generation: int,
    previous: int | None,
    why_previous: str,
    note: str,
) -> datetime:
    """An activation's own steps once the generation passed its gate: the switch (moved
    back if it fails), then the records. Returns when they were made."""
    old = _members(observed, spec.env, spec.name, previous)
    new = _members(observed, spec.env, spec.name, generation)
    failure = switch_traffic(rollout, spec, old=old, new=new)
    if failure is not None:
        raise ReconcilerError(f"traffic switch failed, traffic left where it was: {failure}")
    now = datetime.now(UTC)
    mark_activated(
        ledger, env=spec.env, service=spec.name, generation=generation, previous=previous,
        at=now, run=None, why_previous=why_previous, note=note,
    )  # fmt: skip
    return now


def _side_run(
    desired: DesiredState,
    ledger: Ledger,
    providers: dict[str, ComputeProvider],
    observed: list[ObservedInstance],
    *,
    command: str,
) -> ApplyRun:
    """An apply's shared state for an operator command's own cloud changes, in a run of
    its own so the ledger's history says who made them (the caller finishes the run)."""
    run_id = ledger.start_run(command=command, commit=desired.commit)
    return ApplyRun(
        desired=desired, observed=observed, providers=providers, ledger=ledger, run_id=run_id,
        now=lambda: datetime.now(UTC), should_stop=lambda: False, heartbeat=lambda: None,
        progress=NoProgress(), result=ApplyResult(),
        volumes=engine.observe_volumes(desired, providers),
    )  # fmt: skip


def _waiting_generation(ledger: Ledger, env: str, service: str) -> dict[str, Any]:
    rows = ledger.generation_rows(env=env, service=service)
    ready = [r for r in rows if r["state"] == GenerationState.READY.value]
    if not ready:
        raise NothingToDo(f"no generation of {env}/{service} is waiting for a switch")
    return max(ready, key=lambda r: int(r["number"]))


def switch(desired_dir: DesiredSource, ledger: Ledger, env: str, service: str, *, by: str) -> str:
    """Move the traffic to the generation waiting `ready` (`switch: manual | after D`):
    gated once more, switched (moved back if the switch fails), then active, and the
    one it replaces standby for keep_previous, as for any activation."""
    desired = _desired(desired_dir)
    spec = desired.service(env, service)
    if spec is None:
        raise NothingToDo(f"{env}/{service} is not in the desired state")
    waiting = _waiting_generation(ledger, env, service)
    number = int(waiting["number"])
    if waiting["fingerprint"] != spec.fingerprint:
        raise NothingToDo(
            f"generation {number} of {env}/{service} waits with a spec the desired state no "
            "longer asks for; the next pass replaces it"
        )
    providers, observed = _observed(desired, ledger)
    rows = ledger.generation_rows(env=env, service=service)
    active = next((r["number"] for r in rows if r["state"] == "active"), None)
    new = _members(observed, env, service, number)
    if len(new) < spec.count:
        raise NothingToDo(
            f"generation {number} runs {len(new)} of {spec.count} instances; not switching to "
            "less than the desired count (the next pass replaces what is missing)"
        )
    rollout = Rollout(
        desired, load_balancers=engine.load_balancer_ports(desired, providers), fence=ledger.fence
    )
    failure = rollout.wait_healthy(new, spec)
    if failure:
        raise NothingToDo(
            f"generation {number} is not healthy, not switching: {failure} (the next pass "
            "checks it again and destroys it if it stays unhealthy)"
        )
    now = _switch_and_record(
        rollout, ledger, spec, observed, generation=number, previous=active,
        why_previous=f"replaced by g{number} (switched by {by})", note="switch",
    )  # fmt: skip
    ledger.record_event(
        kind="switched", at=now, env=env, service=service, generation=number,
        detail={"from": active, "by": by, "waited_since": waiting.get("state_since")},
    )  # fmt: skip
    replacing = f", replacing generation {active}" if active is not None else ""
    message = (
        f"{env}/{service} generation {number} ({waiting['image_id'] or waiting['image']}) "
        f"takes the traffic{replacing} (switched by {by})"
    )
    Notifications(desired.notifiers).send(
        "generation-activated", message, env=env, service=service, generation=number,
        commit=desired.commit, detail={"previous": active, "switched_by": by},
    )  # fmt: skip
    log.info("switched", env=env, service=service, generation=number, previous=active, by=by)
    return message


def abort(desired_dir: DesiredSource, ledger: Ledger, env: str, service: str, *, by: str) -> str:
    """Destroy the generation waiting `ready`: recorded failed (aborted), so its spec
    is not launched again until the desired state changes or `reconciler retry`; the
    serving generation is not touched."""
    desired = _desired(desired_dir)
    waiting = _waiting_generation(ledger, env, service)
    number = int(waiting["number"])
    now = datetime.now(UTC)
    why = f"aborted by {by} while waiting for the switch"
    ledger.set_generation_state(
        env, service, number, state=GenerationState.FAILED, at=now, reason=f"failed: {why}"
    )
    providers, observed = _observed(desired, ledger)
    doomed = _members(observed, env, service, number, stopped_too=True)
    destroyed, errors = destroy_instances(
        desired, ledger, providers, observed, doomed, command="abort", reason=f"failed: {why}"
    )
    ledger.record_event(
        kind="aborted", at=datetime.now(UTC), env=env, service=service, generation=number,
        detail={"by": by, "destroyed": destroyed, "errors": errors},
    )  # fmt: skip
    message = f"{env}/{service} generation {number} aborted: {len(destroyed)} instance(s) destroyed"
    if errors:
        message += f"; {len(errors)} could not be destroyed yet, the next pass retries: " + (
            "; ".join(errors)
        )
    message += (
        f"; its spec is not launched again until the desired state changes or "
        f"`reconciler retry {env} {service}`"
    )
    Notifications(desired.notifiers).send(
        "generation-aborted", message, env=env, service=service, generation=number,
        commit=desired.commit, detail={"by": by, "destroyed": destroyed},
    )  # fmt: skip
    log.info("aborted", env=env, service=service, generation=number, by=by,
             destroyed=len(destroyed))  # fmt: skip
    if errors:
        raise ReconcilerError(message)
    return message


def destroy_instances(
    desired: DesiredState,
    ledger: Ledger,
    providers: dict[str, ComputeProvider],
    observed: list[ObservedInstance],
    doomed: list[ObservedInstance],
    *,
    command: str,
    reason: str,
) -> tuple[list[str], list[str]]:
    """Terminate `doomed` the way an apply does (an operation row before each call),
    in a run of its own so the ledger's history says who did it. Returns the ids
    destroyed and the errors of those that were not."""
    run = _side_run(desired, ledger, providers, observed, command=command)
    run_id = run.run_id
    teardown = Teardown(run=run, traffic=TrafficPort())
    destroyed: list[str] = []
    errors: list[str] = []
    for instance in doomed:
        try:
            teardown.terminate(
                instance.id, instance.provider, providers[instance.provider], reason=reason
            )
            destroyed.append(instance.id)
        except ReconcilerError as exc:
            errors.append(f"{instance.id}: {exc}")
    ledger.finish_run(
        run_id, result="failed" if errors else "changes", counts={"destroy": len(destroyed)},
        error="; ".join(errors) or None,
    )  # fmt: skip
    return destroyed, errors


def _hand_volume(
    desired: DesiredState,
    ledger: Ledger,
    providers: dict[str, ComputeProvider],
    observed: list[ObservedInstance],
    spec: ServiceSpec,
    to: int,
) -> list[ObservedInstance]:
    """The service's volume moved to generation `to`'s instance (started), in a run of
    its own as a pass would; returns the listing seen afterwards."""
    run = _side_run(desired, ledger, providers, observed, command="rollback")
    run_id = run.run_id
    mover = VolumeMover(run=run)
    target = mover.instance_of(spec.env, spec.name, to, alive_only=False)
    if target is None:
        ledger.finish_run(run_id, result="failed", counts={}, error="no instance")
        raise NothingToDo(f"generation {to} has no instance to take the volume")
    try:
        mover.move(spec, to=target, snapshot_for=None)
    except ReconcilerError as exc:
        ledger.finish_run(run_id, result="failed", counts={}, error=str(exc))
        raise
    ledger.finish_run(run_id, result="changes", counts={"handover": 1})
    return engine.settle_deletions(
        engine.observe(desired, providers), ledger, now=datetime.now(UTC)
    )


def release(ledger: Ledger, desired_dir: DesiredSource, env: str, service: str) -> str:
    desired = _desired(desired_dir)
    pins = current_pins(ledger, desired)
    pin = pins.get((env, service))
    if pin is None:
        raise NothingToDo(f"{env}/{service} is not pinned")
    ledger.record_event(
        kind="released", at=datetime.now(UTC), env=env, service=service,
        generation=pin.generation, detail={"why": "reconciler release"},
    )  # fmt: skip
    return f"{env}/{service} released from generation {pin.generation}; git is the truth again"


def retry(ledger: Ledger, env: str, service: str) -> str:
    """Allow the failed spec of the service's latest generation to be tried again. The
    failed generation stays failed in the ledger (history is never rewritten): the
    `retried` event is what the planner reads."""
    latest = max(ledger.view().generations_of(env, service), key=lambda g: g.number, default=None)
    if latest is None:
        raise NothingToDo(f"{env}/{service} has no generations")
    if not latest.failed:
        raise NothingToDo(f"the latest generation of {env}/{service} did not fail")
    if latest.retried:
        raise NothingToDo(
            f"{env}/{service}: a retry of generation {latest.number} was already requested"
        )
    ledger.record_event(
        kind="retried", at=datetime.now(UTC), env=env, service=service,
        generation=latest.number, detail={"fingerprint": latest.fingerprint,
                                          "failure": latest.reason},
    )  # fmt: skip
    return f"{env}/{service}: the spec of generation {latest.number} will be tried again"


def unfreeze(ledger: Ledger, desired_dir: DesiredSource, env: str, service: str | None) -> str:
    """Lift the freezes a guard set on `env` (or one service of it)."""
    desired = _desired(desired_dir)
    frozen = current_freezes(ledger, desired)
    lifted = sorted(k for k in frozen if k[0] == env and service in (None, k[1]))
    if not lifted:
        in_git = [
            s.name for s in desired.services()
            if s.env == env and s.frozen and service in (None, s.name)
        ]  # fmt: skip
        if in_git:
            raise NothingToDo(
                f"{env}/{', '.join(in_git)} is frozen in the desired state (frozen: true); "
                "change it in git"
            )
        raise NothingToDo(f"nothing in {env} is frozen by a guard")
    for key in lifted:
        ledger.record_event(
            kind="unfrozen", at=datetime.now(UTC), env=key[0], service=key[1],
            detail={"why": "reconciler unfreeze", "was": frozen[key].why},
        )  # fmt: skip
    return "unfrozen: " + ", ".join(f"{e}/{s}" for e, s in lifted)


def answer_requests(ledger: Ledger, desired: DesiredState | None) -> list[str]:
    """Act on the requests operators recorded while this process held the state
    directory, oldest first; each is answered in its row (done, refused or failed)
    for the waiting command to print. Returns the answers, for the log."""
    answers: list[str] = []
    for request in ledger.claim_requests(at=datetime.now(UTC)):
        state, answer = _act(ledger, desired, request)
        ledger.answer_request(request["id"], state=state, answer=answer, at=datetime.now(UTC))
        log_line = log.info if state == "done" else log.error
        log_line("request_answered", request=request["id"], kind=request["kind"],
                 env=request["env"], service=request["service"],
                 requested_by=request["requested_by"], state=state, answer=answer)  # fmt: skip
        answers.append(answer)
    return answers


def _act(ledger: Ledger, desired: DesiredState | None, request: dict[str, Any]) -> tuple[str, str]:
    kind, env, service = request["kind"], request["env"], request["service"]
    try:
        if kind == "retry":
            return "done", retry(ledger, env, service)
        if desired is None:
            return "refused", "the daemon has no valid desired state yet; nothing was changed"
        if kind == "rollback":
            return "done", rollback(desired, ledger, env, service)
        if kind == "release":
            return "done", release(ledger, desired, env, service)
        if kind == "unfreeze":
            return "done", unfreeze(ledger, desired, env, service)
        if kind == "switch":
            return "done", switch(desired, ledger, env, service, by=request["requested_by"])
        if kind == "abort":
            return "done", abort(desired, ledger, env, service, by=request["requested_by"])
        return "refused", f"unknown request kind {kind!r}"
    except NothingToDo as exc:
        return "refused", str(exc)
    except ReconcilerError as exc:
        return "failed", str(exc)
    # A request is one operator's command: a bug in it is reported to them and logged
    # with its traceback, and the daemon goes on healing.
    except Exception as exc:
        log.exception("request_crashed", request=request["id"], error_type=type(exc).__name__)
        return "failed", f"unexpected {type(exc).__name__} (a bug in reconciler: see the log)"
