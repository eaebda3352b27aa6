"""Destroys: an instance leaves the load balancer, then the cloud, intent recorded first.

Owns: the destroy action (detaching an instance that may take traffic, and noting the
old instances a rolling update takes out so a rollback can relaunch their like) and
`terminate`, the one way an apply ends an instance: an operation row before the call,
its outcome after, the instance remembered as destroyed for the rest of the run.
Must not: choose which instances go (the planner and the failure paths do) or retry
the call (the adapters do, at the edge).
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from reconciler.apply.gates import TrafficPort
from reconciler.apply.parallel import LaunchSlots
from reconciler.apply.run import ApplyRun
from reconciler.errors import PluginError, ReconcilerError
from reconciler.model import Action, Reason, Strategy
from reconciler.providers import ComputeProvider

log = structlog.get_logger(__name__)

# Destroys of instances that may be in the load balancer: detached before they go.
TAKES_TRAFFIC = frozenset({Reason.SURPLUS, Reason.TAMPERED, Reason.MISSING, Reason.SPEC_CHANGED})


@dataclass(kw_only=True)
class Teardown:
    run: ApplyRun
    traffic: TrafficPort
    # The apply's bound on cloud calls in flight (set by the applier for its duration).
    slots: LaunchSlots | None = None

    def destroy(self, action: Action) -> None:
        run = self.run
        provider = run.providers[action.provider]
        assert action.instance_id is not None
        reason = action.reason.value + (f" ({action.detail})" if action.detail else "")
        spec = run.desired.service(action.env, action.service)
        serving = [i for i in run.observed if i.id == action.instance_id and i.alive]
        rolling = spec is not None and spec.strategy is Strategy.ROLLING
        if (
            rolling
            and serving
            and action.reason is Reason.SPEC_CHANGED
            and "batch" in action.detail
        ):
            key = (action.env, action.service)
            if key not in run.old_user_data:
                # Read before the first old instance goes: a rollback relaunches its like.
                run.old_user_data[key] = provider.user_data_of(action.instance_id)
            run.rolled.setdefault(key, []).extend(serving)
        waiting = (action.env, action.service, action.generation) in run.waiting
        if spec is not None and serving and action.reason in TAKES_TRAFFIC and not waiting:
            # Out of the load balancer before it goes, so no request hits a dying instance.
            try:
                self.traffic.switch(spec, old=serving, new=[])
            except PluginError as exc:
                raise ReconcilerError(f"traffic switch before destroy: {exc}") from None
        self.terminate(action.instance_id, action.provider, provider, reason=reason)
        log.info(
            "instance_destroyed",
            run=run.run_id,
            env=action.env,
            service=action.service,
            generation=action.generation,
            instance=action.instance_id,
            reason=action.reason.value,
        )

    def terminate(
        self, instance_id: str, provider_name: str, provider: ComputeProvider, *, reason: str
    ) -> None:
        run = self.run
        op = run.ledger.begin_operation(
            run=run.run_id, kind="destroy", target=instance_id, at=run.now()
        )
        try:
            if self.slots is not None:
                self.slots.bounded(lambda: provider.destroy_instance(instance_id))
            else:
                provider.destroy_instance(instance_id)
        except ReconcilerError as exc:
            run.ledger.mark_operation(op, state="failed", at=run.now(), detail=str(exc))
            raise
        run.ledger.mark_operation(op, state="done", at=run.now(), instance_id=instance_id)
        run.ledger.set_instance_state(instance_id, state="destroyed", at=run.now(), reason=reason)
        run.destroyed.add(instance_id)
