"""Activation: a generation goes from healthy to serving, or fails and is undone.

Owns: the activate action (health gate on the instances not gated at launch →
traffic switch, switched back if it fails → generation active, the previous one
standby → event, log line and notification) and the failure paths shared with the
creates: a failed activation or batch loses its new instances and, when the
generation is new, marks it failed and notifies; the serving generation stays.
Must not: launch instances (the launcher does) or decide what to activate (the
planner does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn

import structlog

from reconciler.apply.gates import TrafficPort
from reconciler.apply.handover import VolumeMover
from reconciler.apply.run import ApplyRun, HealthGate
from reconciler.apply.teardown import Teardown
from reconciler.errors import Interrupted, ReconcilerError, RolloutFailed
from reconciler.extensions.notify import Notifications
from reconciler.ledger import Ledger
from reconciler.model import Action, GenerationState, ObservedInstance, ServiceSpec, Strategy
from reconciler.providers import ComputeProvider

log = structlog.get_logger(__name__)


def switch_traffic(
    traffic: TrafficPort,
    spec: ServiceSpec,
    *,
    old: Sequence[ObservedInstance],
    new: Sequence[ObservedInstance],
) -> str | None:
    """Move the service's traffic from `old` to `new`; if that fails in any way, move it
    back. None when it moved, else why not (rollouts and `rollback` both switch so)."""
    try:
        traffic.switch(spec, old=old, new=new)
        return None
    except Exception as exc:  # PluginError, or anything unexpected: traffic goes back
        if not isinstance(exc, ReconcilerError):
            log.exception("activation_switch_crashed", service=spec.name,
                          error_type=type(exc).__name__)  # fmt: skip
        try:
            traffic.switch(spec, old=new, new=old)  # back to where it was
        except Exception as back:  # logged: the switch failed either way
            log.error("traffic_switch_back_failed", service=spec.name,
                      error=str(back) or type(back).__name__)  # fmt: skip
        return str(exc) if isinstance(exc, ReconcilerError) else type(exc).__name__


def mark_activated(
    ledger: Ledger,
    *,
    env: str,
    service: str,
    generation: int,
    previous: int | None,
    at: datetime,
    run: int | None,
    why_previous: str,
    note: str = "",
) -> None:
    """Record a generation taking the traffic: it becomes active, the one it replaced
    standby (with why), and a `generation_activated` event says so, in one transaction
    (a crash can no longer leave two active generations for recovery to settle)."""
    with ledger.batch("activation"):
        ledger.set_generation_state(
            env, service, generation, state=GenerationState.ACTIVE, at=at
        )
        if previous is not None:
            ledger.set_generation_state(
                env, service, previous, state=GenerationState.STANDBY, at=at, reason=why_previous
            )
        ledger.record_event(
            kind="generation_activated", at=at, run=run, env=env, service=service,
            generation=generation, detail={"previous": previous, "note": note},
        )  # fmt: skip
    log.info("generation_activated", run=run, env=env, service=service,
             generation=generation, previous=previous)  # fmt: skip


@dataclass(kw_only=True)
class Activator:
    run: ApplyRun
    gate: HealthGate
    traffic: TrafficPort
    notifications: Notifications
    teardown: Teardown
    mover: VolumeMover | None = None

    def hand_over(self, action: Action) -> None:
        """`volume:`: the volume to the generation's instance; a failure gives it back
        to the previous generation's instance and fails the rollout as any other."""
        try:
            assert self.mover is not None
            self.mover.handover(action)
        except Interrupted:
            raise  # a stop: the next pass goes on from the step the cloud shows
        except ReconcilerError as exc:
            self._fail_activation(action, self.run.spec(action), f"volume hand-over: {exc}")

    def activate(self, action: Action) -> None:
        """Healthy → switch traffic → mark active → previous to standby."""
        run = self.run
        spec, new = self._gated(action, what="health gate")
        where = f"{action.env}/{action.service} g{action.generation}"
        run.progress.phase(f"switching traffic to {where}")
        old = self._alive(action.env, action.service, action.previous)
        failure = switch_traffic(self.traffic, spec, old=old, new=new)
        if failure is not None:
            self._fail_activation(action, spec, f"traffic switch: {failure}")
        mark_activated(
            run.ledger, env=action.env, service=action.service, generation=action.generation,
            previous=action.previous, at=run.now(), run=run.run_id,
            why_previous=f"replaced by g{action.generation}", note=action.detail,
        )  # fmt: skip
        replacing = f", replacing generation {action.previous}" if action.previous else ""
        self.notifications.send(
            "generation-activated",
            f"{spec.env}/{spec.name} generation {action.generation} ({spec.image}) is active"
            f"{replacing}",
            env=spec.env, service=spec.name, generation=action.generation,
            commit=run.desired.commit, detail={"previous": action.previous},
        )  # fmt: skip

    def prepare(self, action: Action) -> None:
        """`switch: manual | after D`: healthy → `ready` beside the serving generation,
        which keeps the traffic; said in an event, the log and a notification."""
        run = self.run
        spec, _new = self._gated(action, what="health gate")
        now = run.now()
        run.ledger.set_generation_state(
            action.env, action.service, action.generation, state=GenerationState.READY, at=now
        )
        switch = spec.traffic.describe_switch() if spec.traffic else "manual"
        due_at = (
            now + timedelta(seconds=spec.traffic.switch_after)
            if spec.traffic is not None and spec.traffic.switch_after is not None
            else None
        )
        run.ledger.record_event(
            kind="generation_ready", at=now, run=run.run_id, env=action.env,
            service=action.service, generation=action.generation,
            detail={"previous": action.previous, "switch": switch,
                    "due_at": due_at.isoformat() if due_at else None, "note": action.detail},
        )  # fmt: skip
        log.info("generation_ready", run=run.run_id, env=action.env, service=action.service,
                 generation=action.generation, serving=action.previous, switch=switch)  # fmt: skip
        when = f" or at {due_at.isoformat(timespec='seconds')}" if due_at else ""
        self.notifications.send(
            "generation-ready",
            f"{spec.env}/{spec.name} generation {action.generation} ({spec.image}) is ready and "
            f"healthy since {now.isoformat(timespec='seconds')}; traffic stays on generation "
            f"{action.previous} until `reconciler switch {spec.env} {spec.name}`{when}",
            env=spec.env, service=spec.name, generation=action.generation,
            commit=run.desired.commit,
            detail={"previous": action.previous, "switch": switch,
                    "due_at": due_at.isoformat() if due_at else None},
        )  # fmt: skip

    def check(self, action: Action) -> None:
        """A generation waiting `ready` is health-checked each pass; one that turns
        unhealthy is failed and destroyed, never switched."""
        self._gated(action, what="health check while waiting for the switch")
        log.info("generation_waiting", run=self.run.run_id, env=action.env,
                 service=action.service, generation=action.generation)  # fmt: skip

    def _gated(self, action: Action, *, what: str) -> tuple[ServiceSpec, list[ObservedInstance]]:
        """The generation's running instances once those not gated by this apply's
        launches pass the health gate; a failure fails the generation (compensated)."""
        run = self.run
        spec = run.spec(action)
        key = (action.env, action.service, action.generation)
        launched = run.launched.get(key, [])
        gated = {i.id for i in launched}
        new = launched + [
            i for i in self._alive(action.env, action.service, action.generation)
            if i.id not in gated
        ]  # fmt: skip
        try:
            failure = self.gate.wait_healthy([i for i in new if i.id not in gated], spec)
        except Interrupted:
            raise  # a stop: the next pass resumes this rollout
        except ReconcilerError as exc:
            failure = str(exc)
        # Last resort, as in launching: an unexpected error fails the rollout, compensated.
        except Exception as exc:
            log.exception("activation_gate_crashed", service=spec.name,
                          error_type=type(exc).__name__)  # fmt: skip
            failure = f"unexpected {type(exc).__name__}"
        if failure:
            self._fail_activation(action, spec, f"{what}: {failure}")
        return spec, new

    def _alive(self, env: str, service: str, generation: int | None) -> list[ObservedInstance]:
        if generation is None:
            return []
        return [
            i for i in self.run.observed
            if (i.env, i.service, i.generation) == (env, service, generation) and i.alive
            and i.id not in self.run.destroyed
        ]  # fmt: skip

    def _fail_activation(self, action: Action, spec: ServiceSpec, why: str) -> NoReturn:
        """The old generation keeps serving; a new generation's instances go."""
        run = self.run
        provider = run.providers[spec.provider]
        rows = run.ledger.generation_rows(env=action.env, service=action.service)
        state = next((r["state"] for r in rows if r["number"] == action.generation), None)
        if spec.volume is not None and action.previous is not None and self.mover is not None:
            # The volume goes back to the previous instance, started again, before the
            # new one goes; if that fails too, the next pass brings it back (the
            # previous generation is still the active one).
            try:
                self.mover.give_back(spec, action.previous)
            except ReconcilerError as exc:
                log.error("volume_give_back_failed", service=spec.name, error=str(exc))
        launched = run.launched.get((action.env, action.service, action.generation), [])
        doomed = {i.id for i in launched}
        if state in (GenerationState.CREATING.value, GenerationState.READY.value):
            doomed |= {i.id for i in self._alive(action.env, action.service, action.generation)}
            run.ledger.set_generation_state(
                action.env, action.service, action.generation, state=GenerationState.FAILED,
                at=run.now(), reason=f"failed: {why}",
            )  # fmt: skip
            self._notify_failed(spec, action.generation, why)
        for instance_id in sorted(doomed):
            self._terminate_or_report(instance_id, spec, provider, why)
        run.ledger.record_event(
            kind="rollout_failed", at=run.now(), run=run.run_id, env=action.env,
            service=action.service, generation=action.generation, detail={"error": why},
        )  # fmt: skip
        raise RolloutFailed(why)

    def compensate(
        self,
        launched: list[tuple[str, ObservedInstance]],
        provider: ComputeProvider,
        spec: ServiceSpec,
        generation: int,
        *,
        new_generation: bool,
        why: str,
    ) -> None:
        """Undo a failed batch: the new instances go, the serving generation stays."""
        run = self.run
        for op, instance in launched:
            run.ledger.mark_operation(op, state="failed", at=run.now(), detail=why)
            self._terminate_or_report(instance.id, spec, provider, why)
        if new_generation:
            run.ledger.set_generation_state(
                spec.env,
                spec.name,
                generation,
                state=GenerationState.FAILED,
                at=run.now(),
                reason=f"failed: {why}",
            )
        run.ledger.record_event(
            kind="rollout_failed",
            at=run.now(),
            run=run.run_id,
            env=spec.env,
            service=spec.name,
            generation=generation,
            detail={"error": why},
        )
        if new_generation:
            self._notify_failed(spec, generation, why)

    def _terminate_or_report(
        self, instance_id: str, spec: ServiceSpec, provider: ComputeProvider, why: str
    ) -> None:
        """One undo step: a destroy that fails is reported and the undo goes on (the
        generation is still marked failed and notified; the next pass prunes what a
        failed generation left running)."""
        try:
            self.teardown.terminate(instance_id, spec.provider, provider, reason=f"failed: {why}")
        except ReconcilerError as exc:
            log.error("compensation_destroy_failed", service=spec.name, instance=instance_id,
                      error=str(exc))  # fmt: skip

    def _notify_failed(self, spec: ServiceSpec, generation: int, why: str) -> None:
        self.notifications.send(
            "generation-failed",
            f"{spec.env}/{spec.name} generation {generation} ({spec.image}) failed: {why}; "
            + (
                "strategy recreate destroyed the previous generation first: the service is "
                "down until a working spec is committed or `reconciler retry`"
                if spec.strategy is Strategy.RECREATE
                else "the previous generation keeps serving"
            ),
            env=spec.env, service=spec.name, generation=generation, commit=self.run.desired.commit,
            detail={"error": why},
        )  # fmt: skip
