"""Operator commands that act outside the loop: rollback, release, retry.

Owns: switching a service back to its standby generation and pinning it, lifting a
pin, and allowing a failed spec to be tried again. Must not: create instances
(rollback only re-uses a live standby) or run without the state lock (the CLI holds it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import structlog

from reconciler import engine
from reconciler.errors import ReconcilerError
from reconciler.extensions import PluginError
from reconciler.ledger import Ledger
from reconciler.model import GenerationState, ObservedInstance
from reconciler.notify import Notifications
from reconciler.rollout import Rollout

log = structlog.get_logger(__name__)


class NothingToDo(ReconcilerError):
    """The requested change does not apply to the service's current state."""


def rollback(desired_dir: str | Path, ledger: Ledger, env: str, service: str) -> str:
    """Make the newest live standby generation active again and pin the service to it."""
    desired = engine.read_desired(desired_dir)
    spec = desired.service(env, service)
    if spec is None:
        raise NothingToDo(f"{env}/{service} is not in the desired state")
    providers = engine.build_providers(desired)
    observed = engine.settle_deletions(
        engine.observe(desired, providers), ledger, now=datetime.now(UTC)
    )
    rows = ledger.generation_rows(env=env, service=service)
    active = next((r["number"] for r in rows if r["state"] == "active"), None)

    def alive(number: int | None) -> list[ObservedInstance]:
        return [
            i for i in observed
            if (i.env, i.service, i.generation) == (env, service, number) and i.alive
        ]  # fmt: skip

    standbys = [r["number"] for r in rows if r["state"] == "standby" and alive(r["number"])]
    if not standbys:
        raise NothingToDo(f"{env}/{service} has no standby generation with running instances")
    target = max(standbys)
    rollout = Rollout(desired, load_balancers=engine.load_balancer_ports(desired, providers))
    failure = rollout.wait_healthy(alive(target), spec)
    if failure:
        raise NothingToDo(f"generation {target} is not healthy, not rolling back: {failure}")
    try:
        rollout.switch(spec, old=alive(active), new=alive(target))
    except PluginError as exc:
        raise ReconcilerError(f"traffic switch failed, nothing changed: {exc}") from None
    now = datetime.now(UTC)
    ledger.set_generation_state(env, service, target, state=GenerationState.ACTIVE, at=now)
    if active is not None:
        ledger.set_generation_state(
            env, service, active, state=GenerationState.STANDBY, at=now,
            reason=f"rolled back to g{target}",
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


def release(ledger: Ledger, desired_dir: str | Path, env: str, service: str) -> str:
    desired = engine.read_desired(desired_dir)
    pins = engine.current_pins(ledger, desired)
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


def unfreeze(ledger: Ledger, desired_dir: str | Path, env: str, service: str | None) -> str:
    """Lift the freezes a guard set on `env` (or one service of it)."""
    desired = engine.read_desired(desired_dir)
    frozen = engine.current_freezes(ledger, desired)
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
            detail={"why": "reconciler unfreeze", "was": frozen[key]},
        )  # fmt: skip
    return "unfrozen: " + ", ".join(f"{e}/{s}" for e, s in lifted)
