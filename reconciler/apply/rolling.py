"""Rolling back a rolling update whose batch failed (strategy `rolling`).

Owns: relaunching the old instances the earlier batches took out — same generation,
slot, image, size and user data (read from a live old instance before the first one
went) — gating them, moving traffic back, and removing the new generation's
instances. Must not: plan (the planner emitted the batches) or run outside a
failing apply of one service.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import structlog

from reconciler.errors import PluginError, ReconcilerError
from reconciler.model import Action, ActionKind, ObservedInstance, Reason

if TYPE_CHECKING:
    from reconciler.apply.gates import TrafficPort
    from reconciler.apply.launching import Launcher
    from reconciler.apply.run import ApplyRun, HealthGate
    from reconciler.apply.teardown import Teardown

log = structlog.get_logger(__name__)


def roll_back_batches(
    run: ApplyRun,
    launcher: Launcher,
    *,
    teardown: Teardown,
    gate: HealthGate,
    traffic: TrafficPort,
    env: str,
    service: str,
) -> None:
    """Bring back what the finished batches replaced; the failed batch is already undone."""
    spec = run.desired.service(env, service)
    if spec is None:
        return
    provider = run.providers[spec.provider]
    taken = run.rolled.pop((env, service), [])
    launched: list[tuple[str, ObservedInstance]] = []
    for old in taken:
        # The old generation's launch configuration, as the instance itself reports it.
        old_spec = replace(
            spec,
            image=old.image,
            size=old.size,
            fingerprint=old.fingerprint or "",
            user_data=run.old_user_data.get((env, service)),
            price_per_hour=None,
        )
        relaunch = Action(
            ActionKind.CREATE, Reason.SPEC_CHANGED, env, service, old.generation or 0,
            spec.provider, slot=old.slot or 1, detail="rolling rollback",
        )  # fmt: skip
        launched.append(launcher.launch(relaunch, old_spec, provider))
    relaunched = [instance for _, instance in launched]
    running = launcher.wait_running(relaunched, provider, spec)
    failure = gate.wait_healthy(running, spec)
    if failure:
        raise ReconcilerError(f"relaunched old instances are not healthy: {failure}")
    for op, instance in launched:
        run.ledger.mark_operation(op, state="done", at=run.now(), instance_id=instance.id)
        run.ledger.set_instance_state(instance.id, state="running", at=run.now())
    new_ones = [
        i
        for (e, s, _), batch in run.launched.items()
        if (e, s) == (env, service)
        for i in batch
        if i.id not in run.destroyed and i.generation != taken[0].generation
    ]
    try:
        traffic.switch(spec, old=new_ones, new=running)
    except PluginError as exc:
        raise ReconcilerError(f"switching back to the old instances: {exc}") from None
    for instance in new_ones:
        teardown.terminate(instance.id, spec.provider, provider, reason="failed: rolled back")
    log.warning(
        "rolling_rolled_back", env=env, service=service, relaunched=[i.id for i in running],
        removed=[i.id for i in new_ones],
    )  # fmt: skip
