"""Rolling back a rolling update whose batch failed (strategy `rolling`).

Owns: relaunching the old instances the earlier batches took out — same generation,
slot, image, size and user data (read from a live old instance before the first one
went) — gating them, moving traffic back, and removing the new generation's
instances. Must not: plan (the planner emitted the batches) or run outside a
failing apply of one service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from reconciler.errors import ReconcilerError
from reconciler.extensions import PluginError
from reconciler.model import ObservedInstance
from reconciler.providers import LaunchRequest, ownership_tags

if TYPE_CHECKING:
    from reconciler.apply import Applier

log = structlog.get_logger(__name__)


def roll_back_batches(applier: Applier, env: str, service: str) -> None:
    """Bring back what the finished batches replaced; the failed batch is already undone."""
    spec = applier.desired.service(env, service)
    if spec is None:
        return
    provider = applier.providers[spec.provider]
    taken = applier._rolled.pop((env, service), [])
    user_data = applier._old_user_data.get((env, service))
    relaunched: list[ObservedInstance] = []
    for old in taken:
        generation, slot = old.generation or 0, old.slot or 1
        op = applier.ledger.begin_operation(
            run=applier.run_id, kind="create", target=f"{env}/{service}/g{generation}/{slot}",
            at=applier.now(),
        )  # fmt: skip
        tags = ownership_tags(
            owner=applier.desired.owner, env=env, service=service, generation=generation,
            fingerprint=old.fingerprint or "", op=op, slot=slot,
        )  # fmt: skip
        request = LaunchRequest(
            name=tags["Name"], image=old.image, size=old.size, tags=tags, op=op,
            user_data=user_data,
        )  # fmt: skip
        try:
            instance = provider.create_instance(request)
        except ReconcilerError as exc:
            applier.ledger.mark_operation(op, state="failed", at=applier.now(), detail=str(exc))
            raise
        applier.ledger.mark_operation(op, state="done", at=applier.now(), instance_id=instance.id)
        applier.ledger.record_instance(
            id=instance.id, provider=spec.provider, env=env, service=service,
            generation=generation, slot=slot, name=tags["Name"], image=instance.image,
            size=instance.size, price_per_hour=provider.price_per_hour(instance.size),
            state="running", created_at=applier.now(), op=op,
        )  # fmt: skip
        relaunched.append(instance)
    running = applier._wait_running(relaunched, provider, spec)
    failure = applier.gate.wait_healthy(running, spec)
    if failure:
        raise ReconcilerError(f"relaunched old instances are not healthy: {failure}")
    new_ones = [
        i
        for (e, s, _), launched in applier._launched.items()
        if (e, s) == (env, service)
        for i in launched
        if i.id not in applier._destroyed and i.generation != taken[0].generation
    ]
    try:
        applier.traffic.switch(spec, old=new_ones, new=running)
    except PluginError as exc:
        raise ReconcilerError(f"switching back to the old instances: {exc}") from None
    for instance in new_ones:
        applier._terminate(instance.id, spec.provider, provider, reason="failed: rolled back")
    log.warning(
        "rolling_rolled_back", env=env, service=service, relaunched=[i.id for i in running],
        removed=[i.id for i in new_ones],
    )  # fmt: skip
